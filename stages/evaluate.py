"""Stage 5, evaluate: score the best checkpoint on the test split (never seen in training), with and
without test-time augmentation, run it on a real photo, and register it in the MLflow model
registry, with its ONNX export beside it.

Writes metrics/summary.json (the headline figures: the DVC metrics file), metrics/eval.json (the
detail: test metrics per class, without TTA, 95% bootstrap confidence intervals of test accuracy
and macro-F1, a val table of every TTA mode and logit adjustment to choose evaluate.tta and
evaluate.logit_adjustment on, and the calibration: a temperature per predicted class fitted on
val, the ECE before and after it and with one temperature for comparison; with
evaluate.external, the report of each labelled photo folder scored through the predict path),
the confusion pairs and the classification report. The temperatures go with the registered
serving model and ONNX file, and `ferpipe-predict` reads them from eval.json for the checkpoint
they were fitted for.

The photo is scikit-image's public-domain NASA portrait (`skimage.data.astronaut()`), put through
the predict command's face detection and drawn with its prediction to metrics/astronaut.png."""

import csv
import re
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from ferpipe.core import store, tracking
from ferpipe.core.errors import ParamsError, run_main
from ferpipe.core.files import read_json, sha256_of, write_json
from ferpipe.core.handoffs import check_data_counts, check_train_summary
from ferpipe.core.outputs import stage_outputs
from ferpipe.core.params import TTA_MODES, Evaluate, load_params, stage_args
from ferpipe.data.splits import load_split
from ferpipe.evaluate.calibration import calibration_report
from ferpipe.evaluate.metrics import (
    classification_metrics,
    confidence_intervals,
    paired_gain_interval,
    report_text,
)
from ferpipe.model import export, registry
from ferpipe.model.device import resolve_device
from ferpipe.model.inference import Classifier, adjust_logits, predict_log_proba
from ferpipe.model.temperature import as_temperature, describe, to_text
from ferpipe.predict.drawing import annotate
from ferpipe.predict.predictor import Predictor
from ferpipe.tools.evaluate_folder import class_folders, folder_report, score_folder, table

#: Post-hoc logit-adjustment strengths scored on val (with every TTA mode), so that
#: evaluate.logit_adjustment and evaluate.tta are chosen on val, never on test.
VAL_TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: What the val table and the test metrics report per setting.
REPORTED = ("accuracy", "balanced_accuracy", "macro_f1")
#: The plain evaluation setting (one view, no logit adjustment): kept unless val shows another
#: setting's accuracy gain beyond its noise (`choose_beyond_noise`).
PLAIN = ("none", 0.0)
#: `choose`'s margin: val settings within this much of the best val accuracy count as equal (a
#: fraction; 0.25 points, against a standard error of about 0.9 points on 2,721 val images).
CHOICE_MARGIN = 0.0025


def headline(test: dict, no_tta: dict, train: dict, data: dict) -> dict:
    """The figures `dvc metrics show` and `dvc exp show` list (metrics/summary.json): flat keys
    named `<split>_<metric>[_<variant>]`, as the MLflow run's `summary/` metrics.

    Args:
        test, no_tta: `classification_metrics` of the test split with and without TTA.
        train, data: metrics/train.json and metrics/data.json.
    """
    return {"test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            "test_balanced_accuracy": test["balanced_accuracy"],
            "test_accuracy_no_tta": no_tta["accuracy"],
            "best_val_accuracy": train["best_val_accuracy"],
            "train_minutes": train["train_minutes"], "images_per_s": train["images_per_s"],
            "train_images": data["train"]["images"], "test_images": data["test"]["images"]}


