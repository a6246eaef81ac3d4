"""The plot stage's figures: what they show and that two runs' PNGs share their scales."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ferpipe.evaluate import plots

NAMES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def labels(n, rng, rare="disgust", rare_count=2):
    """n labels with `rare` present only `rare_count` times."""
    common = [c for c in NAMES if c != rare]
    out = list(rng.choice(common, n - rare_count)) + [rare] * rare_count
    return [str(x) for x in rng.permutation(out)]


def test_the_grid_holds_every_class_even_a_rare_one():
    rng = np.random.default_rng(0)
    actual = labels(500, rng)
    for seed in range(5):
        pick = plots.pick_examples(actual, 36, seed)
        assert len(pick) == 36 and len(set(pick.tolist())) == 36
        assert {actual[i] for i in pick} == set(NAMES)
    # fewer slots than classes: the rarest classes come first
    assert "disgust" in {actual[i] for i in plots.pick_examples(actual, 3, 0)}
    assert plots.pick_examples(actual, 36, 1).tolist() == plots.pick_examples(
        actual, 36, 1).tolist()


def test_the_grid_labels_each_picture_below_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    actual = labels(60, rng)
    predicted = [a if i % 3 else "happy" for i, a in enumerate(actual)]
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or path)
    plots.prediction_grid(rng.integers(0, 255, (60, 48, 48), dtype=np.uint8), actual,
                          predicted, tmp_path / "grid.png", n=16)
    axes = [ax for ax in drawn[0].axes if ax.images]
    assert len(axes) == 16
    for ax in axes:
        true, shown = ax.get_xlabel().split("\n")
        assert true in NAMES and shown.removeprefix("x ") in NAMES
        assert shown.startswith("x ") == (true != shown.removeprefix("x "))
        assert not ax.get_title()  # nothing sits between rows
    plt.close("all")


def test_confusion_cells_show_counts_and_shares_on_a_fixed_scale(tmp_path, monkeypatch):
    actual = ["happy"] * 8 + ["sad"] * 4
    predicted = ["happy"] * 6 + ["sad"] * 2 + ["sad"] * 3 + ["happy"]
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or path)
    plots.confusion(actual, predicted, NAMES, tmp_path / "c.png")
    ax = drawn[0].axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert {"6\n75%", "2\n25%", "3\n75%", "1\n25%", "0\n0%"} <= texts
    assert ax.images[0].get_clim() == (0, 1)
    plt.close("all")


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_curves_share_their_scale_across_runs(tmp_path, monkeypatch, metric):
    limits = []

    def keep(fig, path):
        ax = fig.axes[0]
        limits.append((ax.get_ylim(), ax.get_ylabel(), list(ax.get_xticks())))
        return path

    monkeypatch.setattr(plots, "_save", keep)
    for top in (0.4, 0.9):  # two runs far apart
        epochs = np.arange(1, 8)
        history = pd.DataFrame({"epoch": epochs, "train_accuracy": np.linspace(0.2, top, 7),
                                "val_accuracy": np.linspace(0.25, top, 7),
                                "train_loss": np.linspace(1.9, 1.0, 7),
                                "val_loss": np.linspace(1.8, 0.9 * top, 7)})
        plots.curves(history, metric, tmp_path / "c.png")
    (first, label, ticks), (second, _, _) = limits
    assert first == second
    if metric == "accuracy":
        assert first == (0, 100) and "%" in label
    assert all(float(t).is_integer() for t in ticks)  # whole epochs
    plt.close("all")


def test_written_pngs_open(tmp_path):
    path = plots.learning_rate(pd.DataFrame({"step": range(10), "lr": np.linspace(0, 1e-3, 10)}),
                               tmp_path / "lr.png")
    assert Image.open(path).size[0] > 300
