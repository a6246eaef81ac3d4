"""ONNX export of the train stage's checkpoint: `export_onnx` writes one self-contained `.onnx`
file (weights and the class names, normalization and sizes as metadata), `check_onnx` compares
onnxruntime's logits with PyTorch's, `log_onnx_model` logs (and registers) it in MLflow, and
`load_onnx_classifier` runs it with onnxruntime behind the `ferpipe.model.inference.Classifier`
interface that the predict command uses (`ferpipe-predict --model model.onnx`).

The ONNX graph takes the normalized float32 input (B, 1, S, S) that the PyTorch model takes
(S = the training crop, `input_size`, else the image size) and returns logits float32 (B, C);
normalization, cropping and test-time augmentation happen outside it, in `ferpipe.model.inference`, so
both back ends share them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ferpipe.core.errors import CheckpointError, FerpipeError
from ferpipe.model import registry
from ferpipe.model.device import StepContext
from ferpipe.model.inference import Classifier, normalize, tta_views
from ferpipe.model.temperature import Temperature, as_temperature, to_text

#: Metadata keys `export_onnx` stores (values are strings; class_names is a JSON list).
METADATA_KEYS = ("class_names", "mean", "std", "input_size", "image_size")
#: Name of the logged MLflow model inside the run.
ONNX_MODEL = "onnx_model"
#: Largest absolute logit difference `check_onnx` accepts by default.
ATOL = 1e-3
#: ... plus this share of the logit's size (fp32 rounding grows with it: an untrained model's
#: logits can be in the thousands), as in `numpy.allclose`.
RTOL = 1e-4


class OnnxMismatchError(CheckpointError):
    """onnxruntime's output differs from PyTorch's on the same images beyond the tolerance."""


def _sizes(ckpt: dict) -> tuple[int, int]:
    """(input size, image size) of a checkpoint dict, pixels."""
    size = int(ckpt["image_size"])
    return int(ckpt.get("input_size", size)), size


def export_onnx(checkpoint: str | Path, dest: str | Path, temperature: Temperature | None = None
                ) -> Path:
    """Export a train-stage checkpoint's model to one ONNX file (fp32, CPU, dynamic batch axis).

    Graph input `input`: float32 (B, 1, S, S), normalized ((pixel / 255 - mean) / std), S = the
    checkpoint's `input_size` else `image_size`; output `logits`: float32 (B, C). The metadata
    props hold class_names (JSON list), mean and std ([0, 1] units), input_size and image_size
    (pixels), and class_counts (JSON list, training images per class: the prior of the logit
    adjustment) when the checkpoint has them, and `temperature` (the calibration fitted on val,
    `ferpipe.evaluate.calibration`: a number, or a JSON list of one per predicted class) when
    given. Written to a temporary name, then renamed: `dest`
    is never half-written.

    Returns:
        `dest` as a Path.

    Raises:
        CheckpointError: see `ferpipe.model.checkpoint.load_checkpoint`.
    """
    import onnx

    from ferpipe.model.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(checkpoint)
    input_size, image_size = _sizes(ckpt)
    example = torch.zeros(2, 1, input_size, input_size)
    program = torch.onnx.export(
        model, (example,), dynamo=True, input_names=["input"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    proto = program.model_proto
    props = {"class_names": json.dumps(list(ckpt["class_names"])),
             "mean": repr(float(ckpt["mean"])), "std": repr(float(ckpt["std"])),
             "input_size": str(input_size), "image_size": str(image_size)}
    if ckpt.get("class_counts"):
        props["class_counts"] = json.dumps([int(n) for n in ckpt["class_counts"]])
    if temperature is not None:
        props["temperature"] = to_text(temperature)
    onnx.helper.set_model_props(proto, props)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        onnx.save(proto, tmp)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class OnnxModule(nn.Module):
    """An onnxruntime session as a module: float32 (B, 1, S, S) tensor in, logits (B, C) out
    (CPU tensors), so `ferpipe.model.inference.predict_log_proba` runs it like the PyTorch model."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)}
        return torch.from_numpy(self.session.run(None, feed)[0])


