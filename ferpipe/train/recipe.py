"""The training recipe: optimizer, one-cycle schedule, loss and the EMA of the weights.

`make_recipe` builds the optimizer, schedule and loss for both the train stage and the benchmark.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ferpipe.core.errors import FerpipeError
from ferpipe.core.params import Train
from ferpipe.data.splits import CLASS_NAMES
from ferpipe.model.device import StepContext


class TrainingError(FerpipeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


# --------------------------------------------------------------------------- recipe pieces


#: Devices whose optimizers get torch's fused kernels (one kernel over all parameters instead of
#: a handful of ops per parameter tensor): the same AdamW/SGD update, up to float rounding.
FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")


def make_optimizer(model: nn.Module, cfg: Train) -> torch.optim.Optimizer:
    """`train.optimizer`: AdamW, or SGD with Nesterov momentum (`train.momentum`), with
    `train.weight_decay`, over the parameter groups of `param_groups` (frozen parameters left
    out; the backbone at `train.backbone_lr_scale` x the head's LR). The LR is then driven by
    `train.scheduler`. With `train.fused` on, and the parameters on the CPU or CUDA, torch's
    fused implementation is used (`fused=True`: on a 2-core CPU the AdamW step took about 5 ms
    per batch of 128 instead of about 20 with the per-tensor ops; docs/speed.md)."""
    groups = param_groups(model, cfg)
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = cfg.fused and bool(devices) and devices <= set(FUSED_OPTIMIZER_DEVICES)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                               weight_decay=cfg.weight_decay, fused=fused or None)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                             fused=fused or None)


def param_groups(model: nn.Module, cfg: Train) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: differential learning rates.

    Only parameters with `requires_grad` (not frozen by `model.freeze`) are optimized. With
    `train.backbone_lr_scale` = 1 they form one group at `train.lr`; below 1, the head (the
    model's `fc`: ResNet18's classifier, SmallCNN's MLP) comes first at `train.lr` and every
    other parameter (the backbone) second at `train.lr * backbone_lr_scale`. Each group's
    `lr_scale` key holds its factor, which `one_cycle` keeps through the schedule. A model
    without `fc` is one group. The recipe of seed project 002, which "freezes early layers and
    uses AdamW with differential rates".
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = getattr(model, "fc", None)
    scale = cfg.backbone_lr_scale
    if scale == 1.0 or not isinstance(head, nn.Module):
        return [{"params": trainable, "lr": cfg.lr, "lr_scale": 1.0}]
    in_head = {id(p) for p in head.parameters()}
    groups = [{"params": [p for p in trainable if id(p) in in_head], "lr": cfg.lr,
               "lr_scale": 1.0},
              {"params": [p for p in trainable if id(p) not in in_head], "lr": cfg.lr * scale,
               "lr_scale": scale}]
    return [group for group in groups if group["params"]]


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float | list[float], total_steps: int,
              pct_start: float) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's OneCycleLR (Smith & Topin 2019, "Super-Convergence", arXiv:1708.07120).

    Warms up from max_lr / 25 to `max_lr` over `pct_start` of the steps, then anneals (cosine)
    to max_lr / 1e4; stepped once per batch. `max_lr` is one peak per parameter group, or one
    float that each group scales by its `lr_scale` (see `param_groups`), so the backbone's LR
    stays `train.backbone_lr_scale` x the head's at every step.
    """
    if not isinstance(max_lr, list):
        max_lr = [max_lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps,
                                               pct_start=pct_start)


def class_weights(labels: np.ndarray, mode: str, num_classes: int) -> torch.Tensor | None:
    """Loss weights per class for `train.class_weights`: None for `none`, else
    `inverse_frequency` = N / (num_classes * count_c), float32 (num_classes,), from int64
    labels (N,)."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def make_loss(labels: np.ndarray, cfg: Train, device: torch.device) -> nn.Module:
    """Cross-entropy with `train.label_smoothing` and `train.class_weights` (weights computed
    from the int64 training labels (N,))."""
    weights = class_weights(labels, cfg.class_weights, len(CLASS_NAMES))
    return nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device),
                               label_smoothing=cfg.label_smoothing)


@dataclass
class Recipe:
    """The optimizer, LR schedule, loss and (fp16 only) GradScaler of one training run.

    `scheduler` is stepped after every optimizer step when `per_step` (one-cycle), else once per
    epoch with the validation loss (`ReduceLROnPlateau`).
    """

    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    scaler: torch.amp.GradScaler | None
    per_step: bool = True


def make_recipe(model: nn.Module, cfg: Train, labels: np.ndarray, ctx: StepContext,
                total_steps: int) -> Recipe:
    """Build what `fit` and the benchmark train with, from the `train` params.

    Args:
        model: the bare module (not DDP-wrapped or compiled) whose parameters are optimized.
        labels: int64 (N,) training labels (for `train.class_weights`).
        total_steps: optimizer steps of the whole run (epochs x steps per epoch).
    """
    optimizer = make_optimizer(model, cfg)
    if cfg.scheduler == "plateau":
        # Seed 002's recipe: a constant LR cut by plateau_factor when val loss stops falling.
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    else:
        scheduler = one_cycle(optimizer, cfg.lr, total_steps, cfg.pct_start)
    scaler = torch.amp.GradScaler("cuda") if ctx.amp_dtype == torch.float16 else None
    return Recipe(optimizer, scheduler, make_loss(labels, cfg, ctx.device), scaler,
                  per_step=cfg.scheduler != "plateau")


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s weights and buffers, with torch's
    `AveragedModel` and `get_ema_multi_avg_fn(decay)` (ema = decay * ema + (1 - decay) * w after
    every optimizer step; update it with `update_ema`); None when `decay` is 0. Its
    `n_averaged` counter stays on the CPU."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@torch.no_grad()
def update_ema(ema: AveragedModel, model: nn.Module) -> None:
    """`ema.update_parameters(model)` without waiting for the device.

    The same update as torch's (the first copies the weights and buffers; later ones apply
    `ema.multi_avg_fn`, i.e. `torch._foreach_lerp_` by 1 - decay for floating-point tensors),
    but the copy-or-average decision reads `ema.n_averaged` where it lives, on the CPU, and the
    counter is never copied to the device: `AveragedModel.update_parameters` copies it to the
    GPU once per dtype group every step, a host sync each time.

    Raises:
        ValueError: `model` has other parameters or buffers than the averaged copy.
    """
    averaged = list(itertools.chain(ema.module.parameters(), ema.module.buffers()))
    current = [t.detach() for t in itertools.chain(model.parameters(), model.buffers())]
    if len(averaged) != len(current):
        raise ValueError(f"update_ema: the model has {len(current)} parameters and buffers, "
                         f"its average {len(averaged)}")
    if int(ema.n_averaged) == 0:  # n_averaged is a CPU tensor: no device sync
        torch._foreach_copy_(averaged, current)
    else:
        groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
        for a, c in zip(averaged, current):
            pair = groups.setdefault((a.device, a.dtype), ([], []))
            pair[0].append(a)
            pair[1].append(c)
        for tensors, sources in groups.values():
            ema.multi_avg_fn(tensors, sources, None)
    ema.n_averaged += 1


# --------------------------------------------------------------------------- loop
