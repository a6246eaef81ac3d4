"""The training loop: device and AMP choice, optimizer, one-cycle schedule, epochs, validation.

Laid out as torchvision's reference classification script: `train_one_epoch(...)` and
`validate(...)` take the model and data explicitly; `fit(...)` runs the epochs, keeps the best
model by validation accuracy and, after every epoch, writes a resume checkpoint (`Resume`) from
which an interrupted run continues where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ferpipe.augment import AugmentConfig, augment_batch, normalize
from ferpipe.data import CLASS_NAMES

OPTIMIZERS = ("adamw", "sgd")
AMP_CHOICES = ("auto", "bf16", "fp16", "none")
CLASS_WEIGHTS = ("none", "inverse_frequency")


# --------------------------------------------------------------------------- device and precision


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; otherwise `torch.device(name)`.

    Raises:
        ValueError: a device that is named but not available (e.g. `cuda` on a CPU machine).
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device: '{name}' requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"train.device: '{name}' requested but MPS is not available")
    return device


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16).

    Without them bf16 autocast on the CPU is emulated and usually slower than fp32.
    Reads /proc/cpuinfo (Linux); False elsewhere.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp` on `device`, or None for full fp32.

    `auto`: bf16 on CUDA devices that support it and on CPUs with native bf16; fp32 elsewhere.

    Raises:
        ValueError: unknown choice, or fp16 requested off CUDA.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"train.amp: '{amp}' is not one of {list(AMP_CHOICES)}")
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp: fp16 needs a CUDA device; use bf16 or none")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` for `dtype`, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- recipe pieces


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum. `lr` is replaced by the one-cycle schedule.

    Raises:
        ValueError: unknown optimizer name.
    """
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True,
                               weight_decay=weight_decay)
    raise ValueError(f"train.optimizer: '{name}' is not one of {list(OPTIMIZERS)}")


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int,
              pct_start: float) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's OneCycleLR (Smith & Topin 2019, "Super-Convergence", arXiv:1708.07120).

    Warms up from max_lr / 25 to `max_lr` over `pct_start` of the steps, then anneals (cosine)
    to max_lr / 1e4; stepped once per batch.
    """
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps,
                                               pct_start=pct_start)


def class_weights(labels: np.ndarray, mode: str, num_classes: int) -> torch.Tensor | None:
    """Loss weights per class: None, or `inverse_frequency` = N / (num_classes * count_c).

    Raises:
        ValueError: unknown mode.
    """
    if mode == "none":
        return None
    if mode == "inverse_frequency":
        counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
        weights = len(labels) / (num_classes * np.maximum(counts, 1))
        return torch.tensor(weights, dtype=torch.float32)
    raise ValueError(f"train.class_weights: '{mode}' is not one of {list(CLASS_WEIGHTS)}")


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    """This process's place in a `torchrun` job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and logs to MLflow."""
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join the process group when launched by `torchrun` (WORLD_SIZE > 1), and pick the device.

    Backend NCCL on CUDA (one GPU per process: `cuda:<LOCAL_RANK>`), gloo on the CPU. Without
    torchrun this is `resolve_device(device_name)` and rank 0 of 1.

    Raises:
        ValueError: as `resolve_device`, or fewer CUDA devices than local processes.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size <= 1:
        return Dist(), device
    import torch.distributed as torch_dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"train.device: local rank {local_rank} needs a GPU but only "
                             f"{torch.cuda.device_count()} are visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size()), device


def shutdown_distributed() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def all_reduce(values: torch.Tensor, dist: Dist, op: str = "sum") -> torch.Tensor:
    """Reduce a tensor over all ranks in place (`op` "sum" or "max"); unchanged when not
    distributed."""
    if dist.enabled:
        import torch.distributed as torch_dist

        reduce_op = {"sum": torch_dist.ReduceOp.SUM, "max": torch_dist.ReduceOp.MAX}[op]
        torch_dist.all_reduce(values, op=reduce_op)
    return values


