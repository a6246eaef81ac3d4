"""Paired comparisons of a study's experiments on val: `python scripts/study_pairs.py A:B ...`.

For each pair it scores both experiments' best checkpoints (from the DVC cache, as
`scripts/study_table.py` finds them) on the val split with hflip TTA, and prints the accuracy
gain of B over A with its 95% paired bootstrap interval (`ferpipe.evaluate.metrics.
paired_gain_interval`, 1,000 resamples: the images resampled with both predictions). Test is
never scored. Run it in the repo that ran the experiments.

    python scripts/study_pairs.py eq10-base:eq10-distill05 eq10-base:eq10-base-seed1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from study_table import cached_model, experiment_ref, git  # noqa: E402

from ferpipe.core.params import load_params  # noqa: E402
from ferpipe.data.splits import load_split  # noqa: E402
from ferpipe.evaluate.metrics import paired_gain_interval  # noqa: E402


def val_predictions(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(val labels, the experiment's hflip-TTA predictions), int64 (N,) each."""
    from stages.evaluate import Scorer

    ref = experiment_ref(name)
    with tempfile.TemporaryDirectory() as tmp:
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(git("show", f"{ref}:params.yaml"))
        cfg = load_params(params_file).evaluate.model_copy(
            update={"model": str(cached_model(ref))})
    val = load_split(ROOT / cfg.val)
    return val["labels"], Scorer(cfg).log_probs(val, "hflip").argmax(1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", metavar="A:B")
    args = parser.parse_args()
    pairs = [tuple(p.split(":", 1)) for p in args.pairs]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit("error: pairs are written A:B (two experiment names)")
    predictions = {}
    for name in sorted({n for p in pairs for n in p}):
        labels, predictions[name] = val_predictions(name)
    for a, b in pairs:
        r = paired_gain_interval(labels, predictions[a], predictions[b])
        low, high = r["interval"]
        print(f"{b} - {a}: {100 * r['gain']:+.2f} points of val accuracy (hflip TTA), 95% paired "
              f"bootstrap [{100 * low:+.2f}, {100 * high:+.2f}]")


if __name__ == "__main__":
    main()
