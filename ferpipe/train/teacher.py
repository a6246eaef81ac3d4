"""Distillation from precomputed teacher targets: one probability vector per train image, made once
by a teacher model (`python -m ferpipe.tools.teacher`) and blended into the hard labels, so a step
costs nothing more than without a teacher.

The recipe is the born-again network's (Furlanello et al. 2018, "Born-Again Neural Networks": a
student of the same architecture learns from its predecessor's outputs at temperature 1) with the
targets computed once per image as in ReLabel (Yun et al. 2021, "Re-labeling ImageNet"). The
target of image i is `(1 - w) * onehot(label_i) + w * teacher_i` with `w = train.distill_weight`;
the train stage's label smoothing then applies to that blend as to any target.

A targets file is an `.npz` holding `probs` (float16 (N, C), rows summing to 1), `labels` (int64
(N,), the train split's, to check the rows' order), `train_sha256` (the sha256 of the
`train.npz` the rows belong to) and `info` (a JSON string: the teacher and how its outputs were
made). It is a pinned input of the train stage: commit it (it is about 200 KiB) and name it in
`train.teacher`; a file made for other prepared data is refused before anything is trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ferpipe.core.errors import ParamsError
from ferpipe.core.files import sha256_of
from ferpipe.core.params import Augment, Train
from ferpipe.data.splits import CLASS_NAMES


def write_targets(path: str | Path, probs: np.ndarray, labels: np.ndarray, train_sha256: str,
                  info: dict[str, Any]) -> Path:
    """Write a targets file (see the module docstring) atomically.

    Args:
        probs: float (N, C) probabilities, C = len(CLASS_NAMES), rows summing to 1.
        labels: int64 (N,) the train split's labels, in its order.
        train_sha256: hex sha256 of the `train.npz` the rows belong to.
        info: JSON-serializable provenance (teacher reference and hash, TTA, its val accuracy).

    Raises:
        ValueError: shapes that do not match, or rows that are not probabilities.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape != (len(labels), len(CLASS_NAMES)):
        raise ValueError(f"teacher probabilities: shape {probs.shape}; expected "
                         f"({len(labels)}, {len(CLASS_NAMES)})")
    if not np.allclose(probs.sum(1), 1.0, atol=1e-3) or (probs < 0).any():
        raise ValueError("teacher probabilities: rows must be non-negative and sum to 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, probs=probs.astype(np.float16), labels=np.asarray(labels, np.int64),
                        train_sha256=np.array(train_sha256), info=np.array(json.dumps(info)))
    tmp.replace(path)
    return path


def check_distillation(cfg: Train, aug: Augment) -> None:
    """Refuse distillation params that cannot work, before any data is read.

    Raises:
        ParamsError: `train.distill_weight` above 0 without `train.teacher`, or with mixup or
            CutMix on (their targets mix two images' hard labels; the teacher's are not mixed).
    """
    if cfg.distill_weight <= 0:
        return
    if cfg.teacher is None:
        raise ParamsError(f"train.distill_weight: {cfg.distill_weight} needs train.teacher, a "
                          f"file of teacher targets (python -m ferpipe.tools.teacher); got null")
    if aug.mixup_alpha or aug.cutmix_alpha:
        raise ParamsError("train.distill_weight: distillation does not combine with "
                          "augment.mixup_alpha or augment.cutmix_alpha; set those to 0 or "
                          "train.distill_weight to 0")


def load_targets(cfg: Train, train_npz: str | Path, labels: np.ndarray
                 ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The teacher's probabilities for the train split, checked against it; None when
    `train.distill_weight` is 0.

    Args:
        train_npz: the prepared train split the run trains on; labels: its int64 (N,) labels.

    Returns:
        (float32 (N, C) probabilities in the split's order, the file's provenance with its own
        `targets_sha256` added).

    Raises:
        ParamsError: the file is missing or not a targets file, or was made for other prepared
            data (its `train_sha256` or labels differ): one line naming `train.teacher`.
    """
    if cfg.distill_weight <= 0 or cfg.teacher is None:
        return None
    path = Path(cfg.teacher)
    if not path.is_file():
        raise ParamsError(f"train.teacher: {path} not found; expected a file of teacher targets "
                          f"(python -m ferpipe.tools.teacher --out {path})")
    try:
        with np.load(path, allow_pickle=False) as data:
            probs = data["probs"].astype(np.float32)
            file_labels = data["labels"]
            made_for = str(data["train_sha256"])
            info = json.loads(str(data["info"]))
    except (OSError, KeyError, ValueError) as err:
        raise ParamsError(f"train.teacher: {path} is not a teacher targets file ({err}); "
                          f"re-make it with python -m ferpipe.tools.teacher") from None
    actual = sha256_of(Path(train_npz))
    if made_for != actual or not np.array_equal(file_labels, labels) \
            or probs.shape != (len(labels), len(CLASS_NAMES)):
        raise ParamsError(f"train.teacher: {path} was made for other prepared data (train.npz "
                          f"sha256 {made_for[:12]}, this one {actual[:12]}); re-make it with "
                          f"python -m ferpipe.tools.teacher --out {path}")
    probs /= probs.sum(1, keepdims=True)  # float16 rounding
    return probs, {**info, "targets_sha256": sha256_of(path)}
