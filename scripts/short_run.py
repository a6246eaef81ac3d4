"""A short real training run, for before/after checks of the training code: the train stage's
model and recipe (params.yaml), `training.fit` for a few epochs with the one-cycle schedule
fitted to them, on the prepared arrays (`dvc repro stats` first); MLflow and checkpoints left
out. Prints one JSON line per epoch and a summary.

    python scripts/short_run.py --epochs 4 --seed 0

It uses only functions the training code has had since the project's first ResNet18 runs
(`fit`, `build_model`, `StepContext`, `resolve_amp`, `resolve_device`), imported from the
package's sub-packages; to compare with a commit from before the sub-packages (docs/speed.md
compares two commits with it), run that commit's own copy of this script.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd()))  # the checkout it runs in, not an installed ferpipe

from ferpipe.core.files import read_json  # noqa: E402
from ferpipe.core.params import load_params  # noqa: E402
from ferpipe.data.splits import CLASS_NAMES, load_split  # noqa: E402
from ferpipe.model.device import StepContext, resolve_amp, resolve_device  # noqa: E402
from ferpipe.model.network import build_model  # noqa: E402
from ferpipe.train.fit import fit  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    params = load_params(args.params)
    cfg = params.train.model_copy(update={"epochs": args.epochs, "seed": args.seed})
    device = resolve_device(cfg.device)
    stats = read_json(cfg.stats)
    train = load_split(Path(cfg.data) / "train.npz")
    val = load_split(Path(cfg.data) / "val.npz")
    torch.manual_seed(cfg.seed)
    input_size = min(params.augment.crop, train["images"].shape[-1])
    model = build_model(params.model, len(CLASS_NAMES), input_size).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ctx = StepContext(device, stats["mean"], stats["std"], resolve_amp(cfg.amp, device),
                      cfg.channels_last)
    start = time.perf_counter()
    result = fit(model, train, val, cfg, params.augment, ctx, lambda *a: None,
                 on_epoch=lambda row: print(json.dumps(row), flush=True))
    print(json.dumps({"best_val_accuracy": result.best_val_accuracy,
                      "best_epoch": result.best_epoch,
                      "images_per_s": result.images / result.step_seconds,
                      "minutes": (time.perf_counter() - start) / 60, "seed": args.seed,
                      "epochs": args.epochs}), flush=True)


if __name__ == "__main__":
    main()
