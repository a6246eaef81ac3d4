"""Make a file of teacher targets for distillation (`train.teacher`, `ferpipe.train.teacher`): a
teacher model's TTA-averaged probabilities for every image of the prepared train split.

    python -m ferpipe.tools.teacher --out models/teachers/released.npz
    python -m ferpipe.tools.teacher --model models/model.pt --tta ten_crop --out models/teachers/run.npz

The teacher is the released model in the package by default (an ONNX file), or any model
`ferpipe-predict --model` takes; several `--model`s average their probabilities (an ensemble).
Its provenance (the model files' sha256, the released model's commit and run, the TTA) goes into
the file and, from there, into the training run's MLflow tags. No logit adjustment is applied.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ferpipe.core.errors import CheckpointError, ParamsError, run_main
from ferpipe.core.files import sha256_of
from ferpipe.data.splits import load_split
from ferpipe.model.released import RELEASED_INFO, RELEASED_MODEL, read_info
from ferpipe.predict.predictor import load_classifier
from ferpipe.train.teacher import write_targets


def teacher_probabilities(models: list[str], images: np.ndarray, tta: str) -> np.ndarray:
    """Mean over `models` of each one's TTA-averaged probabilities.

    Args:
        models: references `load_classifier` takes (checkpoint, `.onnx` file, MLflow URI).
        images: uint8 (N, 48, 48) prepared images. tta: none | hflip | ten_crop.

    Returns:
        float32 (N, C) probabilities, rows summing to 1.

    Raises:
        CheckpointError: a model that cannot be loaded.
    """
    total = None
    for ref in models:
        probs = load_classifier(ref).predict(images, tta)
        total = probs if total is None else total + probs
    return (total / len(models)).astype(np.float32)


def describe(ref: str) -> dict[str, str]:
    """Provenance of one teacher: its reference, file sha256 and, for the released model, the
    commit and MLflow run it was exported from."""
    about = {"model": ref}
    if Path(ref).is_file():
        about["model_sha256"] = sha256_of(Path(ref))
    if Path(ref).resolve() == RELEASED_MODEL.resolve():
        info = read_info(RELEASED_INFO) or {}
        about.update({"model": "released", "released_commit": str(info.get("commit", "")),
                      "released_run_id": str(info.get("run_id", "")),
                      "released_val_accuracy": str((info.get("val") or {}).get(
                          "accuracy_released", ""))})
    return about


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=None,
                   help=f"teacher model (repeat for an ensemble); default: the released model "
                        f"{RELEASED_MODEL}")
    p.add_argument("--train", type=Path, default=Path("data/prepared/train.npz"),
                   help="the prepared train split (default: %(default)s)")
    p.add_argument("--tta", choices=["none", "hflip", "ten_crop"], default="hflip",
                   help="test-time augmentation of the teacher (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="the targets file to write (.npz)")
    args = p.parse_args(argv)
    models = args.model or [str(RELEASED_MODEL)]
    if not args.train.is_file():
        raise ParamsError(f"--train: {args.train} not found; run `dvc repro stats` first")
    for ref in models:
        if "://" not in ref and ":/" not in ref and not Path(ref).is_file():
            raise CheckpointError(f"--model: {ref} not found")
    split = load_split(args.train)
    start = time.perf_counter()
    probs = teacher_probabilities(models, split["images"], args.tta)
    seconds = time.perf_counter() - start
    teachers = [describe(ref) for ref in models]
    info = dict(teachers[0]) if len(teachers) == 1 else {
        "model": "ensemble of " + ", ".join(t["model"] for t in teachers), "teachers": teachers}
    info.update({"tta": args.tta, "train": str(args.train)})
    agree = float((probs.argmax(1) == split["labels"]).mean())
    info["train_accuracy"] = round(agree, 4)
    write_targets(args.out, probs, split["labels"], sha256_of(args.train), info)
    print(f"{args.out}: {len(probs)} images, teacher {info['model']} ({args.tta}), its train "
          f"accuracy {100 * agree:.2f}%, {seconds:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