class Scorer:
    """The evaluate stage's checkpoint on its device: log-probabilities of a split under a TTA
    mode, and metrics under a logit adjustment."""

    def __init__(self, cfg: Evaluate):
        self.cfg = cfg
        self.classifier = Classifier.from_checkpoint(cfg.model)
        device = resolve_device(cfg.device, "evaluate.device")
        self.model = self.classifier.model.to(device)
        self.ctx = replace(self.classifier.ctx, device=device)

    def log_probs(self, split: dict, tta: str) -> torch.Tensor:
        """float32 (N, 7) log-probabilities of `split`'s uint8 (N, 48, 48) images."""
        return predict_log_proba(self.model, split["images"], self.ctx, tta, self.cfg.tta_crop,
                                 self.cfg.batch_size)

    def score(self, scores: torch.Tensor, split: dict, tau: float) -> dict:
        """`classification_metrics` of `scores` adjusted by `tau` against `split`'s labels."""
        # log-probabilities are logits too (softmax(log p) = p): the metrics take them as such
        return classification_metrics(adjust_logits(scores, self.classifier.class_counts, tau),
                                      split["labels"], self.classifier.class_names)

    def val_settings(self, val: dict) -> tuple[list[dict], dict[tuple[str, float], np.ndarray]]:
        """Val metrics (REPORTED) for every TTA mode x VAL_TAUS (and the configured tau), and
        each setting's int64 (N,) val predictions, keyed by (tta, tau)."""
        rows, predictions = [], {}
        for tta in TTA_MODES:
            scores = self.log_probs(val, tta)
            for tau in sorted({*VAL_TAUS, self.cfg.logit_adjustment}):
                scored = self.score(scores, val, tau)
                rows.append({"tta": tta, "logit_adjustment": tau,
                             **{f"val_{k}": scored[k] for k in REPORTED}})
                adjusted = adjust_logits(scores, self.classifier.class_counts, tau)
                predictions[(tta, tau)] = adjusted.argmax(1).numpy()
        return rows, predictions


def choose(val_settings: list[dict], margin: float = CHOICE_MARGIN) -> dict:
    """The val_settings row to use: among the rows within `margin` of the best val accuracy,
    the one with the best val macro-F1 (so a setting that helps the rare classes is taken when
    it costs no accuracy that val can tell apart)."""
    best = max(row["val_accuracy"] for row in val_settings)
    near = [row for row in val_settings if row["val_accuracy"] >= best - margin]
    return max(near, key=lambda row: row["val_macro_f1"])


def choose_beyond_noise(rows: list[dict], predictions: dict[tuple[str, float], np.ndarray],
                        labels: np.ndarray, margin: float = CHOICE_MARGIN) -> dict:
    """The evaluation setting val supports beyond its noise: `choose`'s pick when a paired
    bootstrap on val (`paired_gain_interval`) puts its accuracy gain over the plain setting
    (PLAIN: one view, no adjustment) above 0 at its lower bound, else the plain setting. One
    accuracy on 2,721 val images has a standard error of about 0.9 points, so `choose` alone
    can pick a setting whose lead is noise.

    Returns:
        {"choice": the chosen row, "candidate": `choose`'s row, "plain": PLAIN's row,
         "gain_interval": `paired_gain_interval` of candidate over plain (None when the
         candidate is the plain setting)}.
    """
    candidate = choose(rows, margin)
    plain = next(row for row in rows if (row["tta"], row["logit_adjustment"]) == PLAIN)
    key = (candidate["tta"], candidate["logit_adjustment"])
    if key == PLAIN:
        return {"choice": plain, "candidate": candidate, "plain": plain, "gain_interval": None}
    interval = paired_gain_interval(labels, predictions[PLAIN], predictions[key])
    choice = candidate if interval["interval"][0] > 0 else plain
    return {"choice": choice, "candidate": candidate, "plain": plain, "gain_interval": interval}


def print_val_settings(params: str = "params.yaml") -> None:
    """Print the val table and the setting `choose` picks, without touching the test split:
    `python -c "from stages.evaluate import print_val_settings; print_val_settings()"`."""
    cfg = load_params(params).evaluate
    val = load_split(cfg.val)
    rows, predictions = Scorer(cfg).val_settings(val)
    for row in rows:
        print("\t".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in row.items()))
    chosen = choose_beyond_noise(rows, predictions, val["labels"])
    print(f"chosen on val: {chosen['choice']}; gain over the plain setting: "
          f"{chosen['gain_interval']}")


def external_folders(folders: tuple[str, ...], class_names: list[str]
                     ) -> dict[str, tuple[list[tuple[Path, int]], list[str]]]:
    """evaluate.external's folders, each with its class folders and the folder names skipped
    (`class_folders`).

    Raises:
        ParamsError: a folder is missing or none of its folders names a class of the model.
    """
    found = {}
    for i, folder in enumerate(folders):
        try:
            found[folder] = class_folders(Path(folder), class_names)
        except ValueError as err:
            raise ParamsError(f"evaluate.external[{i}]: {err}") from None
    return found


