"""Finding and cropping faces: OpenCV's bundled frontal-face Haar cascade
(`haarcascade_frontalface_default.xml`, Viola & Jones 2001, shipped with opencv-python-headless
4.x) in two passes, and the square crop with a margin that the classifier is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def opencv():
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
        cv2 = opencv()
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
        cv2 = opencv()
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
    cv2 = opencv()
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
