"""The model: a torchvision ResNet18 for 1-channel 48x48 faces, and its self-describing checkpoint."""

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
from torchvision.models import ResNet18_Weights, resnet18

from ferpipe.errors import CheckpointError, FerpipeError
from ferpipe.params import Model


class PretrainedWeightsError(FerpipeError):
    """ImageNet weights were requested but could not be loaded (usually: offline, not cached)."""


def imagenet_cache_file() -> Path:
    """Where torch.hub keeps torchvision's ResNet18 ImageNet weights (`$TORCH_HOME/hub/checkpoints`)."""
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """ResNet18 ImageNet weights through torchvision's weights API (cache first, then network).

    Raises:
        PretrainedWeightsError: they are not cached and cannot be downloaded; the message names
            the cache file that was looked for.
    """
    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as err:  # URLError, HTTPError, socket errors ...
        raise PretrainedWeightsError(
            f"model.pretrained: could not load ImageNet weights for resnet18: {err}. "
            f"Looked for the cache file {imagenet_cache_file()}; download "
            f"{ResNet18_Weights.IMAGENET1K_V1.url} there on a machine with internet, "
            f"or set model.pretrained: false") from err


def build_model(cfg: Model, num_classes: int = 7) -> nn.Module:
    """torchvision ResNet18 for 1-channel input and a `num_classes` head, from the `model` params.

    Input: float tensor (B, 1, H, W), normalized; output: logits float (B, num_classes).

    `cfg.stem` (48x48 input): "standard" is torchvision's 7x7 stride-2 conv + 3x3 stride-2
    max-pool (feature map 12x12 after the stem); "3x3" a 3x3 stride-1 conv + max-pool (24x24);
    "3x3_nopool" a 3x3 stride-1 conv without max-pool (48x48), the stem of the CIFAR ResNets (He
    et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2) used by the
    strongest from-scratch FER2013 ResNet18 results: every feature map has twice the side of
    "3x3"'s, about 4x its FLOPs.
    `cfg.pretrained` starts from torchvision's ImageNet weights: with the standard stem, the RGB
    conv1 filters are summed over the colour axis into one channel (the grayscale image equals
    R = G = B, so the response is unchanged); the 3x3 stems start fresh. `cfg.hidden` is the
    width of an optional hidden layer in the head (0: linear head), `cfg.dropout` the dropout
    probability before each linear layer of the head.

    Raises:
        PretrainedWeightsError: see `load_imagenet_state_dict`.
    """
    stem, hidden, dropout = cfg.stem, cfg.hidden, cfg.dropout
    model = resnet18(weights=None)
    if cfg.pretrained:
        model.load_state_dict(load_imagenet_state_dict())
    rgb_weight = model.conv1.weight.data
    if stem == "standard":
        model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if cfg.pretrained:
            model.conv1.weight.data.copy_(rgb_weight.sum(dim=1, keepdim=True))
    else:
        model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if stem == "3x3_nopool":
            model.maxpool = nn.Identity()
    if hidden > 0:
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    else:
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, num_classes))
    return model


def save_checkpoint(path: str | Path, model: nn.Module | dict[str, torch.Tensor], *, class_names: list[str],
                    mean: float, std: float, image_size: int, params: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> None:
    """Write a self-describing checkpoint: everything `load_checkpoint` needs to rebuild the model.

    `model` is the module or its `state_dict`. Keys: state_dict (fp32, CPU), class_names, mean,
    std (normalization, [0, 1] pixel units), image_size (pixels), model (the `model` params
    section), params (all params used), plus `extra` (epoch, val_accuracy ...). Written to a
    temp name, then renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
             for k, v in (model if isinstance(model, dict) else model.state_dict()).items()}
    ckpt = {"state_dict": state, "class_names": list(class_names), "mean": float(mean),
            "std": float(std), "image_size": int(image_size), "model": dict(params["model"]),
            "params": params, **(extra or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


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
        model = build_model(Model.model_validate(ckpt["model"]), len(ckpt["class_names"]))
        model.load_state_dict(ckpt["state_dict"])
    except (ValidationError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its weights do not fit its model params "
                              f"{ckpt['model']}: {str(err).splitlines()[0][:200]}") from None
    return model.eval(), ckpt