def external_metrics(external: dict | None) -> dict[str, float]:
    """MLflow metrics of the external folders' reports, beside the run summaries:
    `summary/external_<folder name>_<metric>` (`<folder name>_<i>` for the i-th folder when an
    earlier one has the same name)."""
    metrics: dict[str, float] = {}
    for i, (folder, result) in enumerate((external or {"folders": {}})["folders"].items()):
        key = re.sub(r"[^\w.-]", "_", Path(folder).resolve().name) or "folder"
        if f"summary/external_{key}_accuracy" in metrics:
            key = f"{key}_{i}"
        for metric in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "no_face_found"):
            metrics[f"summary/external_{key}_{metric}"] = float(result[metric])
    return metrics


def main() -> None:
    cfg = load_params(stage_args(__doc__).params).evaluate
    # The earlier stages' summaries, checked before the model is loaded (ferpipe/core/handoffs.py)
    trained = check_train_summary(read_json("metrics/train.json"), "metrics/train.json")
    counts_file = check_data_counts(read_json("metrics/data.json"), "metrics/data.json")
    record = tracking.read_run_record(cfg.run)  # logged into at the end: checked now
    store.check_store()
    test = load_split(cfg.test)
    scorer = Scorer(cfg)
    classifier, model = scorer.classifier, scorer.model
    names, counts = classifier.class_names, classifier.class_counts
    external = external_folders(cfg.external, names)  # checked before anything is scored
    # Val, every setting: the table evaluate.tta and evaluate.logit_adjustment are chosen from.
    val = load_split(cfg.val)
    val_settings, val_predictions = scorer.val_settings(val)
    rule = choose_beyond_noise(val_settings, val_predictions, val["labels"])
    chosen = rule["choice"]
    # Test, once: the configured setting, and the same without TTA.
    plain = scorer.log_probs(test, "none")
    scores = plain if cfg.tta == "none" else scorer.log_probs(test, cfg.tta)
    no_tta, metrics = (scorer.score(s, test, cfg.logit_adjustment) for s in (plain, scores))
    adjusted = adjust_logits(scores, counts, cfg.logit_adjustment)
    pred = adjusted.argmax(1).numpy()
    interval = confidence_intervals(test["labels"], pred, len(names))
    # Temperature scaling on val after the same TTA and adjustment (Guo et al. 2017), one
    # temperature per predicted class (Frenkel & Goldberger 2021; ferpipe.evaluate.calibration)
    val_scores = adjust_logits(scorer.log_probs(val, cfg.tta), counts, cfg.logit_adjustment)
    calibration = {**calibration_report(val_scores.numpy(), val["labels"], adjusted.numpy(),
                                        test["labels"]),
                   "model_sha256": sha256_of(Path(cfg.model))}
    evaluation = {"tta": cfg.tta, "logit_adjustment": cfg.logit_adjustment, "test": metrics,
                  "test_interval": interval,
                  "test_no_tta": {k: no_tta[k] for k in (*REPORTED, "top2_accuracy", "loss")},
                  "val_settings": val_settings, "val_choice": chosen,
                  "val_choice_rule": {k: rule[k] for k in ("candidate", "plain", "gain_interval")},
                  "calibration": calibration}
    if (chosen["tta"], chosen["logit_adjustment"]) != (cfg.tta, cfg.logit_adjustment):
        print(f"note: val favours evaluate.tta {chosen['tta']}, evaluate.logit_adjustment "
              f"{chosen['logit_adjustment']} (metrics/eval.json val_settings)")
    summary = headline(metrics, no_tta, trained, counts_file)
    report = report_text(test["labels"], pred, names)
    print(report)
    print(f"test accuracy {metrics['accuracy']:.4f} with TTA {cfg.tta}, "
          f"{no_tta['accuracy']:.4f} without; macro-F1 {metrics['macro_f1']:.4f}")
    print(f"95% bootstrap intervals over the test images: accuracy "
          f"{interval['accuracy'][0]:.4f}-{interval['accuracy'][1]:.4f}, macro-F1 "
          f"{interval['macro_f1'][0]:.4f}-{interval['macro_f1'][1]:.4f}")
    temperature = as_temperature(calibration["temperature"])
    print(f"calibration: temperature {describe(temperature, names)} (fitted on val); test ECE "
          f"{calibration['test_ece']:.4f} before, {calibration['test_ece_calibrated']:.4f} after "
          f"({calibration['test_ece_global']:.4f} with one temperature, "
          f"{calibration['temperature_global']:.3f})")

    photo = skdata.astronaut()
    model.cpu()  # the predict command's path, as a user runs it
    predictor = Predictor(classifier, tta=cfg.tta, tta_crop=cfg.tta_crop,
                          logit_adjustment=cfg.logit_adjustment,
                          temperature=temperature)
    faces = predictor.predict_image(np.asarray(Image.fromarray(photo).convert("L")), "astronaut")
    print("astronaut: " + ", ".join(f"{f.expression} {f.probability:.2f}" for f in faces))
    if external:
        evaluation["external"] = {
            "detector": predictor.detector.name, "align": predictor.align,
            "folders": {folder: folder_report(score_folder(predictor, found), names, skipped)
                        for folder, (found, skipped) in external.items()}}
        for folder, result in evaluation["external"]["folders"].items():
            print(table(result, f"external: {folder}"))
    with stage_outputs() as outs:
        write_json(summary, outs.file("metrics/summary.json"))
        write_json(evaluation, outs.file("metrics/eval.json"))
        outs.file("metrics/classification_report.txt").write_text(report)
        with open(outs.file("metrics/confusion.csv"), "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["actual", "predicted"])
            writer.writerows((names[a], names[p]) for a, p in zip(test["labels"], pred))
        annotate(photo, faces, outs.file("metrics/astronaut.png"))

    with store.store_errors("the evaluation was not logged into the run", "the outputs are "
                            "written; run `dvc repro evaluate` again to log them",
                            record["experiment"], cfg.registry_name), \
            tracking.resume_run(cfg.run) as run:
        # Run summaries under summary/, named as in metrics/summary.json (train's are there too)
        per_class = {f"test_{measure}_{name}": values[measure]
                     for name, values in metrics["per_class"].items()
                     for measure in ("recall", "f1")}
        bounds = {f"test_{metric}_ci_{side}": interval[metric][i]
                  for metric in ("accuracy", "macro_f1") for i, side in enumerate(("low", "high"))}
        mlflow.log_metrics({f"summary/{k}": v
                            for k, v in {**summary, **per_class, **bounds}.items()})
        mlflow.log_metrics(external_metrics(evaluation.get("external")))
        for path in ("metrics/summary.json", "metrics/eval.json",
                     "metrics/classification_report.txt", "metrics/confusion.csv",
                     "metrics/astronaut.png"):
            mlflow.log_artifact(path, artifact_path="eval")
        if cfg.registry:
            # Imported here: defining its MLflow model class prints MLflow's warning that
            # `predict` has no type hints (it has none on purpose), which would otherwise come
            # before any error line of the checks above.
            from ferpipe.serve import pyfunc as serving

            example = serving.generated_example(classifier.image_size)
            uri = serving.log_serving_model(cfg.model, example, tta=cfg.tta,
                                            logit_adjustment=cfg.logit_adjustment,
                                            temperature=temperature)
            version = registry.register(uri, cfg.registry_name, cfg.registry_alias, {
                "test_accuracy": f"{metrics['accuracy']:.4f}", "tta": cfg.tta,
                "logit_adjustment": f"{cfg.logit_adjustment:g}",
                "test_accuracy_no_tta": f"{no_tta['accuracy']:.4f}",
                "temperature": to_text(temperature),
                "run_id": run.info.run_id})
            print(f"registered models:/{cfg.registry_name}@{cfg.registry_alias} "
                  f"(version {version})")
        # ONNX beside it, checked against PyTorch's logits, registered as <name>-onnx
        export.log_onnx_model(cfg.model, cfg.registry_name if cfg.registry else None,
                              cfg.registry_alias, temperature)
        print(f"MLflow: run `mlflow ui` here, then open "
              f"{store.ui_url(run.info.experiment_id)}")


if __name__ == "__main__":
    run_main(main)
