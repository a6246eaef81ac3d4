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
  there with 40-pixel crops of models trained on random 40-pixel crops (`augment.crop`: the
  views then match the training crop); a model trained on whole 48-pixel images gets 44-pixel
  crops resized to 48.

`normalize` is the one pixel scaling that training (`ferpipe.train.augment`) and inference share;
`probabilities` adds the post-hoc logit adjustment after TTA, as the evaluate stage scores, with
the defaults (`DEFAULT_TTA`, `DEFAULT_LOGIT_ADJUSTMENT`) that the predict command, the served model
and the release builder use.
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

from ferpipe.core.options import check_logit_adjustment
from ferpipe.model.device import StepContext, autocast


def tta_views(x: torch.Tensor, mode: str = "none", crop: int | None = None,
              input_size: int | None = None) -> Iterator[torch.Tensor]:
    """The views of a normalized batch that TTA averages over, at the model's input size.

    A model trained on random crops (`augment.crop`) sees the centre crop (`none`), the centre
    crop and its mirror image (`hflip`), or ten crops of the same side (`ten_crop`); a model
    trained on whole images sees the whole image, or ten crops of 11/12 of its side (44 of 48
    pixels) resized back.

    Args:
        x: float (B, 1, H, W).
        mode: one of `params.TTA_MODES`.
        crop: side of the ten-crop crops, pixels (None: `input_size` when the model was trained
            on crops, else 11/12 of the image side); resized to the input size when they differ.
        input_size: the model's input side, pixels (None: H).

    Yields:
        float (B, 1, S, S) views, S = the input size: 1 for none, 2 for hflip, 10 for ten_crop.

    Raises:
        ValueError: a crop or input size larger than the image, or a mode not in TTA_MODES.
    """
    height, width = x.shape[-2:]
    side = input_size or height
    if not 0 < side <= min(height, width):
        raise ValueError(f"tta: a {side}-pixel input does not fit a {height}x{width} image")
    centre = TF.center_crop(x, [side, side]) if side < max(height, width) else x
    if mode == "none":
        yield centre
    elif mode == "hflip":
        yield centre
        yield TF.horizontal_flip(centre)
    elif mode == "ten_crop":
        if crop is None:
            crop = side if side < min(height, width) else round(side * 11 / 12)
        if not 0 < crop <= min(height, width):
            raise ValueError(f"tta: a {crop}-pixel crop does not fit a {height}x{width} image")
        for view in TF.ten_crop(x, [crop, crop]):
            yield view if crop == side else F.interpolate(view, size=[side, side],
                                                          mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"unknown TTA mode {mode!r}")


