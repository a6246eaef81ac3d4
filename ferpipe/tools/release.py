"""`python -m ferpipe.tools.release`: builds the released model (`ferpipe.model.released`) from
the committed run's checkpoint.

It is the checkpoint exported to ONNX (`ferpipe.model.export.export_onnx`) with its weights
stored as float16 (`half_storage`: 21.4 MiB instead of 42.7 MiB for the default ResNet18); the
graph casts them back to float32 when onnxruntime loads it, so it computes in float32 like the
checkpoint. Beside it, `model.json` says which commit, MLflow run and params trained it and how
it scores against the full-precision checkpoint on val and test. The command checks that the
released model is at most `MAX_DROP_POINTS` below the checkpoint on val and on test and that it
improves on the released model it would replace (by val accuracy, so git history does not grow
with every retrain; `--force` replaces it anyway).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ferpipe.core.errors import FerpipeError
from ferpipe.core.files import sha256_of
from ferpipe.model.released import (
    RELEASED_CARD,
    RELEASED_DIR,
    RELEASED_INFO,
    RELEASED_MODEL,
    read_info,
)
from ferpipe.model.temperature import Temperature, describe, to_record, to_text

#: The model card shipped beside the released model (relative to the repo root).
MODEL_CARD = Path("docs/model-card.md")

#: Initializers with at least this many elements are stored as float16 (the convolution and
#: linear weights: 99.9% of the bytes); smaller ones (BatchNorm, biases) stay float32.
MIN_HALF_ELEMENTS = 1024
#: The released model may score at most this many points of accuracy below the checkpoint.
MAX_DROP_POINTS = 0.3
#: The released file may be at most this large (bytes).
MAX_BYTES = 25 * 1024 * 1024


class ReleaseError(FerpipeError):
    """The released model was not written: it loses too much accuracy, is too large, or does not
    improve on the released model it would replace."""


def half_storage(proto, min_elements: int = MIN_HALF_ELEMENTS):
    """Store the float32 initializers of an ONNX model with at least `min_elements` elements as
    float16, each followed by a `Cast` back to float32 under its old name, so the graph computes
    exactly as before on the rounded weights (onnxruntime folds the casts when it loads the
    model). The model is changed in place and returned; its inputs and outputs stay float32.

    Args:
        proto: an `onnx.ModelProto`.
        min_elements: the smallest initializer (number of elements) to store as float16.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    casts, kept = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                       f"{init.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return proto


def accuracy(classifier, split: dict[str, np.ndarray], tta: str, logit_adjustment: float = 0.0
             ) -> float:
    """Accuracy in [0, 1] of a `Classifier` on a prepared split (`images` uint8 (N, 48, 48),
    `labels` int64 (N,)) with the TTA mode `tta` and logit adjustment tau `logit_adjustment`
    (`ferpipe.model.inference.probabilities`, as `ferpipe-predict` classifies)."""
    from ferpipe.model.inference import probabilities

    probs = probabilities(classifier, split["images"], tta, logit_adjustment)
    return float((probs.argmax(1) == split["labels"]).mean())