def load_onnx_classifier(path: str | Path) -> Classifier:
    """A `Classifier` whose model is the ONNX file run by onnxruntime (CPU, as many threads as
    torch uses): `predict(images uint8 (N, image_size, image_size), tta, crop)` -> float32 (N, C)
    probabilities, through the same normalization, TTA views and averaging as a checkpoint; its
    `temperature` is the file's (1.0 when the metadata has none).

    Raises:
        CheckpointError: no such file, not an ONNX model onnxruntime can load, or one without
            the metadata `export_onnx` writes. The message names the file.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX model not found")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # Idle worker threads sleep rather than spin: spinning took the cores from OpenCV's face
    # detection between two photos (detection 19 ms instead of 11 ms with 2 threads; docs/export.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types, one per cause
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise CheckpointError(f"{path}: cannot be read as an ONNX model ({reason}); expected a "
                              f"file written by ferpipe.model.export.export_onnx") from None
    meta = session.get_modelmeta().custom_metadata_map
    missing = [key for key in METADATA_KEYS if key not in meta]
    if missing:
        raise CheckpointError(f"{path}: ONNX model without the metadata {missing}; expected a file "
                              f"written by ferpipe.model.export.export_onnx")
    input_size, image_size = int(meta["input_size"]), int(meta["image_size"])
    ctx = StepContext(torch.device("cpu"), float(meta["mean"]), float(meta["std"]),
                      input_size=input_size if input_size < image_size else None)
    counts = json.loads(meta["class_counts"]) if "class_counts" in meta else None
    classifier = Classifier(OnnxModule(session), json.loads(meta["class_names"]), ctx,
                            image_size, str(path), [int(n) for n in counts] if counts else None)
    temperature = as_temperature(meta.get("temperature", 1.0))  # 1.0: not calibrated
    if temperature is None:
        raise CheckpointError(f"{path}: the ONNX metadata's temperature {meta['temperature']!r} "
                              f"is not a positive number or a list of them")
    classifier.temperature = temperature
    return classifier


def check_images(image_size: int, n: int = 8) -> np.ndarray:
    """uint8 (n + 2, image_size, image_size) images to compare back ends on: the astronaut's
    face (scikit-image's public-domain photo) resized, a horizontal ramp, and `n` seeded noise
    images."""
    from PIL import Image
    from skimage import data as skdata

    face = Image.fromarray(skdata.astronaut()[40:200, 150:310]).convert("L")
    face = np.asarray(face.resize((image_size, image_size), Image.BILINEAR))
    ramp = np.tile(np.linspace(0, 255, image_size), (image_size, 1)).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (n, image_size, image_size), np.uint8)
    return np.concatenate([face[None], ramp[None], noise])


def check_onnx(checkpoint: str | Path, onnx_path: str | Path, images: np.ndarray | None = None,
               atol: float = ATOL, rtol: float = RTOL) -> dict[str, float]:
    """Compare onnxruntime's logits with PyTorch's on the same images.

    Args:
        images: uint8 (N, image_size, image_size); None: `check_images`.
        atol, rtol: a logit may differ by at most `atol + rtol * |PyTorch's logit|`.

    Returns:
        {"max_abs_diff": largest |logit difference|, "images": N}.

    Raises:
        OnnxMismatchError: a logit differs by more than that, or the predicted classes differ
            on an image whose top two PyTorch logits are further apart than that tolerance (a
            tie within it may go either way).
        CheckpointError: see `ferpipe.model.checkpoint.load_checkpoint`, `load_onnx_classifier`.
    """
    from ferpipe.model.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(checkpoint)
    input_size, image_size = _sizes(ckpt)
    onnx_model = load_onnx_classifier(onnx_path).model
    images = check_images(image_size) if images is None else images
    x = next(tta_views(normalize(torch.as_tensor(images), ckpt["mean"], ckpt["std"]), "none",
                       input_size=input_size))
    with torch.no_grad():
        expected = model(x).numpy()
    got = onnx_model(x).numpy()
    diff = float(np.abs(got - expected).max())
    top2 = np.sort(expected, axis=1)[:, -2:]
    tie = top2[:, 1] - top2[:, 0] <= atol + rtol * np.abs(top2[:, 1])
    flipped = int(((got.argmax(1) != expected.argmax(1)) & ~tie).sum())
    if not np.all(np.abs(got - expected) <= atol + rtol * np.abs(expected)) or flipped:
        raise OnnxMismatchError(
            f"{onnx_path}: onnxruntime disagrees with PyTorch ({checkpoint}) on {len(images)} "
            f"images: max |logit difference| {diff:.3g} (tolerance {atol:g} + {rtol:g} x "
            f"|logit|), predicted class differs on {flipped}")
    return {"max_abs_diff": diff, "images": len(images)}


def log_onnx_model(checkpoint: str | Path, registry_name: str | None = None,
                   alias: str | None = None, temperature: Temperature | None = None) -> str:
    """Export the checkpoint to ONNX, check it (`check_onnx`), and log it to the active MLflow
    run as the ONNX model `onnx_model` (input example: two normalized float32 (1, S, S) images,
    mid-grey and a ramp). With `registry_name`, it is also registered as `<registry_name>-onnx`
    and `alias` (if given) points at the new version. `temperature` goes into its metadata
    (`export_onnx`).

    Returns:
        The logged model's URI (`models:/m-...`).

    Raises:
        FerpipeError: no MLflow run is active.
        OnnxMismatchError, CheckpointError: see `check_onnx`.
    """
    import mlflow
    import mlflow.onnx
    import onnx

    if mlflow.active_run() is None:
        raise FerpipeError("log_onnx_model: no active MLflow run (call it inside "
                           "mlflow.start_run())")
    with tempfile.TemporaryDirectory(prefix="ferpipe-onnx-") as tmp:
        path = export_onnx(checkpoint, Path(tmp) / "model.onnx", temperature)
        check_onnx(checkpoint, path)
        classifier = load_onnx_classifier(path)
        size, ctx = classifier.image_size, classifier.ctx
        pixels = check_images(size)[1:2].repeat(2, 0)
        pixels[0] = 128
        example = next(tta_views(normalize(torch.as_tensor(pixels), ctx.mean, ctx.std), "none",
                                 input_size=ctx.input_size)).numpy()
        name = f"{registry_name}-onnx" if registry_name else None
        info = mlflow.onnx.log_model(onnx.load(path), name=ONNX_MODEL, input_example=example)
    if name:
        registry.register(info.model_uri, name, alias)
    return info.model_uri


def main(argv: list[str] | None = None) -> None:
    """`python -m ferpipe.model.export CHECKPOINT DEST.onnx`: export, then check against PyTorch."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Export a train-stage checkpoint to ONNX and check it against PyTorch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default="models/model.pt",
                        help="the train stage's checkpoint")
    parser.add_argument("dest", nargs="?", default="model.onnx", help="the ONNX file to write")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".onnx-") as tmp:
        path = export_onnx(args.checkpoint, Path(tmp) / dest.name)
        report = check_onnx(args.checkpoint, path)  # a file that fails is never left at dest
        path.replace(dest)
    print(f"wrote {dest}: max |logit difference| from PyTorch {report['max_abs_diff']:.2g} on "
          f"{report['images']} images")


if __name__ == "__main__":
    from ferpipe.core.errors import run_main

    run_main(main)
