"""`fit`: runs the epochs of the recipe (`ferpipe.train.recipe`, `ferpipe.train.loop`), keeps the
best model by validation accuracy and, after every epoch, hands the state to the resume checkpoint
(`ferpipe.train.resume`). Device and precision (`ferpipe.model.device`) and data-parallel helpers
(`ferpipe.train.distributed`) live beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ferpipe.core.errors import ParamsError
from ferpipe.core.params import Augment, Train
from ferpipe.model.device import StepContext, resolve_compile
from ferpipe.train.augment import clean_augment, clean_epochs
from ferpipe.train.distributed import Dist, gather_states, shard_indices, wrap_model
from ferpipe.train.loop import train_one_epoch, validate
from ferpipe.train.recipe import TrainingError, make_ema, make_recipe
from ferpipe.train.resume import Resume


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



def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fit(model: nn.Module, train: dict[str, np.ndarray], val: dict[str, np.ndarray],
        cfg: Train, aug: Augment, ctx: StepContext,
        on_best: Callable[[int, float, dict[str, torch.Tensor]], None],
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        dist: Dist = Dist(), resume: Resume | None = None,
        teacher_probs: np.ndarray | None = None) -> FitResult:
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
        teacher_probs: float32 (N, C) teacher probabilities of the train images
            (`ferpipe.train.teacher.load_targets`), blended into the targets with weight
            `cfg.distill_weight`; None: the hard labels only. The last
            `round(cfg.epochs * aug.clean_last)` epochs train with `clean_augment(aug)`.

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
    soft = None if teacher_probs is None else torch.from_numpy(teacher_probs).float().to(device)
    clean_from = cfg.epochs - clean_epochs(cfg.epochs, aug.clean_last)  # last "noisy" epoch
    clean_aug = clean_augment(aug)

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
                                clean_aug if epoch > clean_from else aug, per_rank, aug_gen,
                                cfg.grad_clip, desc=f"epoch {epoch}/{cfg.epochs}", scaler=scaler,
                                dist=dist, ema=ema, soft=soft,
                                distill_weight=cfg.distill_weight)
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
