"""The served model: an MLflow pyfunc that takes raw grayscale pixels and returns named probabilities,
and its registration in the MLflow model registry.

Request (`mlflow models serve` / `POST /invocations`): `{"inputs": [<image>, ...]}`, each image 48 x 48
grayscale pixel values **0-255** (not normalized; the model applies the training normalization
itself) as 48 lists of 48 numbers, so a batch is (B, 48, 48) (the logged signature). Optional
`"params": {"tta": "hflip"}` (none | hflip | ten_crop). Response: `{"predictions": [{"angry": p,
..., "surprise": p}, ...]}`, one mapping of class name to probability per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from ferpipe.errors import shorten
from ferpipe.params import TTA_MODES

#: Artifact path of the serving model inside the run.
SERVING_MODEL = "expression_model"


class ExpressionModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a train-stage checkpoint (logged as the artifact `checkpoint`)."""

    def load_context(self, context: Any) -> None:
        from ferpipe.inference import Classifier

        self.classifier = Classifier.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow reads them
        """Probabilities per class for a batch of 0-255 grayscale images.

        Args:
            model_input: array-like (B, S, S), S = the checkpoint's image size (48), values
                0-255.
            params: {"tta": "none" | "hflip" | "ten_crop"} (default none).

        Returns:
            DataFrame (B rows, one float column per class name) of probabilities.

        Raises:
            ValueError: another shape, values outside 0-255, or an unknown `tta`.
        """
        images = to_pixels(model_input, self.classifier.image_size)
        tta = (params or {}).get("tta", "none")
        if tta not in TTA_MODES:
            raise ValueError(f"params.tta: got {shorten(tta)}; expected one of {list(TTA_MODES)}")
        probs = self.classifier.predict(images, tta=tta)
        return pd.DataFrame(probs, columns=self.classifier.class_names)


def to_pixels(model_input: Any, size: int) -> np.ndarray:
    """uint8 (B, size, size) from array-like pixels in 0-255 of shape (B, size, size).

    Raises:
        ValueError: another shape, or values outside 0-255.
    """
    x = np.asarray(model_input, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (size, size):
        raise ValueError(f"expected images of {size}x{size} pixels as (B, {size}, {size}); got "
                         f"shape {x.shape}")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ValueError(f"expected pixel values 0-255 (not normalized); got {x.min()}..{x.max()}")
    return np.rint(x).astype(np.uint8)


def log_serving_model(checkpoint: str | Path, example: np.ndarray) -> str:
    """Log the checkpoint as the pyfunc `expression_model` of the active run.

    Args:
        checkpoint: the train stage's checkpoint file.
        example: float32 (B, S, S) pixels 0-255: the input example (and the signature's input).

    Returns:
        The model URI (`models:/m-...`).
    """
    from mlflow.models import infer_signature

    from ferpipe.inference import Classifier

    classifier = Classifier.from_checkpoint(checkpoint)
    output = pd.DataFrame(classifier.predict(to_pixels(example, classifier.image_size)),
                          columns=classifier.class_names)
    signature = infer_signature(example, output, params={"tta": "none"})
    package = Path(__file__).resolve().parent
    info = mlflow.pyfunc.log_model(
        name=SERVING_MODEL, python_model=ExpressionModel(),
        artifacts={"checkpoint": str(checkpoint)}, code_paths=[str(package)],
        input_example=example, signature=signature,
        pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={_version('torch')}",
                          f"torchvision=={_version('torchvision')}", "numpy", "pandas"])
    return info.model_uri


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package).split("+")[0]


def register(model_uri: str, name: str, alias: str, tags: dict[str, str]) -> str:
    """Register `model_uri` as a new version of `name`, point `alias` at it and tag it.

    Returns:
        The new version number (as a string).
    """
    client = mlflow.MlflowClient()
    version = mlflow.register_model(model_uri, name).version
    client.set_registered_model_alias(name, alias, version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return str(version)
