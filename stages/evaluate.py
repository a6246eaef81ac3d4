"""Stage 5, evaluate: score the best checkpoint on the test split (never seen in training), with and
without test-time augmentation, run it on a real photo, and register it in the MLflow model
registry.

The photo is scikit-image's public-domain NASA portrait (`skimage.data.astronaut()`), put through
the predict command's face detection and drawn with its prediction to metrics/astronaut.png."""

import csv
from dataclasses import replace

import mlflow
import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from ferpipe import serving, tracking
from ferpipe.data import load_split, write_json
from ferpipe.device import resolve_device
from ferpipe.errors import run_main
from ferpipe.inference import Classifier, adjust_logits, predict_log_proba
from ferpipe.metrics import classification_metrics, report_text
from ferpipe.outputs import stage_outputs
from ferpipe.params import flatten, load_params, stage_args
from ferpipe.predict import Predictor, annotate

#: Metrics also reported without TTA, so `dvc exp show` shows the gain.
COMPARED = ("accuracy", "macro_f1", "top2_accuracy", "loss")
#: Metrics reported for the val split, to choose evaluation settings on val, never on test.
VAL_REPORTED = ("accuracy", "balanced_accuracy", "macro_f1", "loss")



def main() -> None:
    cfg = load_params(stage_args(__doc__).params).evaluate
    classifier = Classifier.from_checkpoint(cfg.model)
    device = resolve_device(cfg.device, "evaluate.device")
    model = classifier.model.to(device)
    ctx = replace(classifier.ctx, device=device)
    test = load_split(cfg.test)
    names = classifier.class_names

    def score(tta: str, split: dict = test) -> tuple[dict, torch.Tensor]:
        # log-probabilities are logits too (softmax(log p) = p): the metrics take them as such
        log_probs = adjust_logits(predict_log_proba(model, split["images"], ctx, tta,
                                                    cfg.tta_crop, cfg.batch_size),
                                  classifier.class_counts, cfg.logit_adjustment)
        return classification_metrics(log_probs, split["labels"], names), log_probs

    plain, log_probs = score("none")
    if cfg.tta == "none":
        metrics = plain
    else:
        metrics, log_probs = score(cfg.tta)
    # The same evaluation on val: settings such as evaluate.logit_adjustment are chosen on these.
    val_metrics, _ = score(cfg.tta, load_split(cfg.val))
    metrics = {**metrics, "tta": cfg.tta, "logit_adjustment": cfg.logit_adjustment,
               "no_tta": {key: plain[key] for key in COMPARED},
               "tta_gain": metrics["accuracy"] - plain["accuracy"],
               "val": {key: val_metrics[key] for key in VAL_REPORTED}}
    pred = log_probs.argmax(1).numpy()
    report = report_text(test["labels"], pred, names)
    print(report)
    print(f"accuracy {metrics['accuracy']:.4f} with TTA {cfg.tta}, {plain['accuracy']:.4f} "
          f"without ({metrics['tta_gain']:+.4f})")

    photo = skdata.astronaut()
    model.cpu()  # the predict command's path, as a user runs it
    faces = Predictor(classifier).predict_image(
        np.asarray(Image.fromarray(photo).convert("L")), "astronaut")
    print("astronaut: " + ", ".join(f"{f.expression} {f.probability:.2f}" for f in faces))
    with stage_outputs() as outs:
        write_json(metrics, outs.file("metrics/eval.json"))
        outs.file("metrics/classification_report.txt").write_text(report)
        with open(outs.file("metrics/confusion.csv"), "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["actual", "predicted"])
            writer.writerows((names[a], names[p]) for a, p in zip(test["labels"], pred))
        annotate(photo, faces, outs.file("metrics/astronaut.png"))

    with tracking.resume_run(cfg.run) as run:
        mlflow.log_metrics({f"test_{k}": v for k, v in flatten(metrics).items()
                            if isinstance(v, (int, float))})
        for path in ("metrics/eval.json", "metrics/classification_report.txt",
                     "metrics/confusion.csv", "metrics/astronaut.png"):
            mlflow.log_artifact(path, artifact_path="eval")
        if cfg.registry:
            # A generated example (FER2013 images are not redistributed): mid-grey and a ramp.
            size = classifier.image_size
            example = np.stack([np.full((size, size), 128.0),
                                np.tile(np.linspace(0, 255, size), (size, 1))]).astype(np.float32)
            uri = serving.log_serving_model(cfg.model, example)
            version = serving.register(uri, cfg.registry_name, cfg.registry_alias, {
                "test_accuracy": f"{metrics['accuracy']:.4f}", "tta": cfg.tta,
                "test_accuracy_no_tta": f"{plain['accuracy']:.4f}",
                "run_id": run.info.run_id})
            print(f"registered models:/{cfg.registry_name}@{cfg.registry_alias} "
                  f"(version {version})")


if __name__ == "__main__":
    run_main(main)
