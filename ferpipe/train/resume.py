"""Resuming an interrupted training run: the resume checkpoint and the fingerprint that says
whether it may be continued (same params, data, code and number of processes)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ferpipe.core.errors import CheckpointError, OutputError
from ferpipe.model.checkpoint import write_torch


def fingerprint(params: dict[str, Any], files: list[str | Path], world_size: int = 1,
                device: str = "", precision: str = "") -> str:
    """sha256 over the params used, the bytes of `files`, the number of processes, and the
    device type and precision actually used.

    A resume checkpoint is used only when its fingerprint equals the new run's, so a change of
    any param, of the training data, of the code, of the process count or of the device starts
    over. The device and precision are the resolved ones (`cuda`, `bfloat16`), not the params'
    (`train.device: auto` is another device on a GPU machine, where a CPU run's generator states
    would not even load).
    """
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(f"world_size={world_size};device={device};precision={precision}".encode())
    for path in files:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class Resume:
    """Where `fit` keeps its resume checkpoint, and whether it may continue from it.

    The checkpoint (written by rank 0 after every epoch, to a temp name then renamed, so a kill
    never leaves a half-written one) holds: the fingerprint, the last completed epoch, the model,
    optimizer, scheduler, GradScaler and EMA (`train.ema_decay`) `state_dict`s, the best model's
    `state_dict`, the RNG
    states (torch's global CPU and CUDA ones, the data-order generator and every rank's
    augmentation generator), the FitResult so far, and `extra` (e.g. the MLflow run id).

    Attributes:
        path: the checkpoint file (e.g. models/resume.pt).
        fingerprint: see `fingerprint()`; a checkpoint with another fingerprint is ignored.
        extra: saved with each checkpoint, returned on load.
        state: the loaded checkpoint, set by `load()` (None: start from epoch 1).
    """

    path: Path
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        """Read the checkpoint with `torch.load(weights_only=True)` if it exists and matches.

        Returns:
            The checkpoint dict, or None (no file, or written for other params/data; such a
            file is left alone and replaced after this run's first epoch). Also kept in `state`.

        Raises:
            CheckpointError: the file exists but cannot be read as a resume checkpoint.
        """
        self.state = None
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle, zip and torch errors of a damaged file
            raise CheckpointError(f"{self.path}: not a readable resume checkpoint "
                                  f"({type(err).__name__}); delete it to start over") from err
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            print(f"{self.path}: written for other params or data; not resumed, starting over")
            return None
        self.state = state
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` (plus fingerprint and extra) atomically (`outputs.write_torch`).

        Raises:
            OutputError: the file cannot be written (no space, file too large): one line; the
                resume checkpoint of the epoch before, if any, is kept.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_torch({**state, "fingerprint": self.fingerprint, "extra": self.extra},
                        self.path)
        except OSError as err:
            reason = err.strerror or os.strerror(err.errno or 0)
            code = errno.errorcode.get(err.errno or 0, err.errno)
            raise OutputError(f"{self.path}: cannot write: {reason} (errno {code}); training "
                              f"stopped after epoch {state.get('epoch', '?')}, nothing was "
                              f"replaced, the previous outputs are as they were") from None

    def remove(self) -> None:
        """Delete the checkpoint (the run finished)."""
        self.path.unlink(missing_ok=True)
