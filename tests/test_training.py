import numpy as np
import pytest
import torch

from ferpipe.augment import AugmentConfig
from ferpipe.model import build_model
from ferpipe.training import (StepContext, class_weights, evaluate, fit, make_optimizer,
                              one_cycle, resolve_amp, resolve_device)
from tests.fakedata import face_like

CFG = {"lr": 3e-3, "epochs": 3, "batch_size": 16, "optimizer": "adamw", "weight_decay": 0.0,
       "pct_start": 0.3, "grad_clip": 1.0, "label_smoothing": 0.0, "class_weights": "none",
       "seed": 0}


def test_one_cycle_shape():
    opt = make_optimizer(torch.nn.Linear(2, 2), "sgd", 0.1, 0.0)
    sched = one_cycle(opt, max_lr=0.1, total_steps=100, pct_start=0.3)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert int(np.argmax(lrs)) == 29 and max(lrs) == pytest.approx(0.1)
    assert lrs[-1] < 1e-4 and lrs[-1] == pytest.approx(min(lrs))
    assert all(a <= b for a, b in zip(lrs[:29], lrs[1:30]))
    assert all(a >= b for a, b in zip(lrs[29:], lrs[30:]))


def test_class_weights_inverse_frequency():
    labels = np.array([0, 0, 0, 1])
    w = class_weights(labels, "inverse_frequency", 2)
    torch.testing.assert_close(w, torch.tensor([4 / 6, 2.0]))
    assert class_weights(labels, "none", 2) is None
    with pytest.raises(ValueError, match="train.class_weights"):
        class_weights(labels, "balanced", 2)


def test_amp_and_device_choices():
    cpu = torch.device("cpu")
    assert resolve_amp("none", cpu) is None
    assert resolve_amp("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        resolve_amp("fp16", cpu)
    with pytest.raises(ValueError, match="train.amp"):
        resolve_amp("fp8", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="train.device"):
            resolve_device("cuda")


def tiny_split(n_per_class, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(7), n_per_class)
    images = np.stack([face_like(int(c), rng) for c in labels])
    return {"images": images, "labels": labels.astype(np.int64)}


def run_fit(epochs=3):
    torch.manual_seed(0)
    model = build_model(7, stem="standard")
    ctx = StepContext(torch.device("cpu"), 0.4, 0.2)
    best = []
    result = fit(model, tiny_split(12, 0), tiny_split(4, 1), {**CFG, "epochs": epochs},
                 AugmentConfig(rotation=5, erasing=0.0), ctx,
                 on_best=lambda e, acc: best.append((e, acc)))
    return model, result, best


def test_fit_learns_and_is_deterministic():
    model, result, best = run_fit()
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert len(result.lrs) == 3 * (84 // 16)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert best and best[-1] == (result.best_epoch, result.best_val_accuracy)
    assert result.best_val_accuracy == max(r["val_accuracy"] for r in result.history)
    assert result.images == 3 * 80 and result.step_seconds > 0
    _, again, _ = run_fit()
    assert [r["train_loss"] for r in again.history] == [r["train_loss"] for r in result.history]


def test_evaluate_accuracy_matches_argmax():
    model = build_model(7).eval()
    data = tiny_split(2, 3)
    ctx = StepContext(torch.device("cpu"), 0.4, 0.2)
    out = evaluate(model, torch.from_numpy(data["images"]), torch.from_numpy(data["labels"]), ctx,
                   batch_size=5)
    assert out["logits"].shape == (14, 7)
    expected = (out["logits"].argmax(1).numpy() == data["labels"]).mean()
    assert out["accuracy"] == pytest.approx(expected)
