"""matplotlib figures of a run: training curves, the one-cycle LR, confusion matrix, per-class F1,
the reliability diagram, and a grid of test predictions. Each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # the name may be a temp name without .png
    plt.close(fig)
    return path


def curves(history: pd.DataFrame, metric: str, path: Path) -> Path:
    """Train and val `metric` ("accuracy" or "loss") against epoch, from the history CSV.

    Accuracy is drawn in percent on a fixed 0-100 axis and loss from 0, so the PNGs of two runs
    side by side (`dvc plots diff`) share their scales; epochs are integer ticks.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    scale = 100 if metric == "accuracy" else 1
    for split in ("train", "val"):
        ax.plot(history["epoch"], history[f"{split}_{metric}"] * scale, marker="o",
                markersize=3, label=split)
    if metric == "accuracy":
        ax.set(ylabel="accuracy (%)", ylim=(0, 100))
    else:
        top = max(2.0, float(history[["train_loss", "val_loss"]].max().max()) * 1.05)
        ax.set(ylabel="cross-entropy loss", ylim=(0, top))
    ax.set(xlabel="epoch", title=f"{metric} per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def learning_rate(lrs: pd.DataFrame, path: Path) -> Path:
    """Learning rate against optimizer step (the one-cycle shape), from 0."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs["step"], lrs["lr"])
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="one-cycle learning rate",
           ylim=(0, None))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def confusion(actual: list[str], predicted: list[str], class_names: list[str], path: Path) -> Path:
    """Confusion matrix via scikit-learn: each cell shows its count of test images and its share
    of the true class (rows sum to 100%); the colour is that share on a fixed 0-1 scale, so two
    runs side by side compare."""
    counts = confusion_matrix(actual, predicted, labels=class_names)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    display = ConfusionMatrixDisplay(shares, display_labels=class_names)
    display.plot(ax=ax, cmap="Blues", colorbar=True, im_kw={"vmin": 0, "vmax": 1},
                 values_format=".0%")
    for (i, j), text in np.ndenumerate(display.text_):
        text.set_text(f"{counts[i, j]}\n{shares[i, j]:.0%}")
        text.set_fontsize(8)
    ax.set(xlabel="predicted class", ylabel="true class",
           title="confusion matrix (test images: count, share of true class)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    return _save(fig, path)


def per_class_f1(per_class: dict[str, dict[str, float]], path: Path) -> Path:
    """Bar chart of F1 per class (from eval.json's test per_class), on a fixed 0-1 axis."""
    names = list(per_class)
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(names, [per_class[n]["f1"] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f")
    ax.set(ylim=(0, 1), ylabel="F1", title="test F1 per class")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    return _save(fig, path)


def reliability_diagram(calibration: dict, path: Path) -> Path:
    """Accuracy against confidence per bin on test, before and after the temperature, one or one
    per predicted class (eval.json's
    `calibration`, `ferpipe.evaluate.calibration.calibration_report`), with the diagonal of
    perfect calibration and each curve's ECE in its label (Guo et al. 2017, figure 1)."""
    temperature = calibration["temperature"]  # one, or a list: one per predicted class
    scaling = (f"T per predicted class ({min(temperature):.2f}-{max(temperature):.2f})"
               if isinstance(temperature, list) else f"T = {temperature:.2f}")
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for key, label, colour in (
            ("test", f"as trained: ECE {calibration['test_ece']:.3f}", "tab:red"),
            ("test_calibrated", f"{scaling}: ECE {calibration['test_ece_calibrated']:.3f}",
             "tab:blue")):
        rows = [row for row in calibration["reliability"][key] if row["count"]]
        ax.plot([row["confidence"] for row in rows], [row["accuracy"] for row in rows],
                marker="o", color=colour, label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)",
           ylabel="accuracy", title=f"test reliability ({calibration['bins']} bins)")
    ax.legend(loc="upper left")
    return _save(fig, path)


def pick_examples(actual: list[str], n: int, seed: int = 0) -> np.ndarray:
    """Indices of `n` test images (sorted) holding every class present (rarest first) when
    n allows, the rest drawn at random; reproducible for a `seed`."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(actual)
    n = min(n, len(labels))
    chosen: list[int] = []
    classes, sizes = np.unique(labels, return_counts=True)
    for name in classes[np.argsort(sizes, kind="stable")][:n]:
        chosen.append(int(rng.choice(np.flatnonzero(labels == name))))
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    chosen += rng.choice(rest, size=n - len(chosen), replace=False).tolist()
    return np.sort(np.asarray(chosen, dtype=int))


def prediction_grid(images: np.ndarray, actual: list[str], predicted: list[str], path: Path,
                    n: int = 36, seed: int = 0) -> Path:
    """A grid of `n` test images (uint8 (N, H, W)), every class among them, each labelled under
    its own picture "true / predicted" inside a frame, green when right, red (and marked x) when
    wrong."""
    pick = pick_examples(actual, n, seed)
    cols = int(np.ceil(np.sqrt(len(pick))))
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), pick):
        wrong = actual[i] != predicted[i]
        colour = "tab:red" if wrong else "tab:green"
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set(color=colour, linewidth=2)
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_xlabel(f"{actual[i]}\n{'x ' if wrong else ''}{predicted[i]}", fontsize=8,
                      color=colour, labelpad=2)
    fig.suptitle("test images, labelled below each: true / predicted (wrong: red, x)",
                 fontsize=9)
    return _save(fig, path)
