"""One temperature or one per predicted class? Cross-validated on val only:
`python scripts/calibration_methods.py [CHECKPOINT]`.

Scores the val split with the evaluation's TTA and logit adjustment (params.yaml `evaluate`),
then, for each of `--splits` random halvings of val, fits both calibrations
(`ferpipe.evaluate.calibration`: `fit_temperature`, `fit_class_temperatures`) on one half and
measures ECE (15 bins) and NLL on the other, both ways round. Prints the mean of each and how
often the per-class fit wins. Test is never scored (the evaluate stage reports test).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferpipe.core.params import load_params  # noqa: E402
from ferpipe.data.splits import load_split  # noqa: E402
from ferpipe.evaluate.calibration import (  # noqa: E402
    expected_calibration_error,
    fit_class_temperatures,
    fit_temperature,
    negative_log_likelihood,
    scaled,
)
from ferpipe.model.inference import probabilities  # noqa: E402
from ferpipe.predict.predictor import load_classifier  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", default="models/model.pt")
    p.add_argument("--splits", type=int, default=50, help="random halvings of val (default 50)")
    args = p.parse_args()
    cfg = load_params(ROOT / "params.yaml").evaluate
    val = load_split(cfg.val)
    classifier = load_classifier(args.checkpoint)
    logits = np.log(np.clip(probabilities(classifier, val["images"], cfg.tta,
                                          cfg.logit_adjustment, cfg.tta_crop), 1e-30, None))
    labels = val["labels"]
    rows = []
    for seed in range(args.splits):
        order = np.random.default_rng(seed).permutation(len(labels))
        halves = order[:len(labels) // 2], order[len(labels) // 2:]
        for fit, held in (halves, halves[::-1]):
            one = scaled(logits[held], fit_temperature(logits[fit], labels[fit]))
            per_class = scaled(logits[held], fit_class_temperatures(logits[fit], labels[fit]))
            rows.append([expected_calibration_error(one, labels[held]),
                         expected_calibration_error(per_class, labels[held]),
                         negative_log_likelihood(one, labels[held]),
                         negative_log_likelihood(per_class, labels[held])])
    rows = np.array(rows)
    print(f"{args.checkpoint}: val {len(labels)} images, evaluate.tta {cfg.tta}, "
          f"evaluate.logit_adjustment {cfg.logit_adjustment:g}; {len(rows)} fits on half of val, "
          f"each measured on the other half")
    print("| calibration | held-out ECE (mean) | held-out NLL (mean) |")
    print("|---|---|---|")
    print(f"| one temperature | {rows[:, 0].mean():.4f} | {rows[:, 2].mean():.4f} |")
    print(f"| one per predicted class | {rows[:, 1].mean():.4f} | {rows[:, 3].mean():.4f} |")
    print(f"per predicted class lower: ECE in {100 * (rows[:, 1] < rows[:, 0]).mean():.0f}% of "
          f"the fits, NLL in {100 * (rows[:, 3] < rows[:, 2]).mean():.0f}%")


if __name__ == "__main__":
    main()
