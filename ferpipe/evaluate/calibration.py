"""Calibrated probabilities fitted on val: temperature scaling (Guo et al., "On Calibration of
Modern Neural Networks", ICML 2017) and a temperature per predicted class (class-based temperature
scaling, Frenkel & Goldberger, EUSIPCO 2021; fitted here by NLL, as Guo et al. fit theirs), the
expected calibration error (ECE, equal-width confidence bins, as there: 15) and the reliability
diagram's bins."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from ferpipe.model.temperature import scaled  # applying a temperature: the model layer's

#: Confidence bins of the ECE and the reliability diagram (Guo et al. 2017 use 15).
BINS = 15
#: A class needs this many val images predicted as it for a temperature of its own; below, its
#: rows take the one temperature fitted on all of val.
MIN_CLASS_ROWS = 50
#: Bootstrap resamples of the test images for the calibrated ECE's 95% interval.
ECE_RESAMPLES = 1000
#: The temperatures searched, as log(T) bounds: T from 0.05 to 20.
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimizes the negative log-likelihood of
    `softmax(logits / T)` on `labels` (a bounded scalar search over log T, SciPy's Brent).

    Args:
        logits: float (N, C): logits or log-probabilities (after TTA and logit adjustment: the
            scores whose argmax is the prediction). labels: int (N,) in [0, C).

    Returns:
        T in [0.05, 20]: above 1 softens over-confident probabilities; the argmax is unchanged.

    Raises:
        ValueError: no samples, or logits and labels of different lengths.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if len(logits) == 0 or len(logits) != len(labels):
        raise ValueError(f"temperature scaling needs as many labels as rows of logits; got "
                         f"{len(logits)} rows and {len(labels)} labels")

    def nll(log_t: float) -> float:
        return -float(log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)),
                                                                   labels].mean())

    result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded",
                             options={"xatol": 1e-4})
    return float(np.exp(result.x))


def fit_class_temperatures(logits: np.ndarray, labels: np.ndarray,
                           min_rows: int = MIN_CLASS_ROWS) -> tuple[float, ...]:
    """One temperature per predicted class (`fit_temperature` on the rows whose argmax is that
    class); a class predicted for fewer than `min_rows` rows gets the temperature fitted on all
    rows. Dividing a row by a positive number keeps its argmax, so accuracy is unchanged.

    Args:
        logits: float (N, C) scores after TTA and logit adjustment. labels: int (N,) in [0, C).

    Returns:
        C temperatures, each in [0.05, 20].

    Raises:
        ValueError: no samples, or logits and labels of different lengths.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    overall = fit_temperature(logits, labels)
    predicted = logits.argmax(axis=1)
    return tuple(fit_temperature(logits[predicted == c], labels[predicted == c])
                 if (predicted == c).sum() >= min_rows else overall
                 for c in range(logits.shape[1]))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict]:
    """The reliability diagram's bins: equal-width bins of the top-class probability on (0, 1].

    Args:
        probs: float (N, C) probabilities. labels: int (N,).

    Returns:
        One dict per bin, in order: low and high edge, count, mean confidence and accuracy
        (None for an empty bin).
    """
    confidence = probs.max(1)
    correct = probs.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds confidences in (edges[i], edges[i + 1]]
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for i in range(bins):
        member = index == i
        count = int(member.sum())
        rows.append({"low": float(edges[i]), "high": float(edges[i + 1]), "count": count,
                     "confidence": float(confidence[member].mean()) if count else None,
                     "accuracy": float(correct[member].mean()) if count else None})
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS
                               ) -> float:
    """ECE: the count-weighted mean over `reliability`'s bins of |accuracy - confidence|
    (Naeini et al. 2015; Guo et al. 2017, eq. 3), a fraction in [0, 1].

    Args:
        probs: float (N, C) probabilities. labels: int (N,).
    """
    total = len(labels)
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"])
                     for row in reliability(probs, labels, bins) if row["count"]))


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood, in nats, of float (N, C) probabilities on int (N,) labels
    (probabilities clipped at 1e-12)."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def calibration_report(val_logits: np.ndarray, val_labels: np.ndarray,
                       test_logits: np.ndarray, test_labels: np.ndarray) -> dict:
    """The temperatures fitted on val, per predicted class (the one applied) and one for all,
    and what they do on val and test.

    Args:
        val_logits, test_logits: float (N, C) scores after TTA and logit adjustment.
        val_labels, test_labels: int (N,).

    Returns:
        {"temperature": C floats (per predicted class), "temperature_global": float, "bins",
         "val_ece", "val_ece_calibrated", "val_ece_global", "test_ece", "test_ece_calibrated",
         "test_ece_global", "test_ece_calibrated_interval": 95% bootstrap interval [low, high],
         "test_nll", "test_nll_calibrated", "test_nll_global", "reliability": {"test": bins
         before, "test_calibrated": bins after}}; ECE and NLL as fractions / nats.
    """
    temperature = fit_class_temperatures(val_logits, val_labels)
    overall = fit_temperature(val_logits, val_labels)
    report: dict = {"temperature": list(temperature), "temperature_global": overall,
                    "bins": BINS}
    test_probs = {}
    for split, logits, labels in (("val", val_logits, val_labels),
                                  ("test", test_logits, test_labels)):
        for suffix, t in (("", 1.0), ("_calibrated", temperature), ("_global", overall)):
            probs = scaled(logits, t)
            report[f"{split}_ece{suffix}"] = expected_calibration_error(probs, labels)
            if split == "test":
                report[f"test_nll{suffix}"] = negative_log_likelihood(probs, labels)
                test_probs[suffix] = probs
    report["test_ece_calibrated_interval"] = ece_interval(test_probs["_calibrated"], test_labels)
    report["reliability"] = {"test": reliability(test_probs[""], test_labels),
                             "test_calibrated": reliability(test_probs["_calibrated"],
                                                            test_labels)}
    return report


def ece_interval(probs: np.ndarray, labels: np.ndarray, resamples: int = ECE_RESAMPLES,
                 seed: int = 0) -> list[float]:
    """95% bootstrap interval [low, high] of `expected_calibration_error` over the images
    (resampled with replacement, `resamples` times): how far the ECE of this many images moves
    by chance.

    Args:
        probs: float (N, C) probabilities. labels: int (N,).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    values = [expected_calibration_error(probs[i], labels[i])
              for i in (rng.integers(0, len(labels), len(labels)) for _ in range(resamples))]
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]
