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
    classes = list(range(n_classes))
    statistics = {
        "accuracy": lambda y, p: accuracy_score(y, p),
        "macro_f1": lambda y, p: f1_score(y, p, labels=classes, average="macro",
                                          zero_division=0),
    }
    out: dict[str, Any] = {"confidence": confidence, "resamples": resamples, "seed": seed,
                           "method": "percentile"}
    for name, statistic in statistics.items():
        result = bootstrap((labels, pred), statistic, paired=True, vectorized=False,
                           n_resamples=resamples, confidence_level=confidence,
                           method="percentile", rng=np.random.default_rng(seed))
        out[name] = [float(result.confidence_interval.low),
                     float(result.confidence_interval.high)]
    return out


def report_text(labels: np.ndarray, pred: np.ndarray, class_names: list[str]) -> str:
    """scikit-learn's text classification report (precision, recall, F1, support per class)."""
    return classification_report(labels, pred, labels=list(range(len(class_names))),
                                 target_names=class_names, digits=4, zero_division=0)