def release(checkpoint: str | Path, prepared: str | Path, dest: str | Path = RELEASED_DIR,
            tta: str | None = None, run_ref: str | Path | None = None, force: bool = False,
            convert=half_storage, logit_adjustment: float | None = None,
            temperature: Temperature | None = None, card: str | Path | None = MODEL_CARD
            ) -> dict[str, Any]:
    """Export `checkpoint` as the released model into `dest` (`model.onnx`, `model.json`).

    Args:
        checkpoint: the train stage's checkpoint (`models/model.pt`).
        prepared: the folder of the prepared splits (`data/prepared`, `val.npz` and `test.npz`).
        tta, logit_adjustment: the TTA and logit adjustment tau both models are scored with;
            None: `ferpipe-predict`'s defaults (`evaluate.tta`, `evaluate.logit_adjustment`).
        run_ref: the train stage's `models/mlflow_run.json` (its run id goes into the record), or
            None.
        force: replace a released model even when the new one is not better on val.
        convert: the ONNX conversion (`half_storage`; a test passes a lossy one).
        temperature: the calibration stored in the ONNX metadata and the record (one, or one per
            predicted class: `ferpipe.model.temperature`); None: the one
            the evaluate stage fitted on val for this checkpoint (`metrics/eval.json`, see
            `ferpipe.predict.predictor.recorded_temperature`), 1.0 when there is none.
        card: the model card copied beside the ONNX file (`model-card.md`); None or a missing
            file: none copied.

    Returns:
        The record written to `model.json`: commit, run_id, params (model, augment, train
        sections), tta, logit_adjustment, temperature, sha256 and bytes of the ONNX file, and
        for val and test the image count, `accuracy_full` (the checkpoint) and
        `accuracy_released` (the ONNX file), in [0, 1].

    Raises:
        ReleaseError: the released model is more than `MAX_DROP_POINTS` points below the
            checkpoint on val or test, larger than `MAX_BYTES`, or (without `force`) not more
            accurate on val than the released model in `dest`. Nothing in `dest` is changed.
        CheckpointError, DataError: an unreadable checkpoint or prepared split.
    """
    import onnx
    import torch

    from ferpipe.core.tracking import git_commit, read_run_record
    from ferpipe.data.splits import load_split
    from ferpipe.model.export import export_onnx, load_onnx_classifier
    from ferpipe.model.inference import DEFAULT_LOGIT_ADJUSTMENT, DEFAULT_TTA, Classifier

    dest, prepared = Path(dest), Path(prepared)
    splits = {name: load_split(prepared / f"{name}.npz") for name in ("val", "test")}
    full = Classifier.from_checkpoint(checkpoint)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    params = ckpt.get("params", {})
    tta = tta or DEFAULT_TTA
    tau = DEFAULT_LOGIT_ADJUSTMENT if logit_adjustment is None else float(logit_adjustment)
    if temperature is None:
        from ferpipe.predict.predictor import recorded_temperature

        temperature = recorded_temperature(checkpoint)
    previous = read_info(dest / RELEASED_INFO.name)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".release-") as tmp:
        onnx_path = Path(tmp) / RELEASED_MODEL.name
        export_onnx(checkpoint, onnx_path, temperature)
        onnx.save(convert(onnx.load(onnx_path)), onnx_path)
        released = load_onnx_classifier(onnx_path)
        scores = {name: {"images": int(len(split["labels"])),
                         "accuracy_full": accuracy(full, split, tta, tau),
                         "accuracy_released": accuracy(released, split, tta, tau)}
                  for name, split in splits.items()}
        size = onnx_path.stat().st_size
        for name, s in scores.items():
            drop = 100 * (s["accuracy_full"] - s["accuracy_released"])
            if drop > MAX_DROP_POINTS:
                raise ReleaseError(
                    f"{checkpoint}: the released model scores {100 * s['accuracy_released']:.2f}% "
                    f"on {name} against the checkpoint's {100 * s['accuracy_full']:.2f}% "
                    f"({drop:.2f} points lower; at most {MAX_DROP_POINTS} allowed); "
                    f"{dest} is unchanged")
        if size > MAX_BYTES:
            raise ReleaseError(f"{checkpoint}: the released model is {size / 2**20:.1f} MiB; at "
                               f"most {MAX_BYTES / 2**20:.0f} MiB allowed; {dest} is unchanged")
        if previous and not force:
            old, new = previous["val"]["accuracy_released"], scores["val"]["accuracy_released"]
            if new <= old:
                raise ReleaseError(
                    f"{checkpoint}: val accuracy {100 * new:.2f}% does not improve on the released "
                    f"model's {100 * old:.2f}% ({dest / RELEASED_INFO.name}); it stays (--force "
                    f"replaces it anyway)")
        run_id = None
        if run_ref is not None and Path(run_ref).is_file():
            run_id = read_run_record(run_ref)["run_id"]
        info = {"commit": git_commit(), "run_id": run_id, "checkpoint_sha256": sha256_of(Path(checkpoint)),
                "epoch": ckpt.get("epoch"), "tta": tta, "logit_adjustment": tau,
                "temperature": to_record(temperature),
                "params": {k: params[k] for k in ("model", "augment", "train") if k in params},
                "file": RELEASED_MODEL.name, "sha256": sha256_of(onnx_path), "bytes": size,
                "weights": "float16 storage, float32 compute", **scores}
        info_tmp = Path(tmp) / RELEASED_INFO.name
        info_tmp.write_text(json.dumps(info, indent=2) + "\n")
        if card is not None and Path(card).is_file():
            shutil.copyfile(card, Path(tmp) / RELEASED_CARD.name)
            (Path(tmp) / RELEASED_CARD.name).replace(dest / RELEASED_CARD.name)
        onnx_path.replace(dest / RELEASED_MODEL.name)
        info_tmp.replace(dest / RELEASED_INFO.name)
    return info


