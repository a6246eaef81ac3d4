"""Inference with a trained checkpoint: class probabilities, with optional test-time augmentation.

Used by the evaluate stage, the predict command and the served MLflow model, so all three turn the
same 48 x 48 uint8 pixels into the same probabilities.

Test-time augmentation (TTA) averages the softmax over several views of each image:
- `hflip`: the image and its mirror image (2 views);
- `ten_crop`: the four corner crops and the centre crop of side `crop` pixels, and the mirror image
  of each, each resized back to the model's input size (10 views). Ten-crop at test time is what
  the strongest FER2013 results use (Khaireddin & Chen 2021, "Facial Emotion Recognition: State of
  the Art Performance on FER2013", arXiv:2105.03588; Pramerdorfer & Kampel 2016, arXiv:1612.02903),
  there with 40-pixel crops of models trained on random 40-pixel crops; this model is trained on
  whole 48-pixel images with +-10% zoom and shift, so the default crop is 44 pixels, resized to 48.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from ferpipe.augment import normalize

#: TTA modes of `evaluate.tta` and `predict --tta`.
TTA_MODES = ("none", "hflip", "ten_crop")


def tta_views(x: torch.Tensor, mode: str = "none", crop: int = 44) -> Iterator[torch.Tensor]:
    """The views of a normalized batch that TTA averages over.

    Args:
        x: float (B, 1, H, W).
        mode: one of TTA_MODES.
        crop: side of the ten-crop crops, pixels (at most H and W).

    Yields:
        float (B, 1, H, W) views: 1 for none, 2 for hflip, 10 for ten_crop.

    Raises:
        ValueError: unknown mode, or a crop larger than the image.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"tta: '{mode}' is not one of {list(TTA_MODES)}")
    size = list(x.shape[-2:])
    if mode == "none":
        yield x
    elif mode == "hflip":
        yield x
        yield TF.horizontal_flip(x)
    else:
        if not 0 < crop <= min(size):
            raise ValueError(f"tta crop: {crop} pixels does not fit a {size[0]}x{size[1]} image")
        for view in TF.ten_crop(x, [crop, crop]):
            yield F.interpolate(view, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray | torch.Tensor, mean: float, std: float,
                  tta: str = "none", crop: int = 44, batch_size: int = 256,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Class probabilities of uint8 images, averaged over the TTA views.

    Inputs are passed in `channels_last` memory format (with a `channels_last` model, a single
    48 x 48 image took 16 ms instead of 29 ms on the README's 2-core CPU).

    Args:
        model: the classifier (put in eval mode here), on `device`.
        images: uint8 (N, H, W) pixels 0-255, the size the model was trained on.
        mean, std: the checkpoint's normalization ([0, 1] pixel units).
        tta, crop: see `tta_views`.

    Returns:
        float32 (N, C) probabilities on the CPU (each row sums to 1).
    """
    model.eval()
    images = torch.as_tensor(images)
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device), mean, std)
        probs = [F.softmax(model(view.contiguous(memory_format=torch.channels_last)).float(),
                           dim=1) for view in tta_views(x, tta, crop)]
        out.append(torch.stack(probs).mean(0).cpu())
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class Classifier:
    """A trained model with what it needs to classify raw pixels.

    Attributes:
        model: the network in eval mode. class_names: output order. mean, std: normalization
        ([0, 1] units). image_size: input side, pixels. source: where it was loaded from.
    """

    model: nn.Module
    class_names: list[str]
    mean: float
    std: float
    image_size: int
    source: str

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "Classifier":
        """Load a checkpoint of the train stage (`torch.load(weights_only=True)`), the model in
        `channels_last` memory format.

        Raises:
            FileNotFoundError: no file at `path`.
        """
        from ferpipe.model import load_checkpoint

        model, ckpt = load_checkpoint(path)
        model = model.to(memory_format=torch.channels_last)
        return cls(model, list(ckpt["class_names"]), float(ckpt["mean"]), float(ckpt["std"]),
                   int(ckpt["image_size"]), str(path))

    def predict(self, images: np.ndarray, tta: str = "none", crop: int = 44) -> np.ndarray:
        """Probabilities float32 (N, C) for uint8 images (N, image_size, image_size)."""
        return predict_proba(self.model, images, self.mean, self.std, tta, crop).numpy()
