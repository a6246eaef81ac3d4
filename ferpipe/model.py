"""The model: a torchvision ResNet18 for 1-channel 48x48 faces, and its self-describing checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

#: Stems for 48x48 input. "standard": torchvision's 7x7 stride-2 conv + 3x3 stride-2 max-pool
#: (feature map 12x12 after the stem). "3x3": 3x3 stride-1 conv + max-pool (24x24).
#: "3x3_nopool": 3x3 stride-1 conv, no max-pool (48x48), the stem of the CIFAR ResNets (He et al.
#: 2016, "Deep Residual Learning for Image Recognition", section 4.2) used by the strongest
#: from-scratch FER2013 ResNet18 results; about 6x the compute of "3x3".
STEMS = ("standard", "3x3", "3x3_nopool")


class PretrainedWeightsError(RuntimeError):
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


def build_model(num_classes: int = 7, stem: str = "standard", pretrained: bool = False,
                hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """torchvision ResNet18 for 1-channel input and a `num_classes` head.

    Input: float tensor (B, 1, H, W), normalized; output: logits float (B, num_classes).

    Args:
        stem: one of STEMS (see above).
        pretrained: start from torchvision's ImageNet weights. With the standard stem, the RGB
            conv1 filters are summed over the colour axis into one channel (the grayscale image
            equals R = G = B, so the response is unchanged); the 3x3 stems start fresh.
        hidden: width of an optional hidden layer in the head (0: linear head).
        dropout: dropout probability before each linear layer of the head.

    Raises:
        ValueError: unknown stem.
        PretrainedWeightsError: see `load_imagenet_state_dict`.
    """
    if stem not in STEMS:
        raise ValueError(f"model.stem: '{stem}' is not one of {list(STEMS)}")
    model = resnet18(weights=None)
    if pretrained:
        model.load_state_dict(load_imagenet_state_dict())
    rgb_weight = model.conv1.weight.data
    if stem == "standard":
        model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if pretrained:
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

    `model` is the module or its `state_dict`. Keys: state_dict (fp32, CPU), class_names, mean, std (normalization, [0, 1] pixel units),
    image_size (pixels), model (the `model` params section), params (all params used), plus
    `extra` (epoch, val_accuracy ...). Written to a temp name, then renamed.
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


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by `save_checkpoint` (with `weights_only=True`).

    Returns:
        (model in eval mode on the CPU, the checkpoint dict).

    Raises:
        FileNotFoundError: no checkpoint at `path`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (run the train stage)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    arch = ckpt["model"]
    model = build_model(len(ckpt["class_names"]), stem=arch["stem"], pretrained=False,
                        hidden=arch.get("hidden", 0), dropout=arch.get("dropout", 0.0))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
