"""`ferpipe-bench --predict`: the predict command's latency, milliseconds per photo and per face,
for a checkpoint or an ONNX file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ferpipe.model.inference import DEFAULT_TTA


def predict_latency(model: Path, repeats: int, tta: str = DEFAULT_TTA, faces: int = 8,
                    detector: str = "auto") -> dict[str, Any]:
    """Milliseconds per 640 x 480 photo with one face through the predict command's steps.

    Args:
        model: a checkpoint or ONNX file, or an MLflow URI (see `predictor.load_classifier`).
        faces: face crops classified in one batch for the per-face figure.
        detector: `ferpipe.predict.detectors.DETECTORS`.

    Returns:
        median and 90th-percentile ms of decode (JPEG bytes -> grayscale), detect (the
        detector, with YuNet's roll refinement), classify (align and crop + model) and total
        per photo, and of classifying `faces` crops divided by `faces` (`per_face`), over
        `repeats` runs after 3 warm-up runs; the detector's name and the faces found.

    Raises:
        CheckpointError: see `predictor.load_classifier`.
    """
    from io import BytesIO

    from PIL import Image
    from skimage import data as skdata

    from ferpipe.predict.detectors import make_detector
    from ferpipe.predict.faces import align_face
    from ferpipe.predict.predictor import MARGINS, Predictor, load_classifier, load_gray

    buffer = BytesIO()
    Image.fromarray(skdata.astronaut()).resize((640, 480)).save(buffer, "JPEG", quality=90)
    predictor = Predictor(load_classifier(str(model)), make_detector(detector), tta=tta)
    size = predictor.classifier.image_size
    margin = MARGINS[predictor.detector.name]
    times: dict[str, list[float]] = {"decode": [], "detect": [], "classify": [], "total": [],
                                     "per_face": []}
    found = 0
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        _, gray = load_gray(BytesIO(buffer.getvalue()))
        t1 = time.perf_counter()
        detected = predictor.detector.detect(gray)
        t2 = time.perf_counter()
        crops = np.stack([align_face(gray, face, margin, size) for face in detected])
        predictor.classifier.predict(crops, tta)
        t3 = time.perf_counter()
        predictor.classifier.predict(np.repeat(crops[:1], faces, 0), tta)
        t4 = time.perf_counter()
        found = len(detected)
        if i >= 3:
            for key, seconds in (("decode", t1 - t0), ("detect", t2 - t1), ("classify", t3 - t2),
                                 ("total", t3 - t0), ("per_face", (t4 - t3) / faces)):
                times[key].append(seconds * 1000)
    backend = "onnxruntime" if str(model).lower().endswith(".onnx") else "pytorch"
    result: dict[str, Any] = {"model": str(model), "backend": backend, "photo": "640x480 JPEG",
                              "detector": predictor.detector.name, "faces": found,
                              "batch_faces": faces, "repeats": repeats,
                              "tta": tta, "threads": torch.get_num_threads()}
    for key, values in times.items():
        result[f"{key}_ms_median"] = round(float(np.median(values)), 2)
        result[f"{key}_ms_p90"] = round(float(np.percentile(values, 90)), 2)
    return result
