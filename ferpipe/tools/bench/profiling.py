"""`ferpipe-bench --profile N`: where the loop's time goes by kind of op (`torch.profiler`), and
the time of one validation."""

from __future__ import annotations

import time
from typing import Any

import torch

from ferpipe.tools.bench.setup import WARMUP, Setup, sync
from ferpipe.train.loop import train_one_epoch

#: Profile categories by aten op name (self time; the first matching entry wins).
PROFILE_CATEGORIES = (
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("convolution", "conv2d")),
    ("batch norm", ("batch_norm",)),
    ("ReLU", ("threshold_backward", "relu", "clamp_min")),
    ("max-pool", ("max_pool",)),
    ("optimizer", ("_fused_adamw", "_fused_sgd", "_foreach_", "lerp", "addcdiv", "addcmul",
                   "sqrt", "Optimizer.")),
    ("gradient clipping", ("linalg_vector_norm", "norm")),
    ("loss and linear head", ("cross_entropy", "log_softmax", "nll_loss", "addmm", "mm")),
    ("augmentation", ("grid_sampler", "affine_grid", "uniform", "rand", "index", "bernoulli",
                      "clamp", "where", "stack")),
    ("copies and casts (autocast, memory format)", ("copy_", "_to_copy", "clone",
                                                     "contiguous")),
    ("adds, fills, other elementwise", ("add", "fill_", "zero_", "mul", "div", "sub")),
)


#: Validation batch sizes `profile_loop` times.
VAL_BATCHES = (256, 512, 1024)


def profile_loop(s: Setup, images: torch.Tensor, labels: torch.Tensor, val: dict,
                 batches: int, gen: torch.Generator) -> dict[str, Any]:
    """Where the time of the project's loop goes: `torch.profiler` over `batches` batches of
    `train_one_epoch` (after a warm-up), self CPU time summed by `PROFILE_CATEGORIES`, plus the
    seconds of one validation of the val split (`val`: `images` uint8 (N, 48, 48), `labels`)
    at each batch size of `VAL_BATCHES` (the train stage's is 512), against the seconds of a
    whole epoch at the profiled speed.

    Returns:
        {"batches", "ms_per_batch" (profiled, so a little slower than unprofiled),
         "categories": {name: share of the self time}, "top_ops": the 12 costliest ops
         with their ms per batch, "validation_seconds", "epoch_train_seconds_estimate"}
    """
    from dataclasses import replace

    from torch.profiler import ProfilerActivity, profile

    from ferpipe.train.loop import validate

    order = torch.randperm(len(labels), generator=gen, device=s.device)
    need = (WARMUP + batches) * s.batch
    train_one_epoch(s.net, images, labels, order[:WARMUP * s.batch], s.optimizer, s.scheduler,
                    s.loss_fn, s.ctx, s.aug, s.batch, gen, s.grad_clip, desc="warm-up")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        train_one_epoch(s.net, images, labels, order[WARMUP * s.batch:need], s.optimizer,
                        s.scheduler, s.loss_fn, s.ctx, s.aug, s.batch, gen, s.grad_clip,
                        desc="profile")
        seconds = time.perf_counter() - start
    totals: dict[str, float] = {name: 0.0 for name, _ in PROFILE_CATEGORIES}
    totals["other"] = 0.0
    ops = []
    for event in prof.key_averages():
        us = event.self_cpu_time_total
        if us <= 0:
            continue
        ops.append((event.key, us))
        name = event.key.removeprefix("aten::")
        category = next((c for c, keys in PROFILE_CATEGORIES
                         if any(k in name for k in keys)), "other")
        totals[category] += us
    whole = sum(totals.values()) or 1.0
    ms_batch = seconds * 1000 / batches
    eval_ctx = replace(s.ctx, input_size=s.input_size if s.input_size < images.shape[-1]
                       else None)
    vx = torch.from_numpy(val["images"]).to(s.device)
    vy = torch.from_numpy(val["labels"]).to(s.device)
    validate(s.model, vx, vy, eval_ctx)  # warm-up
    by_batch = {}
    for size in VAL_BATCHES:  # the train stage validates at the default, 512
        sync(s.device)
        start = time.perf_counter()
        validate(s.model, vx, vy, eval_ctx, batch_size=size)
        sync(s.device)
        by_batch[size] = time.perf_counter() - start
    val_s = by_batch[512]
    ops.sort(key=lambda op: -op[1])
    return {"batches": batches, "ms_per_batch": ms_batch,
            "categories": {k: v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])
                           if v},
            "top_ops": {k: us / 1000 / batches for k, us in ops[:12]},
            "validation_seconds": val_s, "val_images": len(vy),
            "validation_seconds_by_batch": by_batch,
            "epoch_train_seconds_estimate": len(labels) // s.batch * ms_batch / 1000}
