"""OpenCV's bundled frontal-face Haar cascade (`haarcascade_frontalface_default.xml`, Viola &
Jones 2001, shipped with opencv-python-headless 4.x) in two passes: the fallback detector where
the CNN detector (`ferpipe.predict.yunet`) is not installed, and `--detector haar`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferpipe.predict.faces import Face, opencv, remove_nested


class HaarDetector:
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
    Boxes inside a larger face's box (an eye or a cheek found as a face) are dropped.

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

    name = "haar"

    def detect(self, gray: np.ndarray) -> list[Face]:
        """The faces of `gray` (uint8 (H, W)), boxes (x, y, w, h) in its pixels, no landmarks,
        largest first, no box inside another's; none for an image with a side shorter than the
        cascade's 24-pixel window (a 5000 x 1 strip, say), which holds no face it could find."""
        boxes = self._search(gray, self.max_side, lambda small: max(20, int(self.min_size
                                                                            * small)))
        if not boxes and self.small_side is not None:
            boxes = self._search(gray, self.small_side, lambda small: self.min_pixels)
        return remove_nested([Face(box) for box in boxes])

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

