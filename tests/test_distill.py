"""Distillation from precomputed teacher targets and the clean ending of training."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ferpipe.core.errors import ParamsError
from ferpipe.data.splits import CLASS_NAMES, save_split
from ferpipe.model.device import StepContext
from ferpipe.model.inference import Classifier
from ferpipe.model.network import build_model
from ferpipe.tools import teacher as teacher_tool
from ferpipe.train import fit as fit_module
from ferpipe.train.augment import clean_augment, clean_epochs
from ferpipe.train.fit import fit
from ferpipe.train.teacher import check_distillation, load_targets, write_targets
from tests.fakedata import default_params, learnable_face, random_checkpoint
from tests.test_training import model_cfg, tiny_split, train_cfg

C = len(CLASS_NAMES)


def shifted_teacher(labels: np.ndarray) -> np.ndarray:
    """A teacher that is sure every image is the next class: (y + 1) mod 7, one-hot."""
    return np.eye(C, dtype=np.float32)[(labels + 1) % C]


def train_split(tmp_path, n_per_class=12):
    split = tiny_split(n_per_class, 0)
    path = tmp_path / "train.npz"
    save_split(split, path)
    return split, path


def cfg_with(path, weight=0.5):
    return train_cfg(teacher=str(path), distill_weight=weight)


def test_targets_round_trip_and_are_checked_against_the_split(tmp_path):
    split, train_npz = train_split(tmp_path)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(C), size=len(split["labels"])).astype(np.float32)
    from ferpipe.core.files import sha256_of
    out = write_targets(tmp_path / "t" / "teacher.npz", probs, split["labels"],
                        sha256_of(train_npz), {"model": "m.pt", "tta": "hflip"})
    loaded, info = load_targets(cfg_with(out), train_npz, split["labels"])
    assert loaded.dtype == np.float32 and loaded.shape == probs.shape
    np.testing.assert_allclose(loaded, probs, atol=2e-3)  # stored as float16
    np.testing.assert_allclose(loaded.sum(1), 1.0, atol=1e-6)
    assert info["model"] == "m.pt" and info["tta"] == "hflip"
    assert info["targets_sha256"] == sha256_of(out)
    assert load_targets(train_cfg(teacher=str(out), distill_weight=0.0), train_npz,
                        split["labels"]) is None  # off: not read

    # Other prepared data (one image changed): refused, naming the key and the remedy.
    changed = {**split, "images": split["images"].copy()}
    changed["images"][0, 0, 0] ^= 1
    save_split(changed, train_npz)
    with pytest.raises(ParamsError, match=r"^train\.teacher: .*made for other prepared data.*"
                                          r"ferpipe\.tools\.teacher"):
        load_targets(cfg_with(out), train_npz, split["labels"])
    with pytest.raises(ParamsError, match=r"train\.teacher: .*missing\.npz not found"):
        load_targets(cfg_with(tmp_path / "missing.npz"), train_npz, split["labels"])
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ParamsError, match=r"train\.teacher: .*bad\.npz is not a teacher"):
        load_targets(cfg_with(tmp_path / "bad.npz"), train_npz, split["labels"])


def test_write_targets_refuses_rows_that_are_not_probabilities(tmp_path):
    labels = np.arange(C, dtype=np.int64)
    with pytest.raises(ValueError, match="shape"):
        write_targets(tmp_path / "t.npz", np.ones((C, 3)) / 3, labels, "0" * 64, {})
    with pytest.raises(ValueError, match="sum to 1"):
        write_targets(tmp_path / "t.npz", np.ones((C, C)), labels, "0" * 64, {})
    assert not list(tmp_path.iterdir())


def test_distillation_params_are_checked_before_any_data_is_read():
    aug = default_params().augment
    check_distillation(train_cfg(distill_weight=0.0), aug)  # off: nothing to check
    with pytest.raises(ParamsError, match=r"^train\.distill_weight: 0\.5 needs train\.teacher"):
        check_distillation(train_cfg(distill_weight=0.5, teacher=None), aug)
    mixing = default_params(augment={"mixup_alpha": 0.2}).augment
    with pytest.raises(ParamsError, match="mixup_alpha or augment.cutmix_alpha"):
        check_distillation(train_cfg(distill_weight=0.5, teacher="t.npz"), mixing)


def test_each_step_gets_the_blend_of_label_and_teacher(monkeypatch):
    split = tiny_split(4, 0)
    soft = shifted_teacher(split["labels"])
    seen = []

    def spy(model, x, y, *args, **kwargs):
        seen.append(y.clone())
        return torch.zeros(()), torch.zeros(len(y), C)

    from ferpipe.train import loop
    monkeypatch.setattr(loop, "train_step", spy)
    ctx = StepContext(torch.device("cpu"), 0.4, 0.2)
    images = torch.from_numpy(split["images"])
    labels = torch.from_numpy(split["labels"])
    order = torch.arange(len(labels))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    loop.train_one_epoch(torch.nn.Identity(), images, labels, order, optimizer, None, None, ctx,
                         default_params().augment, 7, torch.Generator(), soft=torch.from_numpy(soft),
                         distill_weight=0.25)
    targets = torch.cat(seen)
    expected = 0.75 * np.eye(C)[split["labels"]] + 0.25 * soft
    np.testing.assert_allclose(targets.numpy(), expected[:len(targets)], atol=1e-6)


def learnable_split(n_per_class, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), n_per_class)
    return {"images": np.stack([learnable_face(int(c), rng) for c in labels]),
            "labels": labels.astype(np.int64)}


def distilled_fit(teacher_probs, weight, epochs=8):
    torch.manual_seed(0)
    model = build_model(model_cfg())
    ctx = StepContext(torch.device("cpu"), 0.4, 0.2)
    train = learnable_split(12, 0)
    aug = default_params(augment={"rotation": 0, "erasing": 0, "translate": 0}).augment
    fit(model, train, learnable_split(4, 1), train_cfg(epochs=epochs, distill_weight=weight,
                                                   teacher="t.npz"),
        aug, ctx, on_best=lambda *a: None, teacher_probs=teacher_probs)
    # Scored as validation scores: the centre crop of the training crop's side.
    clf = Classifier(model.eval(), list(CLASS_NAMES), replace(ctx, input_size=aug.crop), 48, "t")
    predicted = clf.predict(train["images"]).argmax(1)
    return (predicted == train["labels"]).mean(), (predicted == (train["labels"] + 1) % C).mean()


def test_the_student_learns_what_the_teacher_says():
    """A teacher that names the next class for every image: with all the weight on it, the
    student follows the teacher, not the labels; with none, the labels."""
    labels = learnable_split(12, 0)["labels"]
    to_labels, to_teacher = distilled_fit(shifted_teacher(labels), 1.0)
    assert to_teacher >= 0.6 and to_labels <= 0.2, (to_labels, to_teacher)
    to_labels, to_teacher = distilled_fit(shifted_teacher(labels), 0.0)
    assert to_labels >= 0.6 and to_teacher <= 0.2, (to_labels, to_teacher)


def test_the_last_epochs_train_on_crop_and_flip_only(monkeypatch):
    seen = []
    real = fit_module.train_one_epoch

    def spy(model, images, labels, indices, optimizer, scheduler, loss_fn, ctx, aug, *args,
            **kwargs):
        seen.append(aug)
        return real(model, images, labels, indices, optimizer, scheduler, loss_fn, ctx, aug,
                    *args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", spy)
    aug = default_params(augment={"rotation": 10, "erasing": 0.5, "clean_last": 0.25}).augment
    torch.manual_seed(0)
    fit(build_model(model_cfg()), tiny_split(4, 0), tiny_split(2, 1), train_cfg(epochs=4), aug,
        StepContext(torch.device("cpu"), 0.4, 0.2), on_best=lambda *a: None)
    assert seen[:3] == [aug] * 3
    last = seen[3]
    assert (last.rotation, last.translate, last.scale, last.brightness, last.contrast,
            last.erasing, last.autoaugment) == (0, 0, 0, 0, 0, 0, False)
    assert (last.crop, last.hflip) == (aug.crop, aug.hflip)
    assert clean_augment(aug) == last
    assert [clean_epochs(60, f) for f in (0.0, 0.05, 0.1)] == [0, 3, 6]


def test_the_teacher_tool_writes_the_models_probabilities_with_provenance(tmp_path):
    split, train_npz = train_split(tmp_path, n_per_class=3)
    ckpt = random_checkpoint(tmp_path / "teacher.pt")
    out = tmp_path / "teachers" / "t.npz"
    teacher_tool.main(["--model", str(ckpt), "--train", str(train_npz), "--tta", "hflip",
                       "--out", str(out)])
    probs, info = load_targets(cfg_with(out), train_npz, split["labels"])
    expected = Classifier.from_checkpoint(ckpt).predict(split["images"], "hflip")
    np.testing.assert_allclose(probs, expected, atol=2e-3)
    from ferpipe.core.files import sha256_of
    assert info["model_sha256"] == sha256_of(ckpt) and info["tta"] == "hflip"
    assert 0 <= info["train_accuracy"] <= 1
    # Two models: their mean.
    other = random_checkpoint(tmp_path / "other.pt", seed=1)
    teacher_tool.main(["--model", str(ckpt), "--model", str(other), "--train", str(train_npz),
                       "--tta", "none", "--out", str(out)])
    probs, info = load_targets(cfg_with(out), train_npz, split["labels"])
    mean = (Classifier.from_checkpoint(ckpt).predict(split["images"])
            + Classifier.from_checkpoint(other).predict(split["images"])) / 2
    np.testing.assert_allclose(probs, mean, atol=2e-3)
    assert info["model"].startswith("ensemble of ") and len(info["teachers"]) == 2
    json.dumps(info)


def test_the_teacher_tool_refuses_a_missing_split_or_model_in_one_line(tmp_path):
    with pytest.raises(ParamsError, match=r"--train: .*nope\.npz not found"):
        teacher_tool.main(["--train", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o")])
    _, train_npz = train_split(tmp_path, n_per_class=1)
    from ferpipe.core.errors import CheckpointError
    with pytest.raises(CheckpointError, match=r"--model: .*gone\.pt not found"):
        teacher_tool.main(["--model", str(tmp_path / "gone.pt"), "--train", str(train_npz),
                           "--out", str(tmp_path / "o.npz")])
    assert not (tmp_path / "o.npz").exists()
