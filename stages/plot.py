"""Stage 6, plot: PNGs of the training curves, LR schedule, confusion matrix, F1 and predictions.

The prediction grid shows FER2013 test images, so it is kept in the DVC cache and MLflow, not in
git (the dataset's images must not be redistributed); the other PNGs are committed."""

from pathlib import Path

import mlflow
import pandas as pd

from ferpipe import plots, tracking
from ferpipe.data import load_split, read_json
from ferpipe.errors import run_main
from ferpipe.params import load_params, stage_args


def main() -> None:
    cfg = load_params(stage_args(__doc__).params).plot
    out = Path(cfg.out)
    history = pd.read_csv("metrics/history.csv")
    pairs = pd.read_csv("metrics/confusion.csv")
    evaluation = read_json("metrics/eval.json")
    names = list(evaluation["per_class"])
    actual, predicted = pairs["actual"].tolist(), pairs["predicted"].tolist()
    written = [
        plots.curves(history, "accuracy", out / "accuracy.png"),
        plots.curves(history, "loss", out / "loss.png"),
        plots.learning_rate(pd.read_csv("metrics/lr.csv"), out / "lr.png"),
        plots.confusion(actual, predicted, names, out / "confusion.png"),
        plots.per_class_f1(evaluation["per_class"], out / "per_class_f1.png"),
        plots.prediction_grid(load_split(cfg.test)["images"], actual, predicted,
                              Path(cfg.grid), n=cfg.grid_images, seed=cfg.seed),
    ]
    with tracking.resume_run(cfg.run):
        for path in written:
            mlflow.log_artifact(str(path), artifact_path="plots")
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    run_main(main)
