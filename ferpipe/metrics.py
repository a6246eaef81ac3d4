"""Test-set metrics with scikit-learn: accuracy, balanced accuracy, macro/weighted F1, top-k accuracy,
per class."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
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


def report_text(labels: np.ndarray, pred: np.ndarray, class_names: list[str]) -> str:
    """scikit-learn's text classification report (precision, recall, F1, support per class)."""
    return classification_report(labels, pred, labels=list(range(len(class_names))),
                                 target_names=class_names, digits=4, zero_division=0)
