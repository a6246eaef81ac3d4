"""The model: a torchvision ResNet18 (or a small baseline CNN) for 1-channel 48x48 faces, and its
self-describing checkpoint."""

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
from ferpipe.outputs import write_torch
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


def build_model(cfg: Model, num_classes: int = 7, input_size: int = 48) -> nn.Module:
    """torchvision ResNet18 for 1-channel input and a `num_classes` head, from the `model` params.

    Input: float tensor (B, 1, H, W), normalized; output: logits float (B, num_classes).
    `cfg.arch` "small_cnn" builds `SmallCNN` instead (for `input_size` x `input_size` images;
    the ResNet takes any H, W); the rest of this paragraph is about "resnet18".

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
    probability before each linear layer of the head. `cfg.freeze` freezes the first stages
    (see `freeze_stages`).

    Raises:
        PretrainedWeightsError: see `load_imagenet_state_dict`.
    """
    if cfg.arch == "small_cnn":
        return SmallCNN(num_classes, cfg.dropout, input_size)
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
    freeze_stages(model, cfg.freeze)
    return model


#: ResNet18's stages in forward order, as `freeze_stages` counts them.
RESNET_STAGES: tuple[tuple[str, ...], ...] = (("conv1", "bn1"), ("layer1",), ("layer2",),
                                              ("layer3",), ("layer4",))


def freeze_stages(model: nn.Module, stages: int) -> nn.Module:
    """Freeze (`requires_grad = False`) the first `stages` (0-5) stages of a torchvision ResNet:
    1 the stem (conv1 + bn1), 2 also layer1, 3 layer2, 4 layer3, 5 layer4 (only `fc`, the head,
    trains). Frozen parameters get no gradient and are left out of the optimizer
    (`ferpipe.training.make_optimizer`); the BatchNorm layers of a frozen stage keep updating
    their running mean and variance in train mode (only their affine weights are frozen).

    The fine-tuning recipe of seed project 002, which "freezes early layers and uses AdamW with
    differential rates" (see `train.backbone_lr_scale`); meant for `model.pretrained: true`
    (frozen random weights stay random). Returns `model`, changed in place.
    """
    for names in RESNET_STAGES[:stages]:
        for name in names:
            getattr(model, name).requires_grad_(False)
    return model


class SmallCNN(nn.Module):
    """`model.arch: small_cnn`: the small custom CNN "Model 0" of a FER2013 transfer-learning
    notebook, as a baseline.

    Three blocks of Conv2d 3x3 (padding 1) + BatchNorm2d + ReLU + MaxPool2d(2) with 16, 32 and 64
    channels, then flatten and the head `fc`: Linear(64 * (input_size // 8)**2, 128) + ReLU +
    Dropout(`dropout`) + Linear(128, num_classes). For 48x48 input the features are 64 x 6 x 6
    and the model has 319,463 parameters (7 classes).

    Input: float tensor (B, 1, input_size, input_size), normalized; output: logits float
    (B, num_classes). `fc` is the head that `train.backbone_lr_scale` leaves at the full LR.
    """

    def __init__(self, num_classes: int = 7, dropout: float = 0.0, input_size: int = 48) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for cin, cout in ((1, 16), (16, 32), (32, 64)):
            blocks += [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.input_size = input_size
        side = input_size // 8
        self.fc = nn.Sequential(nn.Linear(64 * side * side, 128), nn.ReLU(inplace=True),
                                nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(f"small_cnn was built for {self.input_size}x{self.input_size} "
                             f"images, got {x.shape[-2]}x{x.shape[-1]}")
        return self.fc(torch.flatten(self.features(x), 1))


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