@torch.no_grad()
def predict_log_proba(model: nn.Module, images: np.ndarray | torch.Tensor, ctx: StepContext,
                      tta: str = "none", crop: int | None = None, batch_size: int = 512
                      ) -> torch.Tensor:
    """Log-probabilities of uint8 images, the softmax averaged over the TTA views.

    The model is put in eval mode; batches are normalized with `ctx.mean`/`ctx.std`, moved to
    `ctx.device`, put in the model's memory format and run under `ctx`'s autocast dtype.

    Args:
        images: uint8 (N, H, W) pixels 0-255, the prepared size (48), on any device.
        tta, crop: see `tta_views` (the input size is `ctx.input_size`).
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
        for view in tta_views(x, tta, crop, ctx.input_size):
            with autocast(ctx.device, ctx.amp_dtype):
                logits = model(ctx.prepare(view))
            views.append(F.log_softmax(logits.float(), dim=1))
        stacked = torch.stack(views)
        out.append((stacked[0] if len(views) == 1 else
                    torch.logsumexp(stacked, 0) - np.log(len(views))).cpu())
    return torch.cat(out) if out else torch.empty(0)


def adjust_logits(logits: torch.Tensor, class_counts: list[int] | None, tau: float
                  ) -> torch.Tensor:
    """Post-hoc logit adjustment: `logits - tau * log(prior)`, prior = the training class
    frequencies (Menon et al. 2021, "Long-tail learning via logit adjustment", ICLR, eq. 10),
    which trades accuracy on frequent classes for recall on rare ones (disgust).

    Args:
        logits: float (N, C) logits or log-probabilities.
        class_counts: training images per class (C,); None or tau 0: `logits` unchanged.
        tau: the adjustment's strength (1 is the paper's Bayes-optimal choice for balanced
            error); choose it on val.

    Returns:
        float (N, C).
    """
    if not tau or not class_counts:
        return logits
    counts = torch.tensor(class_counts, dtype=torch.float32).clamp_min(1)
    return logits - tau * (counts / counts.sum()).log().to(logits.device)


@dataclass
class Classifier:
    """A trained model with what it needs to classify raw pixels.

    Attributes:
        model: the network in eval mode, `channels_last`. class_names: output order.
        ctx: CPU, fp32, the checkpoint's normalization ([0, 1] units) and input size (the
        training crop). image_size: the side of the images it takes (the prepared images),
        pixels. source: where it was loaded from. class_counts: training images per class
        (None in checkpoints written before they were recorded).
    """

    model: nn.Module
    class_names: list[str]
    ctx: StepContext
    image_size: int
    source: str
    class_counts: list[int] | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Classifier:
        """Load a checkpoint of the train stage (`torch.load(weights_only=True)`), the model in
        `channels_last` memory format.

        Raises:
            CheckpointError: see `ferpipe.model.checkpoint.load_checkpoint`.
        """
        from ferpipe.model.checkpoint import load_checkpoint

        model, ckpt = load_checkpoint(path)
        model = model.to(memory_format=torch.channels_last)
        size = int(ckpt["image_size"])
        input_size = int(ckpt.get("input_size", size))
        ctx = StepContext(torch.device("cpu"), float(ckpt["mean"]), float(ckpt["std"]),
                          channels_last=True, input_size=input_size if input_size < size else None)
        counts = ckpt.get("class_counts")
        return cls(model, list(ckpt["class_names"]), ctx, size, str(path),
                   [int(n) for n in counts] if counts else None)

    def predict(self, images: np.ndarray, tta: str = "none", crop: int | None = None,
                batch_size: int = 256) -> np.ndarray:
        """Probabilities float32 (N, C) for uint8 images (N, image_size, image_size)."""
        return predict_log_proba(self.model, images, self.ctx, tta, crop, batch_size).exp().numpy()
def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (B, H, W) or float [0, 1] (B, 1, H, W) -> normalized float32 (B, 1, H, W)."""
    if images.dtype == torch.uint8:
        images = images.unsqueeze(1).float().div_(255.0)
    return (images - mean) / std


#: The TTA of the README's headline accuracy (params.yaml `evaluate.tta`, chosen on val): this
#: command's default, so it answers as the headline scores. (The served model's default is the
#: `evaluate.tta` its evaluate stage ran with; this one when logged without it.)
DEFAULT_TTA = "ten_crop"

#: The post-hoc logit adjustment tau of the headline (params.yaml `evaluate.logit_adjustment`,
#: chosen on val with `evaluate.tta`), the default of the same commands.
DEFAULT_LOGIT_ADJUSTMENT = 0.5


def probabilities(classifier: Classifier, images: np.ndarray, tta: str = DEFAULT_TTA,
                  logit_adjustment: float = DEFAULT_LOGIT_ADJUSTMENT, crop: int | None = None
                  ) -> np.ndarray:
    """Class probabilities as the evaluate stage scores them: the classifier's TTA-averaged
    probabilities, then post-hoc logit adjustment (`ferpipe.model.inference.adjust_logits`:
    `softmax(log p - tau * log(train class prior))`, Menon et al. 2021) with the classifier's
    training class counts, so the argmax is the evaluate stage's prediction.

    Args:
        classifier: a checkpoint's or ONNX file's `Classifier`; one without class counts (a
            checkpoint or ONNX file written before they were recorded) is not adjusted.
        images: uint8 (N, S, S), S = `classifier.image_size` (48), pixels 0-255.
        tta, crop: see `ferpipe.model.inference.tta_views`. logit_adjustment: tau, a finite
            number >= 0 (0: off).

    Returns:
        float32 (N, C) probabilities, rows summing to 1.

    Raises:
        ValueError: a `logit_adjustment` that is negative, infinite or NaN (`logit adjustment:
            got inf; expected a finite number >= 0`, `ferpipe.core.options`), or see `tta_views`.
    """
    logit_adjustment = check_logit_adjustment(logit_adjustment)
    probs = classifier.predict(images, tta, crop)
    if not logit_adjustment or not classifier.class_counts:
        return probs
    log_probs = torch.from_numpy(probs).clamp_min(torch.finfo(torch.float32).tiny).log()
    adjusted = adjust_logits(log_probs, classifier.class_counts, logit_adjustment)
    return torch.softmax(adjusted, dim=1).numpy()
