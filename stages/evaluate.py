"""Stage 5, evaluate: score the best checkpoint on the test split (never seen in training)."""

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow  # noqa: E402
import torch  # noqa: E402

from ferpipe import tracking  # noqa: E402
from ferpipe.data import load_split, write_json  # noqa: E402
from ferpipe.metrics import classification_metrics, report_text  # noqa: E402
from ferpipe.model import load_checkpoint  # noqa: E402
from ferpipe.params import flatten, load_params, section, stage_args  # noqa: E402
from ferpipe.training import StepContext, predict_logits, resolve_device  # noqa: E402


def main() -> None:
    args = stage_args(__doc__)
    cfg = section(load_params(args.params), "evaluate")
    model, ckpt = load_checkpoint(cfg["model"])
    device = resolve_device(cfg["device"])
    test = load_split(cfg["test"])
    ctx = StepContext(device, ckpt["mean"], ckpt["std"])
    logits = predict_logits(model.to(device), torch.from_numpy(test["images"]), ctx,
                            cfg["batch_size"])
    names = ckpt["class_names"]
    metrics = classification_metrics(logits, test["labels"], names)
    pred = logits.argmax(1).numpy()
    report = report_text(test["labels"], pred, names)
    print(report)

    write_json(metrics, "metrics/eval.json")
    Path("metrics/classification_report.txt").write_text(report)
    with open("metrics/confusion.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows((names[a], names[p]) for a, p in zip(test["labels"], pred))
    with tracking.resume_run(cfg["run"]):
        mlflow.log_metrics({f"test_{k}": v for k, v in flatten(metrics).items()})
        for path in ("metrics/eval.json", "metrics/classification_report.txt",
                     "metrics/confusion.csv"):
            mlflow.log_artifact(path, artifact_path="eval")


if __name__ == "__main__":
    main()
