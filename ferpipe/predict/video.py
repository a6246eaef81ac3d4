"""Expressions in videos and webcams: frames read with OpenCV, every `every`-th one's faces
classified by a `Predictor`, each face followed over frames and its probabilities smoothed
(`ferpipe.predict.smoothing`), one record per face (CSV or JSON lines), and the annotated copy."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ferpipe.data.decode import to_gray
from ferpipe.predict.drawing import draw
from ferpipe.predict.faces import opencv
from ferpipe.predict.predictor import Prediction, Predictor
from ferpipe.predict.smoothing import DEFAULT_SMOOTH_S, FaceSmoother

#: Files read as videos (by suffix); a folder argument yields images only.
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def open_video(source: Path | int):
    """An opened `cv2.VideoCapture` of a video file or a webcam index.

    OpenCV's and FFmpeg's own log lines are silenced (the caller reports the one reason).

    Raises:
        ValueError: a missing file, not a regular file, or one OpenCV cannot open as a video; a
            webcam index that cannot be opened.
    """
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "0")  # read when the first capture opens
    cv2 = opencv()
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
    classified frame in which no face was found (`prediction` None).

    Attributes:
        track: the face's track id (the same face in other frames has the same id; from 0 per
            video); None without a face.
        smoothed: its probabilities averaged over the track's frames, {class: probability}
            (the frame's own when smoothing is off); None without a face.
    """

    file: str
    frame: int
    time_s: float
    prediction: Prediction | None
    track: int | None = None
    smoothed: dict[str, float] | None = None

    @property
    def smoothed_expression(self) -> str | None:
        """The class with the largest smoothed probability (None without them)."""
        return max(self.smoothed, key=self.smoothed.get) if self.smoothed else None

    @property
    def smoothed_probability(self) -> float | None:
        """The smoothed probability of `smoothed_expression` (None without them)."""
        return self.smoothed[self.smoothed_expression] if self.smoothed else None

    def as_dict(self) -> dict[str, Any]:
        """The JSON line: file, frame, time_s, then face, box, expression, probability,
        probabilities, track, smoothed_expression, smoothed_probability and
        smoothed_probabilities (all None for a frame without a face)."""
        if self.prediction is None:
            face = dict.fromkeys(("face", "box", "expression", "probability", "probabilities"))
        else:
            face = self.prediction.as_dict()
            del face["file"], face["whole_image"]
        return {"file": self.file, "frame": self.frame, "time_s": round(self.time_s, 3), **face,
                "track": self.track, "smoothed_expression": self.smoothed_expression,
                "smoothed_probability": self.smoothed_probability,
                "smoothed_probabilities": self.smoothed}


def follow(smoother: FaceSmoother, time_s: float, predictions: list[Prediction]
           ) -> list[tuple[int, dict[str, float]]]:
    """(track id, smoothed {class: probability}) of each of one frame's faces, in order, from
    `smoother` (updated with them)."""
    if not predictions:
        smoother.update(time_s, [], np.zeros((0, 0)))
        return []
    names = list(predictions[0].probabilities)
    probs = np.array([[p.probabilities[n] for n in names] for p in predictions])
    tracks = smoother.update(time_s, [p.box for p in predictions], probs)
    return [(track, {n: float(v) for n, v in zip(names, smoothed)}) for track, smoothed in tracks]


def predict_video(predictor: Predictor, source: Path | int,
                  emit: Callable[[FramePrediction], None], every: int = 1,
                  max_frames: int | None = None, annotate_dir: Path | None = None,
                  smooth_s: float = DEFAULT_SMOOTH_S) -> int:
    """Classify the faces of every `every`-th frame of a video file or webcam, calling `emit`
    for each face as soon as its frame is done (once with `prediction` None for a classified
    frame without a face). Each face is followed over the classified frames and its
    probabilities averaged with time constant `smooth_s` seconds (`FramePrediction.track` and
    `.smoothed`; 0: off, the smoothed probabilities are the frame's own).

    Time of a frame: index / the file's frame rate (seconds); a webcam's (or a file without a
    frame rate): seconds since the first frame. With `annotate_dir`, every frame read is
    written, the latest frame's boxes drawn (with the smoothed labels when `smooth_s` > 0), to
    `<annotate_dir>/<stem>.annotated.mp4` (`webcam<N>` for a webcam; mp4v, the source's frame
    rate or 30), through a temporary name, so a failed or interrupted file leaves none. Ctrl-C
    ends a webcam normally; it interrupts a file. Progress (frames) goes to stderr when it is a
    terminal.

    Returns:
        The number of frames read.

    Raises:
        ValueError: the video or webcam cannot be opened, or gives no frame (nothing emitted);
            `smooth_s` negative, infinite or NaN (before anything is opened).
        OSError: the annotated video cannot be written.
        KeyboardInterrupt: Ctrl-C while reading a file.
    """
    from tqdm import tqdm

    smoother = FaceSmoother(smooth_s)
    cv2, live = opencv(), isinstance(source, int)
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
                        tracks = follow(smoother, seconds, latest)
                        for p, (track, smoothed) in zip(latest, tracks):
                            emit(FramePrediction(name, index, seconds, p, track, smoothed))
                        if not latest:
                            emit(FramePrediction(name, index, seconds, None))
                        if smooth_s > 0:  # the annotated video shows the steady label
                            latest = [replace(p, expression=max(s, key=s.get),
                                              probability=max(s.values()))
                                      for p, (_, s) in zip(latest, tracks)]
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
    expression, probability, one probability column per class, then track,
    smoothed_expression and smoothed_probability."""
    return ["file", "frame", "time_s", "face", "x", "y", "w", "h", "expression",
            "probability", *names, "track", "smoothed_expression", "smoothed_probability"]


def csv_row(fp: FramePrediction, names: list[str]) -> list[Any]:
    """One row of the video CSV (see `csv_header`); a frame without a face has its file, frame
    and time, and empty cells after them."""
    p = fp.prediction
    if p is None:
        return [fp.file, fp.frame, f"{fp.time_s:.3f}", *[""] * (len(csv_header(names)) - 3)]
    smoothed = ["", "", ""] if fp.smoothed is None else [
        fp.track, fp.smoothed_expression, f"{fp.smoothed_probability:.4f}"]
    return [fp.file, fp.frame, f"{fp.time_s:.3f}", p.face, *p.box, p.expression,
            f"{p.probability:.4f}", *(f"{p.probabilities[n]:.4f}" for n in names), *smoothed]
