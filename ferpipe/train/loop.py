"""The epoch loop and validation, laid out as torchvision's reference classification script:
`train_step`, `train_one_epoch(...)` and `validate(...)` take the model and data explicitly."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ferpipe.core.params import Augment
from ferpipe.data.splits import CLASS_NAMES
from ferpipe.model.device import StepContext, autocast, synchronize
from ferpipe.model.inference import predict_log_proba
from ferpipe.train.augment import augment_batch, mix_batch
from ferpipe.train.distributed import Dist, all_reduce
from ferpipe.train.recipe import TrainingError, update_ema


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               optimizer: torch.optim.Optimizer, loss_fn: nn.Module, ctx: StepContext,
               grad_clip: float = 0.0, scaler: torch.amp.GradScaler | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step: forward (under autocast), loss in fp32, backward, clip, step.

    Args:
        x: normalized float32 (B, 1, H, W) on `ctx.device`, in the model's memory format.
        y: int64 (B,) class indices, or float32 (B, C) class probabilities (mixed batches).
        grad_clip: max global gradient norm (0: off).
        scaler: a GradScaler for fp16 autocast, else None.

    Returns:
        (loss, logits): the detached scalar loss and the (B, C) logits.
    """
    with autocast(ctx.device, ctx.amp_dtype):
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach(), logits.detach()


def train_one_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    indices: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler,
                    loss_fn: nn.Module, ctx: StepContext, aug: Augment, batch_size: int,
                    gen: torch.Generator, grad_clip: float = 0.0, desc: str = "train",
                    scaler: torch.amp.GradScaler | None = None, dist: Dist = Dist(),
                    ema: AveragedModel | None = None, soft: torch.Tensor | None = None,
                    distill_weight: float = 0.0) -> dict[str, Any]:
    """One pass over `indices` in order, `batch_size` at a time, augmenting (and, with an alpha
    on, mixing) each batch.

    Args:
        images: uint8 (N, H, W) on `ctx.device`. labels: int64 (N,) on `ctx.device`.
        indices: int64 sample indices for this process, already shuffled (and sharded under
            torchrun: see `shard_indices`); a trailing partial batch is dropped.
        batch_size: this process's batch size.
        gen: generator on `ctx.device` for the augmentation.
        scheduler: stepped after every optimizer step, or None (a per-epoch schedule).
        dist: the process group; loss and accuracy are summed over all ranks.
        ema: updated after every optimizer step, or None.
        soft: float32 (N, C) teacher probabilities on `ctx.device` (`ferpipe.train.teacher`), or
            None; with it, image i's target is `(1 - distill_weight) * onehot(labels[i]) +
            distill_weight * soft[i]` (not combinable with mixing).

    Returns:
        {"loss": mean loss, "accuracy": fraction correct (against the label with the largest
         weight when mixed), "images": images seen by all ranks,
         "seconds": wall seconds, "images_per_s": images/s over all ranks, "lrs": [lr per step]}
    """
    model.train()
    mixing = bool(aug.mixup_alpha or aug.cutmix_alpha)
    steps = len(indices) // batch_size
    total_loss = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    lrs: list[float] = []
    synchronize(ctx.device)
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=desc, leave=False, mininterval=1.0,
                     disable=not dist.is_main):
        idx = indices[step * batch_size:(step + 1) * batch_size]
        x = augment_batch(images[idx], aug, ctx.mean, ctx.std, gen)
        y = target = labels[idx]
        if soft is not None and distill_weight > 0:
            target = torch.lerp(F.one_hot(y, soft.shape[1]).float(), soft[idx], distill_weight)
        elif mixing:
            x, target = mix_batch(x, y, aug, len(CLASS_NAMES), gen)
            y = target.argmax(1)
        loss, logits = train_step(model, ctx.prepare(x), target, optimizer, loss_fn, ctx,
                                  grad_clip, scaler)
        lrs.append(optimizer.param_groups[0]["lr"])
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            update_ema(ema, _bare(model))
        total_loss += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
    synchronize(ctx.device)  # the clock then reads the device's time, not the time to queue
    seconds = time.perf_counter() - start
    # The epoch's one read of device values; every rank has `steps` batches of `batch_size`.
    sums = all_reduce(torch.stack([total_loss.double(), correct.double()]), dist).tolist()
    if not np.isfinite(sums[0]):  # after the reduction: every rank stops, none waits
        raise TrainingError(f"{desc}: the training loss became {sums[0]}; nothing of this "
                            f"epoch is saved (lower train.lr, or set train.grad_clip)")
    seen = steps * batch_size * dist.world_size
    return {"loss": sums[0] / max(seen, 1), "accuracy": sums[1] / max(seen, 1),
            "images": seen, "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9),
            "lrs": lrs}


def validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext,
             dist: Dist = Dist(), batch_size: int = 512) -> dict[str, float]:
    """Validation loss, accuracy and balanced accuracy, each rank scoring
    images[rank::world_size], summed over ranks.

    Args:
        images: uint8 (N, H, W); labels: int64 (N,).
        ctx: as for `predict_log_proba` (the centre crop of `ctx.input_size` is scored).

    Returns:
        {"loss": mean cross-entropy over all N images, "accuracy": fraction correct,
        "balanced_accuracy": the mean over the classes present of each class's recall}: the
        same numbers on every rank, equal to a single-process run up to float rounding.
    """
    shard = slice(dist.rank, None, dist.world_size)
    y = labels[shard].cpu()
    classes = len(CLASS_NAMES)
    loss_sum, hits, counts = 0.0, torch.zeros(classes), torch.zeros(classes)
    if len(y):  # a rank can get no images when val is smaller than the number of processes
        log_probs = predict_log_proba(model, images[shard], ctx, batch_size=batch_size)
        loss_sum = F.nll_loss(log_probs, y, reduction="sum").item()
        right = log_probs.argmax(1) == y
        hits = torch.bincount(y[right], minlength=classes).double()
        counts = torch.bincount(y, minlength=classes).double()
    total = all_reduce(torch.cat([torch.tensor([loss_sum], dtype=torch.float64), hits.double(),
                                  counts.double()]).to(ctx.device), dist).cpu()
    hits, counts = total[1:1 + classes], total[1 + classes:]
    n = counts.sum().item()
    present = counts > 0
    return {"loss": total[0].item() / max(n, 1), "accuracy": hits.sum().item() / max(n, 1),
            "balanced_accuracy": (hits[present] / counts[present]).mean().item()
            if present.any() else 0.0}

def _bare(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel and torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