def shard_indices(order: torch.Tensor, batch_size: int, dist: Dist) -> torch.Tensor:
    """This rank's sample indices for one epoch, in step order.

    Args:
        order: int64 (N,), a permutation shared by all ranks (same seed).
        batch_size: the global batch (`train.batch_size`), split evenly over the ranks.

    Returns:
        int64 (steps * batch_size / world_size,): for step s, rank r takes the r-th slice of
        global batch s, so the ranks see disjoint samples and together the same batches a
        single process would; the last partial global batch is dropped.

    Raises:
        ValueError: the batch size is not divisible by the number of processes.
    """
    if batch_size % dist.world_size:
        raise ValueError(f"train.batch_size: {batch_size} is not divisible by the "
                         f"{dist.world_size} processes")
    steps = len(order) // batch_size
    per_rank = batch_size // dist.world_size
    return order[:steps * batch_size].view(steps, dist.world_size, per_rank)[:, dist.rank].reshape(-1)


# --------------------------------------------------------------------------- loop


@dataclass
class StepContext:
    """What a train or eval step needs besides the model and data."""

    device: torch.device
    mean: float
    std: float
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Put a normalized float batch (B, 1, H, W) in the model's memory format."""
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               optimizer: torch.optim.Optimizer, loss_fn: nn.Module, ctx: StepContext,
               grad_clip: float = 0.0, scaler: torch.amp.GradScaler | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step: forward (under autocast), loss in fp32, backward, clip, step.

    Args:
        x: normalized float32 (B, 1, H, W) on `ctx.device`, in the model's memory format.
        y: int64 (B,) class indices.
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
                    loss_fn: nn.Module, ctx: StepContext, aug: AugmentConfig, batch_size: int,
                    gen: torch.Generator, grad_clip: float = 0.0, desc: str = "train",
                    scaler: torch.amp.GradScaler | None = None, dist: Dist = Dist()
                    ) -> dict[str, Any]:
    """One pass over `indices` in order, `batch_size` at a time, augmenting each batch.

    Args:
        images: uint8 (N, H, W) on `ctx.device`. labels: int64 (N,) on `ctx.device`.
        indices: int64 sample indices for this process, already shuffled (and sharded under
            torchrun: see `shard_indices`); a trailing partial batch is dropped.
        batch_size: this process's batch size.
        gen: generator on `ctx.device` for the augmentation.
        dist: the process group; loss and accuracy are summed over all ranks.

    Returns:
        {"loss": mean loss, "accuracy": fraction correct, "images": images seen by all ranks,
         "seconds": wall seconds, "images_per_s": images/s over all ranks, "lrs": [lr per step]}
    """
    model.train()
    steps = len(indices) // batch_size
    total_loss = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    lrs: list[float] = []
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=desc, leave=False, mininterval=1.0,
                     disable=not dist.is_main):
        idx = indices[step * batch_size:(step + 1) * batch_size]
        x = ctx.prepare(augment_batch(images[idx], aug, ctx.mean, ctx.std, gen))
        y = labels[idx]
        loss, logits = train_step(model, x, y, optimizer, loss_fn, ctx, grad_clip, scaler)
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
        total_loss += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
    seconds = time.perf_counter() - start
    sums = all_reduce(torch.tensor([total_loss.item(), correct.item(), steps * batch_size],
                                       dtype=torch.float64, device=ctx.device), dist).tolist()
    seen = int(sums[2])
    return {"loss": sums[0] / max(seen, 1), "accuracy": sums[1] / max(seen, 1),
            "images": seen, "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9),
            "lrs": lrs}


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, ctx: StepContext,
                   batch_size: int = 512) -> torch.Tensor:
    """Logits for uint8 images (N, H, W) (any device), as float32 (N, num_classes) on the CPU."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(ctx.device), ctx.mean, ctx.std)
        with autocast(ctx.device, ctx.amp_dtype):
            out.append(model(ctx.prepare(x)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext,
             dist: Dist = Dist(), batch_size: int = 512) -> dict[str, float]:
    """Validation loss and accuracy, each rank scoring images[rank::world_size], summed over ranks.

    Args:
        images: uint8 (N, H, W); labels: int64 (N,).

    Returns:
        {"loss": mean cross-entropy over all N images, "accuracy": fraction correct}: the same
        numbers on every rank, equal to a single-process run up to float rounding.
    """
    shard = slice(dist.rank, None, dist.world_size)
    y = labels[shard].cpu()
    loss_sum = correct = 0.0
    if len(y):  # a rank can get no images when val is smaller than the number of processes
        logits = predict_logits(model, images[shard], ctx, batch_size)
        loss_sum = F.cross_entropy(logits, y, reduction="sum").item()
        correct = (logits.argmax(1) == y).sum().item()
    total = all_reduce(torch.tensor([loss_sum, correct, len(y)], dtype=torch.float64,
                                    device=ctx.device), dist).tolist()
    return {"loss": total[0] / max(total[2], 1), "accuracy": total[1] / max(total[2], 1)}


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


def fingerprint(params: dict[str, Any], files: list[str | Path], world_size: int = 1) -> str:
    """sha256 over the params used, the bytes of `files` and the number of processes.

    A resume checkpoint is used only when its fingerprint equals the new run's, so a change of
    any param, of the training data or of the process count starts over.
    """
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(f"world_size={world_size}".encode())
    for path in files:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class Resume:
    """Where `fit` keeps its resume checkpoint, and whether it may continue from it.

    The checkpoint (written by rank 0 after every epoch, to a temp name then renamed, so a kill
    never leaves a half-written one) holds: the fingerprint, the last completed epoch, the model,
    optimizer, scheduler and GradScaler `state_dict`s, the best model's `state_dict`, the RNG
    states (torch's global CPU and CUDA ones, the data-order generator and every rank's
    augmentation generator), the FitResult so far, and `extra` (e.g. the MLflow run id).

    Attributes:
        path: the checkpoint file (e.g. models/resume.pt).
        fingerprint: see `fingerprint()`; a checkpoint with another fingerprint is ignored.
        extra: saved with each checkpoint, returned on load.
        state: the loaded checkpoint, set by `load()` (None: start from epoch 1).
    """

    path: Path
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        """Read the checkpoint with `torch.load(weights_only=True)` if it exists and matches.

        Returns:
            The checkpoint dict, or None (no file, or written for other params/data; such a
            file is left alone and replaced after this run's first epoch). Also kept in `state`.
        """
        self.state = None
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            print(f"{self.path}: written for other params or data; not resumed, starting over")
            return None
        self.state = state
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` (plus fingerprint and extra) atomically."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**state, "fingerprint": self.fingerprint, "extra": self.extra}, tmp)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        """Delete the checkpoint (the run finished)."""
        self.path.unlink(missing_ok=True)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def gather_states(state: torch.Tensor, dist: Dist) -> list[torch.Tensor]:
    """Every rank's generator state (uint8 tensor), in rank order; [state] when not distributed."""
    if not dist.enabled:
        return [state]
    import torch.distributed as torch_dist

    states: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(states, state)
    return states


def wrap_model(model: nn.Module, device: torch.device, dist: Dist = Dist(),
               compile: bool = False) -> nn.Module:
    """The module the loop calls: `model` wrapped in DistributedDataParallel under torchrun, then
    compiled with `torch.compile` when asked. Both share `model`'s parameters, so saving
    `model.state_dict()` saves the trained weights."""
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index]
                                        if device.type == "cuda" else None)
    if compile:
        model = torch.compile(model)
    return model


