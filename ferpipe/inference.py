"""The one batched inference path: class probabilities of uint8 images, with optional test-time
augmentation.

Used by validation during training, the evaluate stage, the predict command and the served MLflow
model, so all of them turn the same 48 x 48 uint8 pixels into the same probabilities.

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

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from ferpipe.augment import normalize
from ferpipe.device import StepContext, autocast


def tta_views(x: torch.Tensor, mode: str = "none", crop: int = 44) -> Iterator[torch.Tensor]:
    """The views of a normalized batch that TTA averages over.

    Args:
        x: float (B, 1, H, W).
        mode: one of `params.TTA_MODES`.
        crop: side of the ten-crop crops, pixels (at most H and W).

    Yields:
        float (B, 1, H, W) views: 1 for none, 2 for hflip, 10 for ten_crop.

    Raises:
        ValueError: a crop larger than the image, or a mode that is not one of TTA_MODES.
    """
    size = list(x.shape[-2:])
    if mode == "none":
        yield x
    elif mode == "hflip":
        yield x
        yield TF.horizontal_flip(x)
    elif mode == "ten_crop":
        if not 0 < crop <= min(size):
            raise ValueError(f"tta crop: {crop} pixels does not fit a {size[0]}x{size[1]} image")
        for view in TF.ten_crop(x, [crop, crop]):
            yield F.interpolate(view, size=size, mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"unknown TTA mode {mode!r}")


@torch.no_grad()
def predict_log_proba(model: nn.Module, images: np.ndarray | torch.Tensor, ctx: StepContext,
                      tta: str = "none", crop: int = 44, batch_size: int = 512) -> torch.Tensor:
    """Log-probabilities of uint8 images, the softmax averaged over the TTA views.

    The model is put in eval mode; batches are normalized with `ctx.mean`/`ctx.std`, moved to
    `ctx.device`, put in the model's memory format and run under `ctx`'s autocast dtype.

    Args:
        images: uint8 (N, H, W) pixels 0-255, the size the model was trained on, on any device.
        tta, crop: see `tta_views`.
        batch_size: images per forward pass.

    Returns:
        float32 (N, C) log-probabilities on the CPU: `log_softmax(logits)` for one view (so the
        mean NLL is the cross-entropy), the log of the mean softmax over several views.
    """
    model.eval()
    images = torch.as_tensor(images)
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(ctx.device), ctx.mean, ctx.std)
        views = []
        for view in tta_views(x, tta, crop):
            with autocast(ctx.device, ctx.amp_dtype):
                logits = model(ctx.prepare(view))
            views.append(F.log_softmax(logits.float(), dim=1))
        stacked = torch.stack(views)
        out.append((stacked[0] if len(views) == 1 else
                    torch.logsumexp(stacked, 0) - np.log(len(views))).cpu())
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class Classifier:
    """A trained model with what it needs to classify raw pixels.

    Attributes:
        model: the network in eval mode, `channels_last`. class_names: output order.
        ctx: CPU, fp32, the checkpoint's normalization ([0, 1] units). image_size: input side,
        pixels. source: where it was loaded from.
    """

    model: nn.Module
    class_names: list[str]
    ctx: StepContext
    image_size: int
    source: str

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Classifier:
        """Load a checkpoint of the train stage (`torch.load(weights_only=True)`), the model in
        `channels_last` memory format.

        Raises:
            CheckpointError: see `ferpipe.model.load_checkpoint`.
        """
        from ferpipe.model import load_checkpoint

        model, ckpt = load_checkpoint(path)
        model = model.to(memory_format=torch.channels_last)
        ctx = StepContext(torch.device("cpu"), float(ckpt["mean"]), float(ckpt["std"]),
                          channels_last=True)
        return cls(model, list(ckpt["class_names"]), ctx, int(ckpt["image_size"]), str(path))

    def predict(self, images: np.ndarray, tta: str = "none", crop: int = 44,
                batch_size: int = 256) -> np.ndarray:
        """Probabilities float32 (N, C) for uint8 images (N, image_size, image_size)."""
        return predict_log_proba(self.model, images, self.ctx, tta, crop, batch_size).exp().numpy()