def calibrate_released(prepared: str | Path, dest: str | Path = RELEASED_DIR) -> dict[str, Any]:
    """Fit the released model's temperatures on val, one per predicted class, after its record's
    TTA and logit adjustment (`ferpipe.evaluate.calibration`), and store them: the ONNX file's `temperature`
    metadata (weights untouched) and the record's `temperature`, `sha256`, `bytes` and
    `calibration` (ECE on val and test before and after, test NLL). For a released model written
    before calibration existed; `release` takes a new model's temperature from the evaluate
    stage. Both files are written under temporary names, then renamed.

    Returns:
        The updated record.

    Raises:
        ReleaseError: no released model (record and ONNX file) in `dest`.
        DataError: an unreadable prepared split.
    """
    import onnx

    from ferpipe.data.splits import load_split
    from ferpipe.evaluate.calibration import calibration_report
    from ferpipe.model.export import load_onnx_classifier
    from ferpipe.model.inference import probabilities

    dest, prepared = Path(dest), Path(prepared)
    info = read_info(dest / RELEASED_INFO.name)
    model = dest / RELEASED_MODEL.name
    if info is None or not model.is_file():
        raise ReleaseError(f"{dest}: no released model ({RELEASED_MODEL.name} and "
                           f"{RELEASED_INFO.name}) to calibrate")
    splits = {name: load_split(prepared / f"{name}.npz") for name in ("val", "test")}
    classifier = load_onnx_classifier(model)
    logits = {name: np.log(np.clip(probabilities(classifier, split["images"], info["tta"],
                                                 info["logit_adjustment"]), 1e-30, None))
              for name, split in splits.items()}
    report = calibration_report(logits["val"], splits["val"]["labels"], logits["test"],
                                splits["test"]["labels"])
    proto = onnx.load(model)
    props = {p.key: p.value for p in proto.metadata_props}
    props["temperature"] = to_text(tuple(report["temperature"]))
    onnx.helper.set_model_props(proto, props)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".calibrate-") as tmp:
        onnx_tmp, info_tmp = Path(tmp) / RELEASED_MODEL.name, Path(tmp) / RELEASED_INFO.name
        onnx.save(proto, onnx_tmp)
        info = {**info, "temperature": report["temperature"], "sha256": sha256_of(onnx_tmp),
                "bytes": onnx_tmp.stat().st_size,
                "calibration": {k: v for k, v in report.items() if k != "reliability"}}
        info_tmp.write_text(json.dumps(info, indent=2) + "\n")
        onnx_tmp.replace(model)
        info_tmp.replace(dest / RELEASED_INFO.name)
    return info


def main(argv: list[str] | None = None) -> None:
    """`python -m ferpipe.tools.release [CHECKPOINT]`: write the released model (see `release`)."""
    import argparse

    from ferpipe.core.options import logit_adjustment_type
    from ferpipe.core.params import TTA_MODES

    parser = argparse.ArgumentParser(
        description="Export the committed run's checkpoint as the released model shipped in the "
                    "package (ONNX, float16 weights), after checking its accuracy on val and test "
                    "against the checkpoint.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default="models/model.pt")
    parser.add_argument("--prepared", default="data/prepared",
                        help="the folder of the prepared val.npz and test.npz")
    parser.add_argument("--run-ref", default="models/mlflow_run.json",
                        help="the train stage's MLflow run record")
    parser.add_argument("--dest", default=str(RELEASED_DIR))
    parser.add_argument("--tta", default=None, choices=TTA_MODES,
                        help="default: ferpipe-predict's (evaluate.tta)")
    parser.add_argument("--logit-adjustment", type=logit_adjustment_type, default=None,
                        metavar="TAU", help="a finite number >= 0; default: ferpipe-predict's "
                                            "(evaluate.logit_adjustment)")
    parser.add_argument("--force", action="store_true",
                        help="replace the released model even if val accuracy does not improve")
    parser.add_argument("--calibrate", action="store_true",
                        help="only fit the released model's temperatures on val and store them "
                             "(no checkpoint needed)")
    args = parser.parse_args(argv)
    if args.calibrate:
        from ferpipe.model.export import load_onnx_classifier

        info = calibrate_released(args.prepared, args.dest)
        c, model = info["calibration"], Path(args.dest) / RELEASED_MODEL.name
        names = load_onnx_classifier(model).class_names
        print(f"{model}: temperature {describe(tuple(c['temperature']), names)} (fitted on "
              f"val); ECE val {c['val_ece']:.4f} -> {c['val_ece_calibrated']:.4f}, test "
              f"{c['test_ece']:.4f} -> {c['test_ece_calibrated']:.4f}")
        return
    info = release(args.checkpoint, args.prepared, args.dest, args.tta, args.run_ref, args.force,
                   logit_adjustment=args.logit_adjustment)
    print(f"wrote {Path(args.dest) / RELEASED_MODEL.name} ({info['bytes'] / 2**20:.1f} MiB, "
          f"tta {info['tta']}, logit adjustment {info['logit_adjustment']:g}):")
    for name in ("val", "test"):
        s = info[name]
        print(f"  {name}: {100 * s['accuracy_released']:.2f}% released, "
              f"{100 * s['accuracy_full']:.2f}% checkpoint ({s['images']} images)")


if __name__ == "__main__":
    from ferpipe.core.errors import run_main

    run_main(main)
