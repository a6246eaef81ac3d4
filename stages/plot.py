"""Stage 6, plot: PNGs of the training curves, LR schedule, confusion matrix, F1, the reliability
diagram and predictions.

The prediction grid shows FER2013 test images, so it is kept in the DVC cache and MLflow, not in
git (the dataset's images must not be redistributed); the other PNGs are committed."""

from pathlib import Path

import mlflow

from ferpipe.core import store, tracking
from ferpipe.core.errors import FerpipeError, run_main
from ferpipe.core.files import read_json
from ferpipe.core.handoffs import check_eval
from ferpipe.core.outputs import stage_outputs
from ferpipe.core.params import load_params, stage_args
from ferpipe.data.splits import load_split, read_table
from ferpipe.evaluate import plots

#: The PNGs written to `plot.out`.
PLOTS = ("accuracy.png", "loss.png", "lr.png", "confusion.png", "per_class_f1.png",
         "reliability.png")


def main() -> None:
    cfg = load_params(stage_args(__doc__).params).plot
    # Every file of the earlier stages checked before anything is drawn (ferpipe/core/handoffs.py)
    history, lr = read_table("history"), read_table("lr")
    evaluation = check_eval(read_json("metrics/eval.json"), "metrics/eval.json")
    per_class = evaluation["test"]["per_class"]
    calibration = evaluation.get("calibration")
    if not calibration:
        raise FerpipeError("metrics/eval.json: no calibration section (written by an older "
                           "evaluate stage); expected one: run `dvc repro evaluate`")
    names = list(per_class)
    pairs = read_table("confusion", classes=names)
    actual, predicted = pairs["actual"].tolist(), pairs["predicted"].tolist()
    test_images = load_split(cfg.test)["images"]
    tracking.read_run_record(cfg.run)  # logged into at the end: checked now
    store.check_store()
    with stage_outputs() as outs:
        folder = outs.folder(cfg.out, "plot", set(PLOTS))
        plots.curves(history, "accuracy", folder / "accuracy.png")
        plots.curves(history, "loss", folder / "loss.png")
        plots.learning_rate(lr, folder / "lr.png")
        plots.confusion(actual, predicted, names, folder / "confusion.png")
        plots.per_class_f1(per_class, folder / "per_class_f1.png")
        plots.reliability_diagram(calibration, folder / "reliability.png")
        plots.prediction_grid(test_images, actual, predicted,
                              outs.file(cfg.grid), n=cfg.grid_images, seed=cfg.seed)
    written = [*(Path(cfg.out) / name for name in PLOTS), Path(cfg.grid)]
    with store.store_errors("the plots were not logged into the run", "the outputs are "
                               "written; run `dvc repro plot` again to log them"), \
            tracking.resume_run(cfg.run):
        for path in written:
            mlflow.log_artifact(str(path), artifact_path="plots")
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    run_main(main)
