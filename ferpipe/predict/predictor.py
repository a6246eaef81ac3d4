"""From a photo to its faces' expressions: reading an image as training reads its images, the
classifier behind `--model` (checkpoint, ONNX file or MLflow URI), and the `Predictor` that
detects, crops and classifies each face (`ferpipe.predict.faces`); `ferpipe-predict`, the served model
and the evaluate stage's example photo all go through it."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ferpipe.data.decode import to_gray
from ferpipe.model.inference import (
    DEFAULT_LOGIT_ADJUSTMENT,
    DEFAULT_TTA,
    Classifier,
    probabilities,
)
from ferpipe.predict.faces import FaceDetector, crop_face, opencv

#: The train stage's checkpoint: the model `ferpipe-predict` uses when it exists (relative to
#: the current folder, the repo root).
DEFAULT_MODEL = "models/model.pt"


def default_model() -> tuple[str, str]:
    """The model to use when none is named: `DEFAULT_MODEL` when that file exists (a run of the
    pipeline here), else the released model shipped in the package (`ferpipe.tools.release`).

    Returns:
        (the model reference for `load_classifier`, a one-line description of it for stderr).

    Raises:
        CheckpointError: neither exists (an install without the released model, before any run).
    """
    from ferpipe.core.errors import CheckpointError
    from ferpipe.model.released import RELEASED_INFO, RELEASED_MODEL, read_info

    if Path(DEFAULT_MODEL).is_file():
        return DEFAULT_MODEL, f"model: {DEFAULT_MODEL} (the train stage's checkpoint)"
    if RELEASED_MODEL.is_file():
        info = read_info(RELEASED_INFO) or {}
        test = (info.get("test") or {}).get("accuracy_released")
        about = ", ".join(part for part in (
            f"test accuracy {100 * test:.2f}%" if test is not None else "",
            f"commit {info['commit'][:7]}" if info.get("commit") else "") if part)
        return str(RELEASED_MODEL), (f"model: the released model {RELEASED_MODEL}"
                                     + (f" ({about})" if about else "")
                                     + f"; {DEFAULT_MODEL} not found")
    raise CheckpointError(f"{DEFAULT_MODEL}: checkpoint not found and this install has no "
                          f"released model ({RELEASED_MODEL}); train one (dvc repro) or pass "
                          f"--model")


def load_gray(path: Path | BinaryIO) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (H, W, 3), grayscale uint8 (H, W)) of an image file (path or open binary
    file), EXIF rotation applied, the grayscale made by `ferpipe.data.decode.to_gray` (16-bit
    images scaled, not clipped), as prepare makes the training images.

    Raises:
        OSError, UnidentifiedImageError, ValueError: the file cannot be read as an image.
    """
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        rgb = np.asarray(img.convert("RGB"))
        gray = np.asarray(to_gray(img))  # as prepare decodes training images
    return rgb, gray


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`load_gray` of a regular file, with every reason it cannot be read as one ValueError.

    Raises:
        ValueError: missing, not a regular file (a folder, FIFO, device ...), not an image,
            corrupt, or larger than Pillow's decompression-bomb limit.
    """
    if not path.exists():
        raise ValueError("no such file")
    if not path.is_file():
        raise ValueError("not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return load_gray(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image: too large ({err})") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise ValueError(f"cannot read image: {err}") from None


@dataclass
class Prediction:
    """One face (or whole image) of one file."""

    file: str
    face: int
    box: tuple[int, int, int, int]
    expression: str
    probability: float
    probabilities: dict[str, float]
    whole_image: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "face": self.face, "box": list(self.box),
                "expression": self.expression, "probability": self.probability,
                "probabilities": self.probabilities, "whole_image": self.whole_image}


@dataclass
class Predictor:
    """Detect, crop and classify; see the module docstring."""

    classifier: Classifier
    detector: FaceDetector = field(default_factory=FaceDetector)
    margin: float = 0.1
    tta: str = DEFAULT_TTA
    tta_crop: int | None = None
    logit_adjustment: float = DEFAULT_LOGIT_ADJUSTMENT

    def predict_image(self, gray: np.ndarray, name: str, fallback: bool = True
                      ) -> list[Prediction]:
        """Predictions for every face of a grayscale uint8 (H, W) image, largest face first; when
        no face is found, the whole image (one Prediction with whole_image=True) if `fallback`,
        else none."""
        cv2, size = opencv(), self.classifier.image_size
        boxes = self.detector.detect(gray)
        if not boxes and not fallback:
            return []
        whole = not boxes
        if whole:
            boxes = [(0, 0, gray.shape[1], gray.shape[0])]
            crops = [cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)]
        else:
            crops = [crop_face(gray, box, self.margin, size) for box in boxes]
        probs = probabilities(self.classifier, np.stack(crops), self.tta, self.logit_adjustment,
                              self.tta_crop)
        names = self.classifier.class_names
        out = []
        for i, (box, p) in enumerate(zip(boxes, probs)):
            best = int(p.argmax())
            out.append(Prediction(name, i, box, names[best], float(p[best]),
                                  {n: float(v) for n, v in zip(names, p)}, whole))
        return out


def load_classifier(ref: str) -> Classifier:
    """A checkpoint file, an ONNX file (name ending in `.onnx`, run with onnxruntime, see
    `ferpipe.model.export.load_onnx_classifier`), or an MLflow URI of a pipeline run's model:
    `models:/<name>@<alias>`, `models:/<name>/<version>` or `runs:/<run_id>` (the run's logged
    `checkpoint/model.pt` is used; the store is the repo's, see `ferpipe.core.tracking`).

    Raises:
        CheckpointError: no such checkpoint or ONNX file, or one that is not one.
        ValueError: an MLflow URI that cannot be resolved.
    """
    if ref.lower().endswith(".onnx"):
        from ferpipe.model.export import load_onnx_classifier

        return load_onnx_classifier(ref)
    if not re.match(r"^(models|runs):/", ref):
        return Classifier.from_checkpoint(ref)
    import mlflow

    from ferpipe.core import store

    mlflow.set_tracking_uri(store.tracking_uri())
    client = mlflow.MlflowClient()
    try:
        if ref.startswith("runs:/"):
            run_id = ref.removeprefix("runs:/").strip("/").split("/")[0]
        else:
            name_ref = ref.removeprefix("models:/")
            if "@" in name_ref:
                name, alias = name_ref.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, number = name_ref.rsplit("/", 1)
                version = client.get_model_version(name, number)
            run_id = version.run_id
        local = mlflow.artifacts.download_artifacts(run_id=run_id,
                                                    artifact_path="checkpoint/model.pt")
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(f"{ref}: cannot resolve the model: {err.message}") from err
    classifier = Classifier.from_checkpoint(local)
    classifier.source = ref
    return classifier
