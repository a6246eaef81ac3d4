"""The self-describing checkpoint: the weights with everything needed to rebuild the network
(class names, normalization, input size, the `model` params), written atomically."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from ferpipe.core.errors import CheckpointError
from ferpipe.core.params import Model
from ferpipe.model.network import build_model


def write_torch(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` to `path`, through a temp name beside it and a rename, so a reader never
    sees half a file. The object is serialized in memory first: torch's zip writer reports a
    failed write (a full disk, a file-size limit) as a RuntimeError with no errno, while a
    plain write raises the OSError that `stage_outputs` turns into one line.

    Raises:
        OSError: the file cannot be written (its errno, with `filename` = `path`); the temp file
            is removed and `path` is as it was.
    """
    import io

    import torch

    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from err


def save_checkpoint(path: str | Path, model: nn.Module | dict[str, torch.Tensor], *, class_names: list[str],
                    mean: float, std: float, image_size: int, params: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> None:
    """Write a self-describing checkpoint: everything `load_checkpoint` needs to rebuild the model.

    `model` is the module or its `state_dict`. Keys: state_dict (fp32, CPU), class_names, mean,
    std (normalization, [0, 1] pixel units), image_size (pixels), model (the `model` params
    section), params (all params used), plus `extra` (epoch, val_accuracy ...). Written to a
    temp name, then renamed (`outputs.write_torch`).

    Raises:
        OSError: the file cannot be written (no space, file too large); `path` is as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
             for k, v in (model if isinstance(model, dict) else model.state_dict()).items()}
    ckpt = {"state_dict": state, "class_names": list(class_names), "mean": float(mean),
            "std": float(std), "image_size": int(image_size), "model": dict(params["model"]),
            "params": params, **(extra or {})}
    write_torch(ckpt, path)


#: What `load_checkpoint` needs in a checkpoint, with the type of each.
CHECKPOINT_KEYS = {"state_dict": dict, "class_names": list, "mean": float, "std": float,
                   "image_size": int, "model": dict}


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by `save_checkpoint` (with `torch.load(weights_only=True)`).

    Returns:
        (model in eval mode on the CPU, the checkpoint dict).

    Raises:
        CheckpointError: no file at `path`; a file that is not a torch checkpoint (or holds
            objects other than tensors and plain values); one that lacks a key of
            CHECKPOINT_KEYS (e.g. a bare `state_dict`), whose std is not positive, or whose
            weights do not fit its `model` params. The message names the file and what a
            checkpoint must hold.
    """
    path = Path(path)
    must = ("a checkpoint of the train stage (a dict with " + ", ".join(CHECKPOINT_KEYS) + ")")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (run the train stage)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip and torch errors of a file that is not ours
        text = str(err).strip()
        if not zipfile.is_zipfile(path):
            reason = "not a file written by torch.save, which writes a zip archive"
        elif "Weights only load failed" in text or isinstance(err, pickle.UnpicklingError):
            # torch's own text suggests weights_only=False, which would run arbitrary code
            reason = "it holds objects other than tensors and plain values"
        else:
            reason = text.splitlines()[0][:120] if text else type(err).__name__
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({reason}); expected "
                              f"{must}") from None
    if not isinstance(ckpt, dict) or any(not isinstance(ckpt.get(k), (float, int) if t is float
                                                        else t)
                                         for k, t in CHECKPOINT_KEYS.items()):
        missing = ([k for k, t in CHECKPOINT_KEYS.items() if k not in ckpt]
                   if isinstance(ckpt, dict) else list(CHECKPOINT_KEYS))
        raise CheckpointError(f"{path}: not {must}" + (f"; missing {missing}" if missing else
                                                        "; a key has the wrong type"))
    if not (ckpt["std"] > 0 and np.isfinite(ckpt["std"]) and np.isfinite(ckpt["mean"])):
        raise CheckpointError(f"{path}: normalization mean {ckpt['mean']}, std {ckpt['std']}; "
                              f"expected finite values and std > 0")
    try:
        model = build_model(Model.model_validate(checkpoint_model_params(ckpt["model"])),
                            len(ckpt["class_names"]),
                            input_size=int(ckpt.get("input_size", ckpt["image_size"])))
        model.load_state_dict(ckpt["state_dict"])
    except (ValidationError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its weights do not fit its model params "
                              f"{ckpt['model']}: {str(err).splitlines()[0][:200]}") from None
    return model.eval(), ckpt


def checkpoint_model_params(section: dict[str, Any]) -> dict[str, Any]:
    """The `model` params to rebuild a checkpoint's network with: its saved section, the keys
    added since it may have been written filled in (`arch: resnet18`), and `pretrained` and
    `freeze` off: the weights come from the checkpoint, so nothing is downloaded (offline too)
    and nothing is frozen."""
    return {"arch": "resnet18", **section, "pretrained": False, "freeze": 0}
