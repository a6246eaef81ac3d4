"""Training-speed benchmark: `ferpipe-bench [--batches N]` (or `python -m ferpipe.tools.bench.cli`).

Measures, in one run, with the device, precision, batch size and model that `params.yaml` gives
the train stage:

1. bare: images/s of the train step alone (`training.train_step`: forward, loss, backward,
   optimizer step) on one ready, normalized batch already on the device;
2. pipeline: images/s of the project's own loop (`training.train_one_epoch`) over the real
   prepared arrays, augmentation, indexing and the LR schedule included;
3. baseline: images/s of the per-image approach common FER projects use: torchvision
   `ImageFolder` over the unpacked training JPEGs, per-image PIL transforms (flip, rotation,
   colour jitter, `ToTensor`, `Normalize`) in a `DataLoader` with worker processes, feeding the
   same model through the same `train_step`;

then the ratios pipeline / bare and pipeline / baseline, the peak resident memory of the process
after bare + pipeline (real arrays, model, optimizer: what the train stage holds), the wall time of
the data stages (download from the local archive, prepare, stats) run in a temporary folder, and
optionally the time of a no-op `dvc repro`. Bare, pipeline and baseline are measured in turns
(`--rounds`) so drifting machine speed hits all three alike.

It also prints the achieved TFLOP/s of the step (its FLOPs per image, counted by
`torch.utils.flop_counter`, times the pipeline's images/s) beside the TFLOP/s of a 4096^3
matrix product on the same device in the step's precision (bf16 where the step autocasts to it,
fp32 where it runs fp32), the ceiling (`--no-ceiling` skips it).

`--compare [SPEC ...]` measures several settings side by side instead, in turns: each SPEC is
comma-separated `section.key=value` overrides of the params file (as `dvc exp run -S`; `default`
or "" is the params file itself), the first the reference of the speed-ups; with no SPEC, the
old default (`OLD_DEFAULT`) against the params file. `--profile N` runs `torch.profiler` over N
batches of the loop and prints where the time goes by kind of op, and the time of one
validation.

`--predict` measures the predict command's latency instead: milliseconds per photo for a 640 x 480
JPEG with one face (scikit-image's astronaut portrait, resized), model already loaded: decoding,
face detection, and cropping + classifying, each and in all; and milliseconds per face when
`--faces` face crops are classified in one batch. `--model` may be an ONNX file (run with
onnxruntime); `--compare-onnx` exports the checkpoint to ONNX and measures both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ferpipe.model.inference import DEFAULT_TTA


def predict_latency(model: Path, repeats: int, tta: str = DEFAULT_TTA, faces: int = 8
                    ) -> dict[str, Any]:
    """Milliseconds per 640 x 480 photo with one face through the predict command's steps.

    Args:
        model: a checkpoint or ONNX file, or an MLflow URI (see `predictor.load_classifier`).
        faces: face crops classified in one batch for the per-face figure.

    Returns:
        median and 90th-percentile ms of decode (JPEG bytes -> grayscale), detect (Haar cascade),
        classify (crop + model) and total per photo, and of classifying `faces` crops divided
        by `faces` (`per_face`), over `repeats` runs after 3 warm-up runs; the faces found.

    Raises:
        CheckpointError: see `predictor.load_classifier`.
    """
    from io import BytesIO

    from PIL import Image
    from skimage import data as skdata

    from ferpipe.predict.faces import crop_face
    from ferpipe.predict.predictor import Predictor, load_classifier, load_gray

    buffer = BytesIO()
    Image.fromarray(skdata.astronaut()).resize((640, 480)).save(buffer, "JPEG", quality=90)
    predictor = Predictor(load_classifier(str(model)), tta=tta)
    size = predictor.classifier.image_size
    times: dict[str, list[float]] = {"decode": [], "detect": [], "classify": [], "total": [],
                                     "per_face": []}
    found = 0
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        _, gray = load_gray(BytesIO(buffer.getvalue()))
        t1 = time.perf_counter()
        boxes = predictor.detector.detect(gray)
        t2 = time.perf_counter()
        crops = np.stack([crop_face(gray, box, predictor.margin, size) for box in boxes])
        predictor.classifier.predict(crops, tta)
        t3 = time.perf_counter()
        predictor.classifier.predict(np.repeat(crops[:1], faces, 0), tta)
        t4 = time.perf_counter()
        found = len(boxes)
        if i >= 3:
            for key, seconds in (("decode", t1 - t0), ("detect", t2 - t1), ("classify", t3 - t2),
                                 ("total", t3 - t0), ("per_face", (t4 - t3) / faces)):
                times[key].append(seconds * 1000)
    backend = "onnxruntime" if str(model).lower().endswith(".onnx") else "pytorch"
    result: dict[str, Any] = {"model": str(model), "backend": backend, "photo": "640x480 JPEG",
                              "faces": found, "batch_faces": faces, "repeats": repeats,
                              "tta": tta, "threads": torch.get_num_threads()}
    for key, values in times.items():
        result[f"{key}_ms_median"] = round(float(np.median(values)), 2)
        result[f"{key}_ms_p90"] = round(float(np.percentile(values, 90)), 2)
    return result
