"""The network: a torchvision ResNet18 (or a small baseline CNN) for 1-channel 48x48 faces, with
the stems and the frozen stages the `model` params choose."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from ferpipe.core.errors import FerpipeError
from ferpipe.core.params import Model


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
    "3x3"'s, about 4x its FLOPs. "3x3_double" is in between: two 3x3 stride-1 convolutions (64
    channels, BatchNorm + ReLU between them) at full resolution, then the max-pool (24x24), as
    the VGG variant of Khaireddin & Chen 2021 (arXiv:2105.03588) convolves twice at 40 x 40
    before its first pooling: work at full resolution without 4x the cost of every later stage.
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
    elif stem == "3x3_double":
        model.conv1 = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False))
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
    (`ferpipe.train.recipe.make_optimizer`); the BatchNorm layers of a frozen stage keep updating
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
