"""Score any folder of labelled photos: `ferpipe-evaluate-folder DIR` (or `python -m
ferpipe.tools.evaluate_folder`).

DIR holds one folder per class, `DIR/<class>/<photo>` (any depth below it). Folder names are
matched to the model's classes case-insensitively, directly or through the usual synonyms of
other datasets (anger, happiness, sadness, disgusted, fearful, surprised ...) or a `--mapping`
JSON file (`{"folder name": "model class", ...}`); classes the model does not have (contempt,
for example) are reported and skipped. Each photo goes through the same path as
`ferpipe-predict`: the face detector, alignment, crop, TTA, logit adjustment and temperature
(the largest face when there are several; the whole photo when none is found, counted as "no
face found"), or with `--detector none` the whole photo, resized, as a baseline.

Reported: accuracy, balanced accuracy, macro-F1, per-class recall, the confusion matrix, faces
not found, photos with several faces, unreadable files, the 95% bootstrap intervals of accuracy
and macro-F1 (as the evaluate stage computes them) and the ECE (15 bins); a table, or JSON with
`--json`. Exit status 0, or 2 for a usage error (no such folder, no class folder matched).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from ferpipe.core.errors import FerpipeError
from ferpipe.core.options import logit_adjustment_type
from ferpipe.core.params import TTA_MODES
from ferpipe.evaluate.calibration import expected_calibration_error
from ferpipe.evaluate.metrics import classification_metrics, confidence_intervals
from ferpipe.model.inference import DEFAULT_LOGIT_ADJUSTMENT, DEFAULT_TTA
from ferpipe.predict.detectors import DETECTORS, make_detector
from ferpipe.predict.predictor import (
    IMAGE_SUFFIXES,
    Predictor,
    default_model,
    load_classifier,
    read_image,
)

#: Folder names of other facial-expression datasets (AffectNet, RAF-DB, CK+, JAFFE, KDEF ...),
#: lower case, and the FER2013 class each means.
SYNONYMS = {"anger": "angry", "angry": "angry", "disgust": "disgust", "disgusted": "disgust",
            "fear": "fear", "fearful": "fear", "afraid": "fear", "happy": "happy",
            "happiness": "happy", "joy": "happy", "neutral": "neutral", "neutrality": "neutral",
            "sad": "sad", "sadness": "sad", "surprise": "surprise", "surprised": "surprise"}


def class_folders(root: Path, class_names: list[str], mapping: dict[str, str] | None = None
                  ) -> tuple[list[tuple[Path, int]], list[str]]:
    """The class folders of `root` with the model's class index of each, and the folders
    skipped (no such class in the model).

    Args:
        root: the labelled folder. class_names: the model's classes, in output order.
        mapping: folder name -> model class name, tried before `SYNONYMS` (case-insensitive).

    Raises:
        ValueError: `root` is not a folder; a mapping names a class the model does not have;
            no class folder matches.
    """
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder; expected DIR/<class>/<photo>")
    lower = {name.lower(): i for i, name in enumerate(class_names)}
    given = {k.lower(): v.lower() for k, v in (mapping or {}).items()}
    unknown = sorted(v for v in given.values() if v not in lower)
    if unknown:
        raise ValueError(f"--mapping: {unknown} are not classes of the model; expected some of "
                         f"{class_names}")
    matched, skipped = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = folder.name.lower()
        target = given.get(name) or SYNONYMS.get(name) or (name if name in lower else None)
        if target in lower:
            matched.append((folder, lower[target]))
        else:
            skipped.append(folder.name)
    if not matched:
        raise ValueError(f"{root}: no class folder matches the model's classes {class_names} "
                         f"(found {skipped or 'no folders'}); expected DIR/<class>/<photo>, "
                         f"or a --mapping file")
    return matched, skipped


def score_folder(predictor: Predictor, folders: list[tuple[Path, int]]) -> dict[str, Any]:
    """Every photo of the class folders through `predictor`: its label, the largest face's
    probabilities, and the counts of the path's outcomes.

    Returns:
        {"labels": int64 (N,), "probs": float (N, C), "files": [str], "no_face": [str],
         "several_faces": [str], "unreadable": [(str, reason)]}; photos that cannot be read are
        not in the arrays.
    """
    names = predictor.classifier.class_names
    labels, probs, files = [], [], []
    no_face, several, unreadable = [], [], []
    for folder, label in folders:
        for path in sorted(p for p in folder.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                _, gray = read_image(path)
            except ValueError as err:
                unreadable.append((str(path), str(err)))
                continue
            predictions = predictor.predict_image(gray, str(path))
            first = predictions[0]
            if first.whole_image and predictor.detector.name != "none":
                no_face.append(str(path))
            if len(predictions) > 1:
                several.append(str(path))
            labels.append(label)
            probs.append([first.probabilities[n] for n in names])
            files.append(str(path))
    return {"labels": np.array(labels, np.int64), "probs": np.array(probs, np.float64),
            "files": files, "no_face": no_face, "several_faces": several,
            "unreadable": unreadable}


def folder_report(scored: dict[str, Any], class_names: list[str], skipped: list[str]
                  ) -> dict[str, Any]:
    """The metrics of `score_folder`'s result (see the module docstring).

    Raises:
        ValueError: no photo could be read.
    """
    labels, probs = scored["labels"], scored["probs"]
    if not len(labels):
        raise ValueError("no photo could be read in the class folders")
    with warnings.catch_warnings():  # top-2 accuracy warns when a class has no photo here
        warnings.simplefilter("ignore", UserWarning)
        metrics = classification_metrics(np.log(np.clip(probs, 1e-12, None)), labels,
                                         class_names)
    pred = probs.argmax(1)
    present = sorted(set(labels.tolist()))
    interval = confidence_intervals(labels, pred, len(class_names))
    return {
        "photos": int(len(labels)),
        "per_class_photos": {class_names[i]: int(n)
                             for i, n in sorted(Counter(labels.tolist()).items())},
        "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"], "interval": interval,
        "ece": expected_calibration_error(probs, labels),
        "recall": {class_names[i]: metrics["per_class"][class_names[i]]["recall"]
                   for i in present},
        "confusion": {"classes": class_names,
                      "matrix": confusion_matrix(labels, pred,
                                                 labels=list(range(len(class_names)))).tolist()},
        "no_face_found": len(scored["no_face"]), "several_faces": len(scored["several_faces"]),
        "unreadable": [{"file": f, "reason": r} for f, r in scored["unreadable"]],
        "skipped_classes": skipped,
    }


def table(report: dict[str, Any], about: str) -> str:
    """The report as a short text table."""
    low, high = report["interval"]["accuracy"]
    f1_low, f1_high = report["interval"]["macro_f1"]
    lines = [about,
             f"photos {report['photos']}  accuracy {100 * report['accuracy']:.2f}% "
             f"[{100 * low:.2f}, {100 * high:.2f}]  macro-F1 {report['macro_f1']:.3f} "
             f"[{f1_low:.3f}, {f1_high:.3f}]  balanced accuracy "
             f"{100 * report['balanced_accuracy']:.2f}%  ECE {report['ece']:.3f}",
             f"no face found {report['no_face_found']}  several faces "
             f"{report['several_faces']}  unreadable {len(report['unreadable'])}"
             + (f"  skipped classes {report['skipped_classes']}"
                if report["skipped_classes"] else ""),
             "class\tphotos\trecall"]
    lines += [f"{name}\t{report['per_class_photos'][name]}\t{100 * recall:.1f}%"
              for name, recall in report["recall"].items()]
    names = report["confusion"]["classes"]
    lines.append("confusion (rows: true, columns: predicted " + " ".join(names) + ")")
    lines += [f"{name}\t" + " ".join(f"{n:4d}" for n in row)
              for name, row in zip(names, report["confusion"]["matrix"]) if sum(row)]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The `ferpipe-evaluate-folder` command line."""
    parser = argparse.ArgumentParser(
        prog="ferpipe-evaluate-folder", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  ferpipe-evaluate-folder photos/\n"
               "  ferpipe-evaluate-folder photos/ --detector none --json\n"
               "  ferpipe-evaluate-folder photos/ --mapping names.json --model model.onnx")
    parser.add_argument("folder", type=Path, help="DIR/<class>/<photo>")
    parser.add_argument("--model", default=None,
                        help="as ferpipe-predict's --model (default: models/model.pt if it "
                             "exists, else the released model)")
    parser.add_argument("--mapping", type=Path, default=None,
                        help="JSON file {folder name: model class}, for names the synonyms miss")
    parser.add_argument("--detector", choices=(*DETECTORS, "none"), default="auto",
                        help="as ferpipe-predict's; none: classify each whole photo "
                             "(default %(default)s)")
    parser.add_argument("--no-align", dest="align", action="store_false",
                        help="crop faces as found, without levelling the eyes")
    parser.add_argument("--tta", choices=TTA_MODES, default=DEFAULT_TTA,
                        help="test-time augmentation (default %(default)s)")
    parser.add_argument("--logit-adjustment", type=logit_adjustment_type, metavar="TAU",
                        default=DEFAULT_LOGIT_ADJUSTMENT,
                        help="post-hoc logit adjustment tau (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


class _WholeImage:
    """`--detector none`: no face is ever found, so every photo is classified whole."""

    name = "none"

    def detect(self, gray: np.ndarray) -> list:
        return []


def main(argv: list[str] | None = None) -> int:
    """The `ferpipe-evaluate-folder` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        mapping = None
        if args.mapping is not None:
            try:
                mapping = json.loads(args.mapping.read_text())
            except (OSError, ValueError) as err:
                raise ValueError(f"--mapping {args.mapping}: cannot be read as JSON ({err})"
                                 ) from None
            if not isinstance(mapping, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
                raise ValueError(f"--mapping {args.mapping}: expected a JSON object of folder "
                                 f"name -> class name strings")
        which = f"model: {args.model}"
        if args.model is None:
            args.model, which = default_model()
        classifier = load_classifier(args.model)
        folders, skipped = class_folders(args.folder, classifier.class_names, mapping)
        detector = _WholeImage() if args.detector == "none" else make_detector(args.detector)
        predictor = Predictor(classifier, detector, tta=args.tta,
                              logit_adjustment=args.logit_adjustment, align=args.align)
        report = folder_report(score_folder(predictor, folders), classifier.class_names,
                               skipped)
    except (OSError, ValueError, RuntimeError, FerpipeError) as err:
        print(f"ferpipe-evaluate-folder: {err}", file=sys.stderr)
        return 2
    report = {"folder": str(args.folder), "model": str(args.model), "detector": detector.name,
              "align": args.align, "tta": args.tta, "logit_adjustment": args.logit_adjustment,
              "temperature": getattr(classifier, "temperature", 1.0), **report}
    if args.json:
        print(json.dumps(report))
    else:
        print(table(report, f"{which}; detector {detector.name}"
                            f"{' aligned' if args.align and detector.name == 'yunet' else ''}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
