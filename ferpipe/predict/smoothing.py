"""Steady labels in videos: each face followed from frame to frame by the overlap of its boxes,
and its class probabilities averaged over time with an exponential time constant in seconds, so
that one odd frame does not flip its label.

A face in a new frame continues the track whose last box overlaps it most (intersection over
union at least `MIN_IOU`; each track and each face matched once, best overlap first), else it
starts a new track. A track not matched for more than `FORGET_S` seconds ends. A track's
probabilities after a frame `dt` seconds after its previous one are
`s + w (p - s)`, with `w = 1 - exp(-dt / tau)`: a frame's weight decays by e every `tau`
seconds, whatever the frame rate or `--every`. `tau` 0 is off (the smoothed probabilities are
the frame's own; tracks are still followed). This module imports only NumPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The time constant `ferpipe-predict` smooths videos and the webcam with, seconds.
DEFAULT_SMOOTH_S = 0.5
#: The least intersection over union of a face's box and a track's last box that continues it.
MIN_IOU = 0.3
#: Seconds after its last match that a track not matched again ends.
FORGET_S = 1.0
#: What a time constant must be: the end of every refusal.
TIME_CONSTANT_EXPECTED = "expected a finite number of seconds >= 0 (0: off)"

Box = tuple[int, int, int, int]


def check_time_constant(value: float) -> float:
    """A smoothing time constant in seconds as a float: finite and >= 0 (0: off).

    Raises:
        ValueError: negative, infinite or NaN, as one line
            `got <value>; expected a finite number of seconds >= 0 (0: off)`.
    """
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"got {value}; {TIME_CONSTANT_EXPECTED}")
    return number


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x, y, w, h pixels): 0 (apart) to 1 (the same box);
    0 when either has no area."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 and inter > 0 else 0.0


def match_boxes(previous: list[Box], current: list[Box], min_iou: float = MIN_IOU
                ) -> dict[int, int]:
    """{index in `current`: index in `previous`} for the pairs that continue each other: the
    pair with the largest IoU first, then the largest of the rest, each box used once, pairs
    below `min_iou` never (ties: the earlier box)."""
    overlaps = [(iou(p, c), i, j) for i, p in enumerate(previous) for j, c in enumerate(current)]
    overlaps.sort(key=lambda pair: -pair[0])  # stable: equal overlaps stay in box order
    matched: dict[int, int] = {}
    for overlap, i, j in overlaps:
        if overlap < min_iou:
            break
        if j not in matched and i not in matched.values():
            matched[j] = i
    return matched


@dataclass
class Track:
    """One face followed over frames: its id, last box and time (seconds), and its smoothed
    probabilities, float64 (n_classes,), summing to 1 as the frames' do."""

    id: int
    box: Box
    time_s: float
    probabilities: np.ndarray


class FaceSmoother:
    """Tracks of the faces of one video or webcam, updated one classified frame at a time; see
    the module docstring.

    Args:
        time_constant_s: tau, seconds (0: off).
        min_iou: the least overlap that continues a track, in (0, 1].
        forget_s: seconds without a match after which a track ends, >= 0.

    Raises:
        ValueError: a time constant that is negative, infinite or NaN; `min_iou` outside (0, 1];
            a negative `forget_s`.
    """

    def __init__(self, time_constant_s: float = DEFAULT_SMOOTH_S, min_iou: float = MIN_IOU,
                 forget_s: float = FORGET_S):
        self.time_constant_s = check_time_constant(time_constant_s)
        if not 0 < min_iou <= 1:
            raise ValueError(f"min_iou: got {min_iou}; expected a number in (0, 1]")
        if not forget_s >= 0:
            raise ValueError(f"forget_s: got {forget_s}; expected a number of seconds >= 0")
        self.min_iou, self.forget_s = min_iou, forget_s
        self.tracks: list[Track] = []
        self.next_id = 0

    def weight(self, dt_s: float) -> float:
        """The weight of a frame `dt_s` seconds after the track's previous one: 1 - exp(-dt/tau),
        1 when smoothing is off, 0 for dt <= 0 (a frame at the same time adds nothing)."""
        if self.time_constant_s == 0:
            return 1.0
        return -math.expm1(-max(0.0, dt_s) / self.time_constant_s)

    def update(self, time_s: float, boxes: list[Box], probabilities: np.ndarray
               ) -> list[tuple[int, np.ndarray]]:
        """Follow one classified frame's faces.

        Args:
            time_s: the frame's time, seconds (increasing from frame to frame).
            boxes: each face's box (x, y, w, h pixels); none for a frame without a face.
            probabilities: float (len(boxes), n_classes), each face's class probabilities.

        Returns:
            For each face in order, (its track id, its smoothed probabilities, float64
            (n_classes,)); a new track's are the frame's own.

        Raises:
            ValueError: `probabilities` does not have one row per box.
        """
        probs = np.asarray(probabilities, np.float64)
        if probs.shape[:1] != (len(boxes),) or (boxes and probs.ndim != 2):
            raise ValueError(f"probabilities: got shape {probs.shape}; expected one row per "
                             f"box ({len(boxes)})")
        matched = match_boxes([t.box for t in self.tracks], boxes, self.min_iou)
        out, seen = [], set()
        for j, (box, p) in enumerate(zip(boxes, probs)):
            if j in matched:
                track = self.tracks[matched[j]]
                w = self.weight(time_s - track.time_s)
                track.probabilities = track.probabilities + w * (p - track.probabilities)
                track.box, track.time_s = tuple(box), time_s
            else:
                track = Track(self.next_id, tuple(box), time_s, p.copy())
                self.tracks.append(track)
                self.next_id += 1
            seen.add(track.id)
            out.append((track.id, track.probabilities.copy()))
        self.tracks = [t for t in self.tracks
                       if t.id in seen or time_s - t.time_s <= self.forget_s]
        return out
