"""From a photo to its faces' expressions: reading an image as training reads its images, the
classifier behind `--model` (checkpoint, ONNX file or MLflow URI), and the `Predictor` that
detects (`ferpipe.predict.detectors`), aligns and crops (`ferpipe.predict.faces`) and classifies
each face; `ferpipe-predict`, the served model, `ferpipe-evaluate-folder` and the evaluate
stage's example photo all go through it."""

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
from ferpipe.model.temperature import Temperature, as_temperature, calibrate
from ferpipe.predict.detectors import make_detector
from ferpipe.predict.faces import Face, align_face, opencv

#: The train stage's checkpoint: the model `ferpipe-predict` uses when it exists (relative to
#: the current folder, the repo root).
DEFAULT_MODEL = "models/model.pt"
#: The evaluate stage's record: its `calibration` section holds the temperature fitted on val
#: for the checkpoint whose sha256 it names (relative to the current folder, the repo root).
EVALUATION = "metrics/eval.json"


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


#: Photos taken from a folder (`ferpipe-predict DIR`, `ferpipe-evaluate-folder`); a file named
#: explicitly is always tried.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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


#: The crop's margin around each detector's box, fraction of the box's longer side, chosen on
#: FER2013's val images by `scripts/framing.py` (docs/faces.md): the framing whose crops the
#: classifier scores best, i.e. closest to FER2013's own.
MARGINS = {"yunet": 0.0, "haar": 0.0}


@dataclass
class Predictor:
    """Detect, align, crop and classify; see the module docstring.

    Attributes:
        margin: the crop's margin (fraction of the box's longer side); None: the detector's
            (`MARGINS`).
        align: rotate each face so its eyes are level when the detector gives landmarks.
        temperature: the probabilities' temperature, one or one per predicted class
            (`ferpipe.model.temperature.calibrate`); None: the classifier's own
            (`load_classifier` sets it from the model's record), else 1 (as the model says).
    """

    classifier: Classifier
    detector: Any = field(default_factory=make_detector)
    margin: float | None = None
    tta: str = DEFAULT_TTA
    tta_crop: int | None = None
    logit_adjustment: float = DEFAULT_LOGIT_ADJUSTMENT
    align: bool = True
    temperature: Temperature | None = None

    def crops(self, gray: np.ndarray, fallback: bool = True
              ) -> tuple[list[Face], np.ndarray, bool]:
        """The faces of a grayscale uint8 (H, W) image and their crops, uint8 (n, S, S) with S
        the classifier's input side; when no face is found and `fallback`, the whole image as
        one face (the third value True), else no face and an empty (0, S, S) array."""
        cv2, size = opencv(), self.classifier.image_size
        faces = self.detector.detect(gray)
        if not faces:
            if not fallback:
                return [], np.zeros((0, size, size), np.uint8), False
            whole = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
            return [Face((0, 0, gray.shape[1], gray.shape[0]))], whole[None], True
        margin = MARGINS.get(getattr(self.detector, "name", ""), 0.1) if self.margin is None \
            else self.margin
        crops = [align_face(gray, face if self.align else Face(face.box), margin, size)
                 for face in faces]
        return faces, np.stack(crops), False

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        """float (N, C) calibrated probabilities of uint8 (N, S, S) crops: the evaluate
        stage's scores (TTA, logit adjustment) at the temperature."""
        probs = probabilities(self.classifier, crops, self.tta, self.logit_adjustment,
                              self.tta_crop)
        temperature = (getattr(self.classifier, "temperature", 1.0) if self.temperature is None
                       else self.temperature)
        return calibrate(probs, temperature)

    def predict_image(self, gray: np.ndarray, name: str, fallback: bool = True
                      ) -> list[Prediction]:
        """Predictions for every face of a grayscale uint8 (H, W) image, largest face first; when
        no face is found, the whole image (one Prediction with whole_image=True) if `fallback`,
        else none."""
        faces, crops, whole = self.crops(gray, fallback)
        if not faces:
            return []
        boxes = [face.box for face in faces]
        probs = self.probabilities(crops)
        names = self.classifier.class_names
        out = []
        for i, (box, p) in enumerate(zip(boxes, probs)):
            best = int(p.argmax())
            out.append(Prediction(name, i, box, names[best], float(p[best]),
                                  {n: float(v) for n, v in zip(names, p)}, whole))
        return out


def recorded_temperature(checkpoint: str | Path, record: str | Path = EVALUATION) -> Temperature:
    """The temperature the evaluate stage fitted on val for this checkpoint (a float, or one per
    predicted class: `ferpipe.model.temperature`): `record`'s `calibration.temperature` when its
    `calibration.model_sha256` is the checkpoint's sha256; 1.0 when there is no such record
    (another checkpoint's, or none)."""
    import json

    from ferpipe.core.files import sha256_of

    try:
        calibration = json.loads(Path(record).read_text()).get("calibration") or {}
    except (OSError, ValueError):
        return 1.0
    temperature = as_temperature(calibration.get("temperature"))
    if temperature is None or calibration.get("model_sha256") != sha256_of(Path(checkpoint)):
        return 1.0
    return temperature


def load_classifier(ref: str) -> Classifier:
    """A checkpoint file, an ONNX file (name ending in `.onnx`, run with onnxruntime, see
    `ferpipe.model.export.load_onnx_classifier`), or an MLflow URI of a pipeline run's model:
    `models:/<name>@<alias>`, `models:/<name>/<version>` or `runs:/<run_id>` (the run's logged
    `checkpoint/model.pt` is used; the store is the repo's, see `ferpipe.core.tracking`).
    The classifier's `temperature` (one, or one per predicted class:
    `ferpipe.model.temperature.Temperature`) comes with it: an ONNX file's metadata, the run's
    logged evaluation (`eval/eval.json`), or for a checkpoint file `recorded_temperature`; 1.0
    where none is recorded.

    Raises:
        CheckpointError: no such checkpoint or ONNX file, or one that is not one.
        ValueError: an MLflow URI that cannot be resolved.
    """
    if ref.lower().endswith(".onnx"):
        from ferpipe.model.export import load_onnx_classifier

        return load_onnx_classifier(ref)  # its temperature from the file's metadata
    if not re.match(r"^(models|runs):/", ref):
        classifier = Classifier.from_checkpoint(ref)
        classifier.temperature = recorded_temperature(ref)
        return classifier
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
    try:
        evaluation = mlflow.artifacts.download_artifacts(run_id=run_id,
                                                         artifact_path="eval/eval.json")
        classifier.temperature = recorded_temperature(local, evaluation)
    except mlflow.exceptions.MlflowException:  # a run not evaluated (yet): uncalibrated
        classifier.temperature = 1.0
    return classifier
