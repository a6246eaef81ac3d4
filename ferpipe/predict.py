"""Predict facial expressions on your own photos and videos: `ferpipe-predict PHOTO_VIDEO_OR_FOLDER ...`
(or `python -m ferpipe.predict`).

Faces are found with OpenCV's bundled Haar cascade (`haarcascade_frontalface_default.xml`, Viola &
Jones 2001, shipped with opencv-python-headless 4.x), each face is cropped as a square with a
margin around the detector's box, converted to 48 x 48 grayscale and classified with the
training normalization. An image in which no face is found is classified whole (meant for
images that already are face crops, such as FER2013's), and the output says so
(`whole_image`). Unreadable files get an error line; the others go on.

Output per face: file, face index, box (x, y, width, height in pixels of the original image),
the predicted expression, its probability and every class's probability, as a table or as JSON
lines (`--json`). `--annotate DIR` writes a copy of each image with the boxes and labels drawn.

Videos (files ending in .mp4 .avi .mov .mkv .webm, or a webcam with `--webcam INDEX`) are read
with OpenCV; every `--every`-th frame is classified the same way, faces only. Output per face:
file, frame index, time in seconds (frame index / the file's frame rate; a webcam's: since its
first frame), face index, box, expression, probability, every class's probability, as CSV or
JSON lines (`--json`); a classified frame without a face gets one row with only file, frame
and time (the other CSV cells empty, JSON values null), so every classified frame has a row.
`--annotate DIR` writes `<stem>.annotated.mp4` (mp4v), every frame with the latest boxes drawn.
A webcam runs until `--max-frames` or Ctrl-C.

`--model` takes a train-stage checkpoint, an MLflow URI of one, or an ONNX file (`.onnx`, from
`ferpipe.export.export_onnx`), run with onnxruntime.
Exit status 0, or 1 when some file (or the webcam) could not be read.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ferpipe.decode import to_gray
from ferpipe.errors import FerpipeError
from ferpipe.inference import Classifier
from ferpipe.params import TTA_MODES

#: The TTA of the README's headline accuracy (params.yaml `evaluate.tta`, chosen on val): this
#: command's default, so it answers as the headline scores. (The served model's default is the
#: `evaluate.tta` its evaluate stage ran with; this one when logged without it.)
DEFAULT_TTA = "hflip"

#: Files taken from a folder argument (a file named explicitly is always tried).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
#: Files read as videos (by suffix); a folder argument yields images only.
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
DEFAULT_MODEL = "models/model.pt"


def _cv2():
    """OpenCV, with a clear message when it is missing or is a 5.x build without Haar cascades."""
    try:
        import cv2
    except ImportError as err:
        raise RuntimeError("the predict command needs OpenCV: pip install "
                           "'opencv-python-headless<5'") from err
    if not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeError(f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in 5.x): "
                           f"pip install 'opencv-python-headless<5'")
    return cv2


class FaceDetector:
    """OpenCV's frontal-face Haar cascade (`detectMultiScale` with scale factor 1.1 and 5
    neighbours, as in OpenCV's face-detection tutorial), in two passes.

    1. The portrait pass, fast: a copy downscaled to `max_side` pixels (longer side), faces of at
       least `min_size` of the shorter side. Most photos of one person end here (about 16-20
       ms for a 640 x 480 photo on a 2-core CPU, `ferpipe-bench --predict`; docs/speed.md).
    2. When it finds no face, the small-face pass: a copy downscaled to at most `small_side`
       pixels (0: the photo's own size), faces down to `min_pixels` (24, the cascade's window)
       at that size. A group photo whose faces are 5-10% of its side is found here; so a
       photo up to `small_side` pixels has its faces found down to about 24 pixels.

    Only when both find nothing does `Predictor` classify the whole image (`whole_image`).

    Args:
        scale_factor: image-pyramid step of `detectMultiScale` (1.1: thorough, 1.2: faster).
        min_neighbors: detections needed to keep a face (higher: fewer false positives).
        min_size: smallest face of the portrait pass, fraction of the image's shorter side.
        max_side: the portrait pass searches images longer than this downscaled to it (the boxes
            are mapped back); 0 searches the full size.
        small_side: the small-face pass's longest side, pixels (0: the full size; None: no
            second pass).
        min_pixels: smallest face of the small-face pass, pixels at its scale.
    """

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: float = 0.15, max_side: int = 320, small_side: int | None = 1600,
                 min_pixels: int = 24) -> None:
        cv2 = _cv2()
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise RuntimeError(f"{path}: cannot load OpenCV's Haar cascade")
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.min_size, self.max_side = min_size, max_side
        self.small_side, self.min_pixels = small_side, max(min_pixels, CASCADE_WINDOW)

    def detect(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in pixels of `gray` (uint8 (H, W)), largest first; none for
        an image with a side shorter than the cascade's 24-pixel window (a 5000 x 1 strip, say),
        which holds no face it could find."""
        boxes = self._search(gray, self.max_side, lambda small: max(20, int(self.min_size
                                                                            * small)))
        if boxes or self.small_side is None:
            return boxes
        return self._search(gray, self.small_side, lambda small: self.min_pixels)

    def _search(self, gray: np.ndarray, max_side: int, smallest) -> list[tuple[int, int, int, int]]:
        """One pass: `gray` downscaled to `max_side` (0: as it is), faces of at least
        `smallest(shorter side)` pixels at that scale, boxes in `gray`'s pixels."""
        cv2 = _cv2()
        scale = 1.0
        height, width = gray.shape[:2]
        side = max(height, width)
        if max_side and side > max_side:
            scale = max_side / side
            # Each side at least 1 pixel: fx/fy scaling rounds a 5000 x 1 strip to 320 x 0.
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        if min(gray.shape[:2]) < CASCADE_WINDOW:
            return []
        least = smallest(min(gray.shape[:2]))
        found = self.cascade.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                              minNeighbors=self.min_neighbors,
                                              minSize=(least, least))
        boxes = [tuple(int(round(v / scale)) for v in box) for box in found]
        return sorted(boxes, key=lambda b: -b[2] * b[3])


