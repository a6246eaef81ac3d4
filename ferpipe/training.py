"""The training recipe: optimizer, one-cycle schedule, loss, the epoch loop and validation.

Laid out as torchvision's reference classification script: `train_one_epoch(...)` and
`validate(...)` take the model and data explicitly; `fit(...)` runs the epochs, keeps the best
model by validation accuracy and, after every epoch, writes a resume checkpoint
(`ferpipe.resume`). Device and precision (`ferpipe.device`) and data-parallel helpers
(`ferpipe.distributed`) live beside it; `make_recipe` builds the optimizer, schedule and loss for
both the train stage and the benchmark.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ferpipe.augment import augment_batch, mix_batch
from ferpipe.data import CLASS_NAMES
from ferpipe.device import StepContext, autocast, resolve_compile, synchronize
from ferpipe.distributed import Dist, all_reduce, gather_states, shard_indices, wrap_model
from ferpipe.errors import FerpipeError, ParamsError
from ferpipe.inference import predict_log_proba
from ferpipe.params import Augment, Train
from ferpipe.resume import Resume


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
                    ema: AveragedModel | None = None) -> dict[str, Any]:
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
        if mixing:
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


@dataclass
class FitResult:
    """What `fit` returns: per-epoch history rows, per-step LRs, the best epoch, the images
    trained on (all ranks) with the seconds spent in train steps (augmentation included,
    validation not), and the wall seconds of all epochs (over every resumed session)."""

    history: list[dict[str, float]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    images: int = 0
    step_seconds: float = 0.0
    wall_seconds: float = 0.0
    resumed_from: int = 0


def _bare(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel and torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fit(model: nn.Module, train: dict[str, np.ndarray], val: dict[str, np.ndarray],
        cfg: Train, aug: Augment, ctx: StepContext,
        on_best: Callable[[int, float, dict[str, torch.Tensor]], None],
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        dist: Dist = Dist(), resume: Resume | None = None) -> FitResult:
    """Train for `cfg.epochs` epochs with the LR schedule of `cfg.scheduler`, validating after
    each.

    Args:
        train, val: prepared splits (`images` uint8 (N, 48, 48), `labels` int64 (N,)); they are
            copied to `ctx.device` once and stay there.
        cfg: the `train` params (lr, epochs, batch_size, optimizer, weight_decay, momentum,
            pct_start, grad_clip, label_smoothing, ema_decay, scheduler, plateau_*,
            class_weights, seed, compile (`auto` or a mode: see `device.resolve_compile`)).
        aug: the `augment` params; with `aug.crop` smaller than the images, validation scores
            the centre crop.
        on_best: called as on_best(epoch, val_accuracy, state_dict) when validation accuracy
            improves, and once at the start of a resumed run with the best so far (the caller
            saves the checkpoint). With `cfg.ema_decay` on, the averaged model is the one
            validated and passed. Called on rank 0 only.
        on_epoch: called with each history row (epoch, train_loss, train_accuracy, val_loss,
            val_accuracy, val_balanced_accuracy, lr, seconds, images_per_s) (e.g. to log it to
            MLflow). Rank 0 only.
        dist: under torchrun, each rank trains on its own shard of every global batch
            (`shard_indices`) with gradients all-reduced by DistributedDataParallel; the
            order is seeded identically on all ranks, the augmentation per rank.
        resume: where to write a resume checkpoint after every epoch; when its `state` is set
            (see `Resume.load`), training continues after that state's epoch with the same
            weights, optimizer, schedule, RNG states and history, so the result equals an
            uninterrupted run's. None: no checkpoint.

    Raises:
        ParamsError: the batch size is larger than the training split or not divisible by the
            number of processes.
        TrainingError: the training or validation loss became NaN or infinite (nothing of that
            epoch is saved).
    """
    device = ctx.device
    x_train = torch.from_numpy(train["images"]).to(device)
    y_train = torch.from_numpy(train["labels"]).to(device)
    x_val = torch.from_numpy(val["images"]).to(device)
    y_val = torch.from_numpy(val["labels"]).to(device)
    steps = len(y_train) // cfg.batch_size
    if steps == 0:
        raise ParamsError(f"train.batch_size: {cfg.batch_size} is larger than the training "
                          f"split ({len(y_train)} images)")
    per_rank = cfg.batch_size // dist.world_size

    order_gen = torch.Generator(device=device)
    order_gen.manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(cfg.seed + 1 + dist.rank)
    if device.type == "cuda":
        # cuDNN picks the fastest kernel per layer shape once; the shapes never change here.
        torch.backends.cudnn.benchmark = True
    net = wrap_model(model, device, dist, resolve_compile(cfg.compile, device))
    recipe = make_recipe(model, cfg, train["labels"], ctx, cfg.epochs * steps)
    optimizer, scheduler, scaler = recipe.optimizer, recipe.scheduler, recipe.scaler
    ema = make_ema(model, cfg.ema_decay)
    scored = ema.module if ema is not None else model  # validated and kept as best
    side = x_train.shape[-1]
    eval_ctx = replace(ctx, input_size=aug.crop if aug.crop < side else None)

    result = FitResult()
    best_state: dict[str, torch.Tensor] = {}
    state = resume.state if resume is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        order_gen.set_state(state["order_gen"])
        aug_gen.set_state(state["aug_gen"][dist.rank])
        result = FitResult(**state["result"])
        result.resumed_from = state["epoch"]
        best_state = state["best_model"]
        if dist.is_main:
            print(f"resuming after epoch {state['epoch']}/{cfg.epochs} from {resume.path}",
                  flush=True)
            on_best(result.best_epoch, result.best_val_accuracy, best_state)

    for epoch in range(result.resumed_from + 1, cfg.epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(len(y_train), generator=order_gen, device=device)
        stats = train_one_epoch(net, x_train, y_train,
                                shard_indices(order, cfg.batch_size, dist), optimizer,
                                scheduler if recipe.per_step else None, recipe.loss_fn, ctx,
                                aug, per_rank, aug_gen, cfg.grad_clip,
                                desc=f"epoch {epoch}/{cfg.epochs}", scaler=scaler, dist=dist,
                                ema=ema)
        val_stats = validate(scored, x_val, y_val, eval_ctx, dist)  # bare module: no DDP sync
        if not np.isfinite(val_stats["loss"]):
            raise TrainingError(f"epoch {epoch}: the validation loss is {val_stats['loss']}; "
                                f"nothing of this epoch is saved (lower train.lr)")
        if not recipe.per_step:
            scheduler.step(val_stats["loss"])
        seconds = time.perf_counter() - start
        result.images += stats["images"]
        result.step_seconds += stats["seconds"]
        result.wall_seconds += seconds
        result.lrs.extend(stats["lrs"])
        row = {"epoch": epoch, "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
               "val_loss": val_stats["loss"], "val_accuracy": val_stats["accuracy"],
               "val_balanced_accuracy": val_stats["balanced_accuracy"], "lr": stats["lrs"][-1],
               "seconds": seconds, "images_per_s": stats["images_per_s"]}
        result.history.append(row)
        if dist.is_main:
            print(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc "
                  f"{row['train_accuracy']:.4f} | val loss {row['val_loss']:.4f} acc "
                  f"{row['val_accuracy']:.4f} | {seconds:.1f} s, {row['images_per_s']:.0f} "
                  f"images/s", flush=True)
        if row["val_accuracy"] > result.best_val_accuracy:
            result.best_val_accuracy = row["val_accuracy"]
            result.best_epoch = epoch
            if dist.is_main:
                best_state = _cpu_state(scored)
                on_best(epoch, row["val_accuracy"], best_state)
        if on_epoch is not None and dist.is_main:
            on_epoch(row)
        aug_states = gather_states(aug_gen.get_state(), dist)
        if resume is not None and dist.is_main:
            resume.save({
                "epoch": epoch, "model": _cpu_state(model), "best_model": best_state,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "ema": ema.state_dict() if ema is not None else {},
                "torch_rng": torch.get_rng_state(), "order_gen": order_gen.get_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "aug_gen": aug_states,
                "result": {k: v for k, v in vars(result).items() if k != "resumed_from"}})
    return result
