"""Faces as the detectors report them (`Face`: a box, and 5 landmarks where the detector gives
them), one box per face (`remove_nested`), and the crop the classifier is given: a square around
the box with a margin (`crop_face`), rotated first so the eyes are level when the landmarks are
known (`align_face`)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: (x, y, w, h) pixels of the searched image (may reach past its border).
        landmarks: float32 (5, 2) (x, y) pixels, in libfacedetection's order: the eye on the
            image's left, the eye on its right, the nose tip, the mouth corner on the left, the
            one on the right; None where the detector gives none (Haar).
        score: the detector's confidence (libfacedetection: 0-100), None for Haar.
        roll: the face's in-plane rotation, degrees, positive when the image-right eye is lower
            (`eye_angle` of the landmarks, refined by the detector); None without landmarks.
    """

    box: tuple[int, int, int, int]
    landmarks: np.ndarray | None = None
    score: float | None = None
    roll: float | None = None


def remove_nested(faces: list[Face], overlap: float = 0.5) -> list[Face]:
    """One box per face: drops every box that has more than `overlap` of its area inside a
    larger kept box (an eye or a cheek found as a second face), largest first.

    Args:
        faces: in any order. overlap: share of the smaller box's area, in (0, 1].

    Returns:
        The kept faces, largest box first.
    """
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: -f.box[2] * f.box[3]):
        x, y, w, h = face.box
        area = max(w * h, 1)
        if all(_intersection(face.box, other.box) <= overlap * area for other in kept):
            kept.append(face)
    return kept


def _intersection(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Pixels shared by two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(width, 0) * max(height, 0)


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


def eye_angle(landmarks: np.ndarray) -> float:
    """The angle of the line from the image-left eye to the image-right eye, degrees, positive
    when the right one is lower (y grows downwards): the face's roll.

    Args:
        landmarks: (5, 2) (x, y) pixels, the two eyes first (`Face.landmarks`).
    """
    (x0, y0), (x1, y1) = landmarks[0], landmarks[1]
    return float(np.degrees(np.arctan2(y1 - y0, x1 - x0)))


def align_face(gray: np.ndarray, face: Face, margin: float, size: int) -> np.ndarray:
    """`crop_face`'s square, rotated about the box's centre so the eyes are level (the face's
    `roll` undone, as FER2013's faces are roughly upright); without a roll (Haar), `crop_face`
    itself.

    The rotation and crop are one affine warp (bilinear) to at most 4 x `size` pixels, then an
    area resize to `size`, so a large face is not aliased; parts outside the image are filled by
    replicating the border, as in `crop_face`.

    Args:
        gray: uint8 (H, W). face: its box and landmarks. margin: fraction of the box's longer
            side added on every side. size: output side, pixels.

    Returns:
        uint8 (size, size).
    """
    if face.roll is None:
        return crop_face(gray, face.box, margin, size)
    x, y, w, h = face.box
    side = max(w, h) * (1 + 2 * margin)
    work = int(min(max(round(side), size), 4 * size))
    crop = rotated_square(gray, (x + w / 2, y + h / 2), side, face.roll, work)
    if work == size:
        return crop
    return opencv().resize(crop, (size, size), interpolation=opencv().INTER_AREA)


def rotated_square(gray: np.ndarray, centre: tuple[float, float], side: float, angle: float,
                   out: int) -> np.ndarray:
    """The square of `side` pixels centred on `centre` (x, y), rotated by `angle` degrees
    counter-clockwise (OpenCV's convention) so a face rolled by `angle` comes out level,
    resampled (bilinear) to `out` x `out` pixels; the border replicated outside `gray`.

    Args:
        gray: uint8 (H, W). Returns: uint8 (out, out).
    """
    cv2 = opencv()
    matrix = cv2.getRotationMatrix2D(centre, angle, out / side)
    matrix[:, 2] += (out / 2 - centre[0], out / 2 - centre[1])
    return cv2.warpAffine(gray, matrix, (out, out), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
