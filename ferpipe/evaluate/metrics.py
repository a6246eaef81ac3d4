"""Test-set metrics with scikit-learn: accuracy, balanced accuracy, macro/weighted F1, top-k accuracy,
per class; and their bootstrap confidence intervals with SciPy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import bootstrap
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)


def classification_metrics(logits: np.ndarray | torch.Tensor, labels: np.ndarray,
                           class_names: list[str]) -> dict[str, Any]:
    """Score logits against true labels.

    Args:
        logits: float (N, C) scores, C = len(class_names).
        labels: int64 (N,) true class indices.

    Returns:
        accuracy, balanced_accuracy (mean per-class recall), macro_f1, weighted_f1,
        top2_accuracy (fractions in [0, 1]), loss (mean
        cross-entropy, nats), n (images), and per_class: {name: {precision, recall, f1, support}}.
    """
    logits_t = torch.as_tensor(logits, dtype=torch.float32)
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    pred = logits_t.argmax(1).numpy()
    classes = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, pred, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=classes, average="macro",
                                   zero_division=0)),
        "weighted_f1": float(f1_score(labels, pred, labels=classes, average="weighted",
                                      zero_division=0)),
        "top2_accuracy": float(top_k_accuracy_score(labels, logits_t.numpy(), k=2,
                                                    labels=classes)),
        "loss": float(F.cross_entropy(logits_t, labels_t)),
        "n": int(len(labels)),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                             "support": int(s)}
                      for name, p, r, f, s in zip(class_names, precision, recall, f1, support)},
    }


def batched_accuracy(labels: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
    """Accuracy along `axis` of int arrays of one shape (..., N): float64 (...,). Equal to
    scikit-learn's `accuracy_score` on each 1-D slice (tested); what `confidence_intervals`
    computes on all bootstrap resamples at once."""
    return np.mean(np.asarray(labels) == np.asarray(pred), axis=axis)


def batched_macro_f1(labels: np.ndarray, pred: np.ndarray, n_classes: int, axis: int = -1
                     ) -> np.ndarray:
    """Macro-F1 over classes 0..n_classes-1 along `axis` of int arrays of one shape (..., N):
    float64 (...,). Per class F1 = 2 TP / (true count + predicted count), 0 where both are 0;
    equal to scikit-learn's `f1_score(..., labels=range(C), average="macro", zero_division=0)`
    on each 1-D slice (tested), without its per-call checks, which made 1,000 bootstrap
    resamples take seconds."""
    labels = np.moveaxis(np.asarray(labels), axis, -1)
    pred = np.moveaxis(np.asarray(pred), axis, -1)
    f1 = []
    for c in range(n_classes):
        true, guessed = labels == c, pred == c
        tp = np.sum(true & guessed, axis=-1)
        denominator = np.sum(true, axis=-1) + np.sum(guessed, axis=-1)
        f1.append(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0))
    return np.mean(f1, axis=0)


def confidence_intervals(labels: np.ndarray, pred: np.ndarray, n_classes: int,
                         confidence: float = 0.95, resamples: int = 1000,
                         seed: int = 0) -> dict[str, Any]:
    """Bootstrap confidence intervals of accuracy and macro-F1 over the scored images.

    The images are resampled with replacement `resamples` times (labels and predictions
    together: SciPy's `scipy.stats.bootstrap` with `paired=True`), the metric is recomputed on
    each resample, and the interval is the percentile one (Efron & Tibshirani 1993, "An
    Introduction to the Bootstrap", ch. 13). It measures how much the figure depends on which
    images happen to be in the test split, not the spread between training runs.

    Args:
        labels, pred: int64 (N,) true and predicted class indices, N >= 2.
        n_classes: C; macro-F1 averages over classes 0..C-1 (an absent class counts as F1 0,
            as in `classification_metrics`).
        confidence: the interval's level, in (0, 1).
        resamples: bootstrap resamples; the same seed gives the same resamples for both
            metrics, so the result is reproducible.

    Returns:
        {"confidence", "resamples", "seed", "method": "percentile",
         "accuracy": [low, high], "macro_f1": [low, high]} (fractions in [0, 1]).

    Raises:
        ValueError: labels and pred differ in length, or hold fewer than 2 images.
    """
    labels, pred = np.asarray(labels), np.asarray(pred)
    if labels.shape != pred.shape or labels.ndim != 1 or len(labels) < 2:
        raise ValueError(f"confidence_intervals: labels {labels.shape} and predictions "
                         f"{pred.shape} must be the same 1-D length of at least 2")
    statistics = {"accuracy": batched_accuracy,
                  "macro_f1": lambda y, p, axis=-1: batched_macro_f1(y, p, n_classes, axis)}
    out: dict[str, Any] = {"confidence": confidence, "resamples": resamples, "seed": seed,
                           "method": "percentile"}
    for name, statistic in statistics.items():
        result = bootstrap((labels, pred), statistic, paired=True, vectorized=True,
                           n_resamples=resamples, confidence_level=confidence,
                           method="percentile", rng=np.random.default_rng(seed))
        out[name] = [float(result.confidence_interval.low),
                     float(result.confidence_interval.high)]
    return out


def paired_gain_interval(labels: np.ndarray, reference: np.ndarray, candidate: np.ndarray,
                         confidence: float = 0.95, resamples: int = 1000, seed: int = 0
                         ) -> dict[str, Any]:
    """Bootstrap interval of the accuracy gain of `candidate` over `reference` on the same images.

    The images are resampled with replacement, the true labels and both predictions together
    (a paired bootstrap: `scipy.stats.bootstrap` with `paired=True`), so what the two settings
    share cancels out and only their disagreements count; the interval is the percentile one
    (Efron & Tibshirani 1993, ch. 13). A lower bound above 0 says the gain is not an accident of
    which images are in the split.

    Args:
        labels, reference, candidate: int64 (N,) true classes and the two settings'
            predictions, N >= 2.
        confidence, resamples, seed: as `confidence_intervals`.

    Returns:
        {"gain": accuracy(candidate) - accuracy(reference), "interval": [low, high] of that gain
         (fractions; accuracy points / 100), "confidence", "resamples", "seed"}.

    Raises:
        ValueError: the arrays differ in shape or hold fewer than 2 images.
    """
    labels, reference, candidate = (np.asarray(a) for a in (labels, reference, candidate))
    if not (labels.shape == reference.shape == candidate.shape) or labels.ndim != 1 \
            or len(labels) < 2:
        raise ValueError(f"paired_gain_interval: labels {labels.shape} and predictions "
                         f"{reference.shape}, {candidate.shape} must be the same 1-D length of "
                         f"at least 2")

    def gain(y, a, b, axis=-1):
        return batched_accuracy(y, b, axis) - batched_accuracy(y, a, axis)

    result = bootstrap((labels, reference, candidate), gain, paired=True, vectorized=True,
                       n_resamples=resamples, confidence_level=confidence, method="percentile",
                       rng=np.random.default_rng(seed))
    return {"gain": float(gain(labels, reference, candidate)),
            "interval": [float(result.confidence_interval.low),
                         float(result.confidence_interval.high)],
            "confidence": confidence, "resamples": resamples, "seed": seed}


def report_text(labels: np.ndarray, pred: np.ndarray, class_names: list[str]) -> str:
    """scikit-learn's text classification report (precision, recall, F1, support per class)."""
    return classification_report(labels, pred, labels=list(range(len(class_names))),
                                 target_names=class_names, digits=4, zero_division=0)