def make_loss(labels: np.ndarray, cfg: dict[str, Any], device: torch.device) -> nn.Module:
    """Cross-entropy with the `train.label_smoothing` and `train.class_weights` of `cfg`
    (weights computed from the int64 training labels (N,))."""
    weights = class_weights(labels, cfg["class_weights"], len(CLASS_NAMES))
    return nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device),
                               label_smoothing=cfg["label_smoothing"])


def fit(model: nn.Module, train: dict[str, np.ndarray], val: dict[str, np.ndarray],
        cfg: dict[str, Any], aug: AugmentConfig, ctx: StepContext,
        on_best: Callable[[int, float, dict[str, torch.Tensor]], None],
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        dist: Dist = Dist(), resume: Resume | None = None) -> FitResult:
    """Train for `cfg["epochs"]` epochs with the one-cycle schedule, validating after each.

    Args:
        train, val: prepared splits (`images` uint8 (N, 48, 48), `labels` int64 (N,)); they are
            copied to `ctx.device` once and stay there.
        cfg: the `train` params section (lr, epochs, batch_size, optimizer, weight_decay,
            momentum, pct_start, grad_clip, label_smoothing, class_weights, seed; optional
            compile).
        on_best: called as on_best(epoch, val_accuracy, state_dict) when validation accuracy
            improves, and once at the start of a resumed run with the best so far (the caller
            saves the checkpoint). Called on rank 0 only.
        on_epoch: called with each history row (epoch, train_loss, train_accuracy, val_loss,
            val_accuracy, lr, seconds, images_per_s) (e.g. to log it to MLflow). Rank 0 only.
        dist: under torchrun, each rank trains on its own shard of every global batch
            (`shard_indices`) with gradients all-reduced by DistributedDataParallel; the
            order is seeded identically on all ranks, the augmentation per rank.
        resume: where to write a resume checkpoint after every epoch; when its `state` is set
            (see `Resume.load`), training continues after that state's epoch with the same
            weights, optimizer, schedule, RNG states and history, so the result equals an
            uninterrupted run's. None: no checkpoint.

    Raises:
        ValueError: the batch size is larger than the training split or not divisible by the
            number of processes.
    """
    device = ctx.device
    x_train = torch.from_numpy(train["images"]).to(device)
    y_train = torch.from_numpy(train["labels"]).to(device)
    x_val = torch.from_numpy(val["images"]).to(device)
    y_val = torch.from_numpy(val["labels"]).to(device)
    steps = len(y_train) // cfg["batch_size"]
    if steps == 0:
        raise ValueError(f"train.batch_size: {cfg['batch_size']} is larger than the training "
                         f"split ({len(y_train)} images)")
    per_rank = cfg["batch_size"] // dist.world_size

    order_gen = torch.Generator(device=device)
    order_gen.manual_seed(int(cfg["seed"]))
    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(int(cfg["seed"]) + 1 + dist.rank)
    net = wrap_model(model, device, dist, bool(cfg.get("compile", False)))
    optimizer = make_optimizer(model, cfg["optimizer"], cfg["lr"], cfg["weight_decay"],
                               cfg.get("momentum", 0.9))
    scheduler = one_cycle(optimizer, cfg["lr"], cfg["epochs"] * steps, cfg["pct_start"])
    loss_fn = make_loss(train["labels"], cfg, device)
    scaler = torch.amp.GradScaler("cuda") if ctx.amp_dtype == torch.float16 else None

    result = FitResult()
    best_state: dict[str, torch.Tensor] = {}
    state = resume.state if resume is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        order_gen.set_state(state["order_gen"])
        aug_gen.set_state(state["aug_gen"][dist.rank])
        result = FitResult(**state["result"])
        result.resumed_from = state["epoch"]
        best_state = state["best_model"]
        if dist.is_main:
            print(f"resuming after epoch {state['epoch']}/{cfg['epochs']} from {resume.path}",
                  flush=True)
            on_best(result.best_epoch, result.best_val_accuracy, best_state)

    for epoch in range(result.resumed_from + 1, cfg["epochs"] + 1):
        start = time.perf_counter()
        order = torch.randperm(len(y_train), generator=order_gen, device=device)
        stats = train_one_epoch(net, x_train, y_train,
                                shard_indices(order, cfg["batch_size"], dist), optimizer,
                                scheduler, loss_fn, ctx, aug, per_rank, aug_gen,
                                cfg["grad_clip"], desc=f"epoch {epoch}/{cfg['epochs']}",
                                scaler=scaler, dist=dist)
        val_stats = validate(model, x_val, y_val, ctx, dist)  # the bare module: no DDP sync
        seconds = time.perf_counter() - start
        result.images += stats["images"]
        result.step_seconds += stats["seconds"]
        result.wall_seconds += seconds
        result.lrs.extend(stats["lrs"])
        row = {"epoch": epoch, "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
               "val_loss": val_stats["loss"], "val_accuracy": val_stats["accuracy"],
               "lr": stats["lrs"][-1], "seconds": seconds, "images_per_s": stats["images_per_s"]}
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
                best_state = _cpu_state(model)
                on_best(epoch, row["val_accuracy"], best_state)
        if on_epoch is not None and dist.is_main:
            on_epoch(row)
        aug_states = gather_states(aug_gen.get_state(), dist)
        if resume is not None and dist.is_main:
            resume.save({
                "epoch": epoch, "model": _cpu_state(model), "best_model": best_state,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "torch_rng": torch.get_rng_state(), "order_gen": order_gen.get_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "aug_gen": aug_states,
                "result": {k: v for k, v in vars(result).items() if k != "resumed_from"}})
    return result
