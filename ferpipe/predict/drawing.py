"""Boxes and labels drawn on a photo or video frame (OpenCV's Hershey font)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ferpipe.predict.faces import opencv
from ferpipe.predict.predictor import Prediction


def draw(rgb: np.ndarray, predictions: list[Prediction]) -> np.ndarray:
    """A copy of `rgb` (uint8 (H, W, 3)) with each prediction's box and label drawn; the label's
    text is at least about 3% of the image's longer side tall (15 pixels on a 512-pixel photo)
    and grows with the box."""
    cv2 = opencv()
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
