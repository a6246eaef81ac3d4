"""A model's calibration temperature: one for every prediction (temperature scaling, Guo et al.,
"On Calibration of Modern Neural Networks", ICML 2017) or one per predicted class (class-based
temperature scaling, Frenkel & Goldberger, EUSIPCO 2021), how it is applied to probabilities,
written into records and metadata, and read back.

Both kinds divide a row's log-probabilities by one positive number, so the argmax, and the
accuracy, never change. The per-class kind picks that number by the row's predicted class.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
from scipy.special import log_softmax

#: A float (every row) or one float per class (the row's predicted class picks it).
Temperature = float | tuple[float, ...]


def as_temperature(value: object) -> Temperature | None:
    """A temperature from a record's JSON value or an ONNX metadata string: a positive number, or
    a non-empty list of positive numbers (a string is parsed as JSON first); None for anything
    else (missing, malformed, zero, negative, not finite)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value > 0 else None
    if isinstance(value, Sequence) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v > 0 for v in value):
        return tuple(float(v) for v in value)
    return None


def row_temperatures(scores: np.ndarray, temperature: Temperature) -> np.ndarray:
    """float64 (N, 1) divisors of float (N, C) scores (logits or log-probabilities): the one
    temperature, or each row's predicted class's.

    Raises:
        ValueError: a per-class temperature whose length is not C.
    """
    if not isinstance(temperature, tuple):
        return np.full((len(scores), 1), float(temperature))
    if len(temperature) != scores.shape[1]:
        raise ValueError(f"a per-class temperature needs one value per class: got "
                         f"{len(temperature)} for {scores.shape[1]} classes")
    return np.asarray(temperature, np.float64)[np.asarray(scores).argmax(axis=1)][:, None]


def scaled(logits: np.ndarray, temperature: Temperature) -> np.ndarray:
    """float64 (N, C) probabilities `softmax(logits / T)` of float (N, C) scores (logits or
    log-probabilities), T the temperature or, for a per-class one, the row's predicted class's.

    Raises:
        ValueError: a per-class temperature whose length is not C.
    """
    logits = np.asarray(logits, np.float64)
    return np.exp(log_softmax(logits / row_temperatures(logits, temperature), axis=1))


def calibrate(probs: np.ndarray, temperature: Temperature) -> np.ndarray:
    """Calibrated probabilities: `scaled(log(probs), T)`, float32 (N, C) from float (N, C)
    probabilities. A temperature of 1 returns `probs` unchanged; the argmax never changes.

    Raises:
        ValueError: a per-class temperature whose length is not C.
    """
    if temperature == 1.0:
        return probs
    return scaled(np.log(np.clip(np.asarray(probs, np.float64), 1e-30, None)),
                  temperature).astype(np.float32)


def to_record(temperature: Temperature) -> float | list[float]:
    """The JSON value of a temperature (records, `eval.json`)."""
    return list(temperature) if isinstance(temperature, tuple) else float(temperature)


def to_text(temperature: Temperature) -> str:
    """A temperature as one string that `as_temperature` reads back (ONNX metadata, MLflow params
    and tags): `0.62` or `[0.671, 1.072, ...]`."""
    return json.dumps(to_record(temperature))


def describe(temperature: Temperature, names: Sequence[str] | None = None) -> str:
    """A temperature for people: `0.620`, or `per predicted class: angry 0.671, ...` (class
    indices when no names are given)."""
    if not isinstance(temperature, tuple):
        return f"{temperature:.3f}"
    labels = names if names is not None and len(names) == len(temperature) else \
        [str(i) for i in range(len(temperature))]
    return "per predicted class: " + ", ".join(f"{n} {t:.3f}"
                                               for n, t in zip(labels, temperature))