#: The side of the Haar cascade's detection window, pixels (haarcascade_frontalface_default.xml).
CASCADE_WINDOW = 24


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int], margin: float, size: int
              ) -> np.ndarray:
    """A square crop around `box`, grown by `margin` x its side on every side, resized.

    Parts of the square outside the image are filled by replicating the border.

    Args:
        gray: uint8 (H, W). box: (x, y, w, h) pixels. margin: fraction of the box side.
        size: output side, pixels.

    Returns:
        uint8 (size, size).
    """
    cv2 = _cv2()
    x, y, w, h = box
    side = int(round(max(w, h) * (1 + 2 * margin)))
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    pad = max(0, -x0, -y0, x0 + side - gray.shape[1], y0 + side - gray.shape[0])
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    crop = gray[y0:y0 + side, x0:x0 + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def load_gray(path: Path | BinaryIO) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (H, W, 3), grayscale uint8 (H, W)) of an image file (path or open binary
    file), EXIF rotation applied, the grayscale made by `ferpipe.decode.to_gray` (16-bit
    images scaled, not clipped), as prepare makes the training images.

    Raises:
        OSError, UnidentifiedImageError, ValueError: the file cannot be read as an image.
    """
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        rgb = np.asarray(img.convert("RGB"))
        gray = np.asarray(to_gray(img))  # as prepare decodes training images
    return rgb, gray


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

    def predict_image(self, gray: np.ndarray, name: str, fallback: bool = True
                      ) -> list[Prediction]:
        """Predictions for every face of a grayscale uint8 (H, W) image, largest face first; when
        no face is found, the whole image (one Prediction with whole_image=True) if `fallback`,
        else none."""
        cv2, size = _cv2(), self.classifier.image_size
        boxes = self.detector.detect(gray)
        if not boxes and not fallback:
            return []
        whole = not boxes
        if whole:
            boxes = [(0, 0, gray.shape[1], gray.shape[0])]
            crops = [cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)]
        else:
            crops = [crop_face(gray, box, self.margin, size) for box in boxes]
        probs = self.classifier.predict(np.stack(crops), self.tta, self.tta_crop)
        names = self.classifier.class_names
        out = []
        for i, (box, p) in enumerate(zip(boxes, probs)):
            best = int(p.argmax())
            out.append(Prediction(name, i, box, names[best], float(p[best]),
                                  {n: float(v) for n, v in zip(names, p)}, whole))
        return out


def load_classifier(ref: str) -> Classifier:
    """A checkpoint file, an ONNX file (name ending in `.onnx`, run with onnxruntime, see
    `ferpipe.export.load_onnx_classifier`), or an MLflow URI of a pipeline run's model:
    `models:/<name>@<alias>`, `models:/<name>/<version>` or `runs:/<run_id>` (the run's logged
    `checkpoint/model.pt` is used; the store is the repo's, see `ferpipe.tracking`).

    Raises:
        CheckpointError: no such checkpoint or ONNX file, or one that is not one.
        ValueError: an MLflow URI that cannot be resolved.
    """
    if ref.lower().endswith(".onnx"):
        from ferpipe.export import load_onnx_classifier

        return load_onnx_classifier(ref)
    if not re.match(r"^(models|runs):/", ref):
        return Classifier.from_checkpoint(ref)
    import mlflow

    from ferpipe import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
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


def expand(paths: list[str]) -> Iterator[Path]:
    """Files named on the command line, and the image files of folders (recursively, sorted)."""
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def draw(rgb: np.ndarray, predictions: list[Prediction]) -> np.ndarray:
    """A copy of `rgb` (uint8 (H, W, 3)) with each prediction's box and label drawn; the label's
    text is at least about 3% of the image's longer side tall (15 pixels on a 512-pixel photo)
    and grows with the box."""
    cv2 = _cv2()
    canvas = np.ascontiguousarray(rgb.copy())
    side = max(canvas.shape[:2])
    thick = max(1, round(side / 300))
    for p in predictions:
        x, y, w, h = p.box
        colour = (255, 200, 0) if p.whole_image else (0, 220, 0)
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), colour, thick)
        label = f"{p.expression} {p.probability:.0%}"
        scale = max(0.4, w / 250, side / 700)  # Hershey simplex: ~22 pixels tall at scale 1
        text_thick = max(thick, round(scale * 2))
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, text_thick)
        ty = y - 4 if y - th - base - 4 >= 0 else y + h + th + 4
        cv2.rectangle(canvas, (x, ty - th - base), (x + tw, ty + base), colour, cv2.FILLED)
        cv2.putText(canvas, label, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    text_thick, cv2.LINE_AA)
    return canvas


def annotate(rgb: np.ndarray, predictions: list[Prediction], dest: Path) -> None:
    """Write `rgb` (uint8 (H, W, 3)) with each prediction's box and label drawn, to `dest` (PNG)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw(rgb, predictions)).save(dest, format="PNG")


def table_line(p: Prediction, names: list[str]) -> str:
    """One tab-separated table row: file, face, box, expression, probability, all classes."""
    box = f"{p.box[0]},{p.box[1]} {p.box[2]}x{p.box[3]}"
    flag = " (whole image)" if p.whole_image else ""
    probs = " ".join(f"{p.probabilities[n]:.3f}" for n in names)
    return f"{p.file}\t{p.face}\t{box}\t{p.expression}{flag}\t{p.probability:.3f}\t{probs}"


def _bounded(kind: type, low: float, high: float | None = None):
    """An argparse type: a `kind` number in [low, high] (high None: no upper bound)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low <= value and (high is None or value <= high)):
            upper = f" and {high}" if high is not None else " or more"
            raise argparse.ArgumentTypeError(f"expected {low}{upper}, got {text}")
        return value
    return parse


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


def open_video(source: Path | int):
    """An opened `cv2.VideoCapture` of a video file or a webcam index.

    OpenCV's and FFmpeg's own log lines are silenced (the caller reports the one reason).

    Raises:
        ValueError: a missing file, not a regular file, or one OpenCV cannot open as a video; a
            webcam index that cannot be opened.
    """
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "0")  # read when the first capture opens
    cv2 = _cv2()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    if isinstance(source, Path):
        if not source.exists():
            raise ValueError("no such file")
        if not source.is_file():
            raise ValueError("not a regular file")
    cap = cv2.VideoCapture(str(source) if isinstance(source, Path) else source)
    if not cap.isOpened():
        raise ValueError(f"cannot open camera {source}" if isinstance(source, int)
                         else "cannot decode video")
    return cap


@dataclass
class FramePrediction:
    """One face of one video frame (file, frame index, time in seconds, the face), or a
    classified frame in which no face was found (`prediction` None)."""

    file: str
    frame: int
    time_s: float
    prediction: Prediction | None

    def as_dict(self) -> dict[str, Any]:
        """The JSON line: file, frame, time_s, then face, box, expression, probability and
        probabilities (all None for a frame without a face)."""
        if self.prediction is None:
            face = dict.fromkeys(("face", "box", "expression", "probability", "probabilities"))
        else:
            face = self.prediction.as_dict()
            del face["file"], face["whole_image"]
        return {"file": self.file, "frame": self.frame, "time_s": round(self.time_s, 3), **face}


def predict_video(predictor: Predictor, source: Path | int,
                  emit: Callable[[FramePrediction], None], every: int = 1,
                  max_frames: int | None = None, annotate_dir: Path | None = None) -> int:
    """Classify the faces of every `every`-th frame of a video file or webcam, calling `emit`
    for each face as soon as its frame is done (once with `prediction` None for a classified
    frame without a face).

    Time of a frame: index / the file's frame rate (seconds); a webcam's (or a file without a
    frame rate): seconds since the first frame. With `annotate_dir`, every frame read is
    written, the latest frame's boxes drawn, to `<annotate_dir>/<stem>.annotated.mp4` (`webcam<N>`
    for a webcam; mp4v, the source's frame rate or 30), through a temporary name, so a failed
    or interrupted file leaves none. Ctrl-C ends a webcam normally; it interrupts a file.
    Progress (frames) goes to stderr when it is a terminal.

    Returns:
        The number of frames read.

    Raises:
        ValueError: the video or webcam cannot be opened, or gives no frame (nothing emitted).
        OSError: the annotated video cannot be written.
        KeyboardInterrupt: Ctrl-C while reading a file.
    """
    from tqdm import tqdm

    cv2, live = _cv2(), isinstance(source, int)
    name = f"webcam:{source}" if live else str(source)
    cap = open_video(source)
    writer = tmp = None
    done = False
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        total = 0 if live else max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        if total and max_frames:
            total = min(total, max_frames)
        ok, frame = cap.read()
        if not ok:
            raise ValueError("the camera gave no frame" if live
                             else "cannot decode video: no frame could be read")
        if annotate_dir is not None:
            stem = f"webcam{source}" if live else source.stem
            dest = annotate_dir / f"{stem}.annotated.mp4"
            tmp = dest.with_name(f".{stem}.annotated.partial.mp4")
            annotate_dir.mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"),
                                     fps if fps > 0 else 30.0, (frame.shape[1], frame.shape[0]))
            if not writer.isOpened():
                raise OSError(f"{dest}: cannot open an mp4v video writer")
        start, index, latest = time.perf_counter(), 0, []
        with tqdm(total=total or None, unit="frame", desc=name, file=sys.stderr,
                  disable=None) as bar:
            try:
                while ok:
                    if index == 0:  # live times count from the first frame read
                        start = time.perf_counter()
                    seconds = index / fps if fps > 0 and not live else time.perf_counter() - start
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    if index % every == 0:
                        gray = np.asarray(to_gray(Image.fromarray(rgb)))
                        latest = predictor.predict_image(gray, name, fallback=False)
                        for p in latest or [None]:
                            emit(FramePrediction(name, index, seconds, p))
                    if writer is not None:
                        writer.write(cv2.cvtColor(draw(rgb, latest), cv2.COLOR_RGB2BGR))
                    index += 1
                    bar.update()
                    if max_frames and index >= max_frames:
                        break
                    ok, frame = cap.read()
            except KeyboardInterrupt:
                if not live:
                    raise
        done = True
    finally:
        cap.release()
        if writer is not None:
            writer.release()
            if done:
                tmp.replace(dest)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return index


def csv_header(names: list[str]) -> list[str]:
    """The columns of the video CSV: file, frame, time_s, face, x, y, w, h (pixels),
    expression, probability, then one probability column per class."""
    return ["file", "frame", "time_s", "face", "x", "y", "w", "h", "expression",
            "probability", *names]


def csv_row(fp: FramePrediction, names: list[str]) -> list[Any]:
    """One row of the video CSV (see `csv_header`); a frame without a face has its file, frame
    and time, and empty cells after them."""
    p = fp.prediction
    if p is None:
        return [fp.file, fp.frame, f"{fp.time_s:.3f}", *[""] * (len(csv_header(names)) - 3)]
    return [fp.file, fp.frame, f"{fp.time_s:.3f}", p.face, *p.box, p.expression,
            f"{p.probability:.4f}", *(f"{p.probabilities[n]:.4f}" for n in names)]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Help with the description as written and every option's default shown."""


def build_parser() -> argparse.ArgumentParser:
    """The `ferpipe-predict` command line."""
    parser = argparse.ArgumentParser(
        prog="ferpipe-predict", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
        epilog="examples:\n  ferpipe-predict photo.jpg\n"
               "  ferpipe-predict photos/ --json --annotate annotated/\n"
               "  ferpipe-predict photo.jpg --model models:/fer2013-resnet18@candidate\n"
               "  ferpipe-predict photo.jpg --model model.onnx\n"
               "  ferpipe-predict clip.mp4 --every 5 --annotate annotated/ > clip.csv\n"
               "  ferpipe-predict --webcam 0 --max-frames 300 --json")
    parser.add_argument("paths", nargs="*", default=argparse.SUPPRESS,
                        help="image files, video files (" + " ".join(sorted(VIDEO_SUFFIXES))
                             + ") or folders (their images); none with --webcam")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="checkpoint file, ONNX file (.onnx, run with onnxruntime), or MLflow "
                             "URI models:/<name>@<alias>, models:/<name>/<version>, runs:/<run_id>")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line, instead of a table (images) or CSV "
                             "(videos)")
    parser.add_argument("--annotate", metavar="DIR", type=Path, default=None,
                        help="write copies of the images (PNG) and videos (<stem>.annotated.mp4) "
                             "with boxes and labels to DIR (default %(default)s: no copies)")
    parser.add_argument("--tta", choices=TTA_MODES, default=DEFAULT_TTA,
                        help="test-time augmentation; hflip is what the evaluate stage uses "
                             "(evaluate.tta, chosen on val) for the README's test accuracy")
    parser.add_argument("--tta-crop", type=_bounded(int, 1), default=None,
                        help="ten-crop side, pixels, at most the model's image size (default "
                             "%(default)s: the model's training crop, or 44 for a model trained "
                             "on whole images)")
    parser.add_argument("--margin", type=_bounded(float, 0.0, 2.0), default=0.1,
                        help="added around each face box on every side, fraction of its side")
    parser.add_argument("--min-face", type=_bounded(float, 0.0, 1.0), default=0.15,
                        help="smallest face searched, fraction of the image's shorter side")
    parser.add_argument("--max-side", type=_bounded(int, 0), default=320,
                        help="search faces on a copy downscaled to this many pixels (longer "
                             "side; 0: full size)")
    parser.add_argument("--small-faces", type=_bounded(int, 0), default=1600, metavar="SIDE",
                        help="when that finds no face, search again on a copy of at most SIDE "
                             "pixels for faces down to 24 pixels (group photos; 0: the full "
                             "size)")
    parser.add_argument("--timing", action="store_true",
                        help="also print the milliseconds per image file (model already loaded)")
    parser.add_argument("--webcam", metavar="INDEX", type=_bounded(int, 0), default=None,
                        help="read the webcam with this OpenCV index instead of files (default "
                             "%(default)s: no webcam)")
    parser.add_argument("--every", metavar="N", type=_bounded(int, 1), default=1,
                        help="classify every N-th video frame")
    parser.add_argument("--max-frames", metavar="N", type=_bounded(int, 1), default=None,
                        help="stop a video or the webcam after N frames (default %(default)s: "
                             "the end of the file; Ctrl-C for the webcam)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `ferpipe-predict` command; returns the exit status (0, 1 when a file or the webcam
    could not be read, 2 for a usage or model error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    paths = getattr(args, "paths", [])
    if args.webcam is not None and paths:
        parser.error("--webcam: give no files with it")
    if args.webcam is None and not paths:
        parser.error("give image or video files or folders, or --webcam INDEX")
    if args.annotate is not None and args.annotate.exists() and not args.annotate.is_dir():
        parser.error(f"--annotate: {args.annotate} exists and is not a folder")
    files = list(expand(paths))
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    if videos and len(videos) < len(files) and not args.json:
        parser.error("images and videos in one call need --json (the image table and the "
                     "video CSV have different columns)")

    try:
        detector = FaceDetector(min_size=args.min_face, max_side=args.max_side,
                                small_side=args.small_faces)
        predictor = Predictor(load_classifier(args.model), detector,
                              margin=args.margin, tta=args.tta, tta_crop=args.tta_crop)
    except (OSError, ValueError, RuntimeError, FerpipeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.tta_crop is not None and args.tta_crop > predictor.classifier.image_size:
        parser.error(f"--tta-crop: {args.tta_crop} pixels is larger than the model's "
                     f"{predictor.classifier.image_size}-pixel input")
    names = predictor.classifier.class_names
    if args.webcam is not None or (videos and len(videos) == len(files)):
        return run_videos(predictor, [args.webcam] if args.webcam is not None else files, args)
    if not args.json:
        print("file\tface\tbox (x,y w x h)\texpression\tprob\t" + " ".join(names))
    failed = 0
    for path in files:
        if path.suffix.lower() in VIDEO_SUFFIXES:  # with --json, among images
            code = run_videos(predictor, [path], args)
            if code > 1:
                return code
            failed += code
            continue
        start = time.perf_counter()
        try:
            rgb, gray = read_image(path)
        except ValueError as err:
            failed += 1
            reason = str(err)
            print(json.dumps({"file": str(path), "error": reason}) if args.json
                  else f"{path}\terror: {reason}", flush=True)
            continue
        predictions = predictor.predict_image(gray, str(path))
        ms = (time.perf_counter() - start) * 1000
        for p in predictions:
            if args.json:
                print(json.dumps({**p.as_dict(), **({"ms": round(ms, 1)} if args.timing else {})}))
            else:
                print(table_line(p, names) + (f"\t{ms:.1f} ms" if args.timing else ""))
        if args.annotate:
            try:
                annotate(rgb, predictions, args.annotate / f"{path.stem}.png")
            except OSError as err:
                print(f"error: {args.annotate}: cannot write: {err.strerror or err}",
                      file=sys.stderr)
                return 2
        sys.stdout.flush()
    return 1 if failed else 0


def run_videos(predictor: Predictor, sources: list[Path | int], args: argparse.Namespace) -> int:
    """Predict on video files or a webcam index, printing CSV (with a header, once a source could
    be read) or JSON lines; a source that cannot be read gets one error line (stderr for CSV, a
    JSON object with `error` for a file with --json) and the others go on. Returns 0, 1 when
    some source could not be read, 2 when an annotated video could not be written, 130 on
    Ctrl-C during a file."""
    names = predictor.classifier.class_names
    writer = csv.writer(sys.stdout, lineterminator="\n")
    header = [not args.json]  # still to print: before the first row, or after the first source

    def emit(fp: FramePrediction | None) -> None:
        if header[0]:
            writer.writerow(csv_header(names))
            header[0] = False
        if fp is not None:
            if args.json:
                print(json.dumps(fp.as_dict()))
            else:
                writer.writerow(csv_row(fp, names))
        sys.stdout.flush()

    failed = 0
    for source in sources:
        label = f"--webcam {source}" if isinstance(source, int) else str(source)
        try:
            predict_video(predictor, source, emit, args.every, args.max_frames, args.annotate)
            emit(None)  # the CSV header, if Ctrl-C stopped a webcam before its first row
        except ValueError as err:
            failed += 1
            if args.json and not isinstance(source, int):
                print(json.dumps({"file": str(source), "error": str(err)}), flush=True)
            else:
                print(f"error: {label}: {err}", file=sys.stderr)
        except OSError as err:
            print(f"error: --annotate: cannot write: {err.strerror or err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"error: {label}: interrupted", file=sys.stderr)
            return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
