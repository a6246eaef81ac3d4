"""matplotlib figures of a run: training curves, the one-cycle LR, confusion matrix, per-class F1,
and a grid of test predictions. Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # the name may be a temp name without .png
    plt.close(fig)
    return path


def curves(history: pd.DataFrame, metric: str, path: Path) -> Path:
    """Train and val `metric` ("accuracy" or "loss") against epoch, from the history CSV."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(history["epoch"], history[f"train_{metric}"], marker="o", label="train")
    ax.plot(history["epoch"], history[f"val_{metric}"], marker="o", label="val")
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def learning_rate(lrs: pd.DataFrame, path: Path) -> Path:
    """Learning rate against optimizer step (the one-cycle shape)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs["step"], lrs["lr"])
    ax.set(xlabel="step", ylabel="learning rate", title="one-cycle learning rate")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def confusion(actual: list[str], predicted: list[str], class_names: list[str], path: Path) -> Path:
    """Confusion matrix normalized over true labels (rows sum to 1), via scikit-learn."""
    fig, ax = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay.from_predictions(actual, predicted, labels=class_names,
                                            normalize="true", values_format=".2f",
                                            cmap="Blues", ax=ax, colorbar=False)
    ax.set_title("confusion matrix (normalized by true class)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    return _save(fig, path)


def per_class_f1(per_class: dict[str, dict[str, float]], path: Path) -> Path:
    """Bar chart of F1 per class (from eval.json's per_class)."""
    names = list(per_class)
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(names, [per_class[n]["f1"] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f")
    ax.set(ylim=(0, 1), ylabel="F1", title="test F1 per class")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    return _save(fig, path)


def prediction_grid(images: np.ndarray, actual: list[str], predicted: list[str], path: Path,
                    n: int = 36, seed: int = 0) -> Path:
    """A grid of `n` random test images (uint8 (N, H, W)) titled true/predicted; wrong in red."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    cols = int(np.ceil(np.sqrt(len(pick))))
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), pick):
        wrong = actual[i] != predicted[i]
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{actual[i]}\n{'x ' if wrong else ''}{predicted[i]}", fontsize=7,
                     color="red" if wrong else "black")
    fig.suptitle("test images: true / predicted (wrong in red, marked x)", fontsize=9)
    return _save(fig, path)
