"""`ferpipe-bench --compare SPEC ...`: several params settings measured side by side, in turns, so
that drifting machine speed hits them all alike."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ferpipe.core.errors import ParamsError
from ferpipe.core.params import Params
from ferpipe.model.device import (
    precision_name,
)
from ferpipe.tools.bench.setup import WARMUP, Setup, matmul_tflops, step_flops, with_overrides
from ferpipe.tools.bench.step import bare, pipeline

#: The train stage's defaults before the speed work, as `--compare` overrides: per-tensor
#: optimizer ops, no compiling (the crop folded into the augmentation's sampling grid gives the
#: same images and is not switchable).
OLD_DEFAULT = "train.fused=false,train.compile=false"


def compare(params: Params, specs: list[str], train: dict[str, np.ndarray], stats: dict,
            batches: int, rounds: int, ceiling: bool = True, deadline: float | None = None
            ) -> dict[str, Any]:
    """Train-step speed of several settings side by side, measured in turns.

    Each spec is a set of overrides of `params` (`with_overrides`; the first is the reference
    the speed-ups are relative to). Every round measures, for each setting in turn, `bare` and
    `pipeline` images/s (as the plain benchmark), and the matrix-product ceiling
    (`matmul_tflops`, in the first setting's precision) once, so drifting machine speed hits all
    alike.

    Args:
        train: the prepared training split (`images` uint8 (N, 48, 48), `labels` int64 (N,)).
        stats: `{"mean", "std"}` of the training pixels, [0, 1] units.
        deadline: a `time.monotonic()` after which nothing more is measured; settings not yet
            measured then get `"skipped": "time budget"` (compiling counts: the first round
            compiles).

    Returns:
        {"ceiling_tflops": median over rounds, "ceiling_precision" (both absent with ceiling
         False), "rounds",
         "batches", "variants": [{"spec", "batch_size", "lr", "compile", "fused", "precision",
         "stem", "crop", "gflop_per_image", "bare_images_per_s", "pipeline_images_per_s"
         (medians over rounds), "step_tflops" (pipeline images/s x FLOPs per image),
         "share_of_ceiling", "speedup" (pipeline images/s over the first spec's)}]}

    Raises:
        ParamsError: a bad override (see `with_overrides`), or a batch size whose `batches`
            batches need more images than the training split has.
    """
    setups = []
    for spec in specs:
        variant = with_overrides(params, spec)
        if variant.train.batch_size * (batches + WARMUP) > len(train["labels"]):
            raise ParamsError(f"--compare '{spec}': train.batch_size {variant.train.batch_size} x "
                              f"{batches + WARMUP} batches is more than the "
                              f"{len(train['labels'])} training images; use fewer --batches")
        setups.append((spec, Setup(variant, train["labels"], stats["mean"], stats["std"])))
    device, amp = setups[0][1].device, setups[0][1].amp
    images = torch.from_numpy(train["images"]).to(device)
    labels = torch.from_numpy(train["labels"]).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    pick = torch.Generator().manual_seed(1)
    flops = []
    for _, setup in setups:
        fixed = torch.randperm(len(labels), generator=pick)[:setup.batch]
        flops.append(step_flops(setup, images[fixed], labels[fixed]))
    figures: dict[str, list[float]] = {"ceiling": []}
    for i in range(len(setups)):
        figures[f"bare{i}"], figures[f"pipeline{i}"] = [], []
    late = False
    for r in range(rounds):
        if ceiling:
            figures["ceiling"].append(matmul_tflops(device, amp))
        for i, (_, setup) in enumerate(setups):
            late = deadline is not None and time.monotonic() > deadline
            if late:
                break
            fixed = torch.randperm(len(labels), generator=pick)[:setup.batch]
            figures[f"bare{i}"].append(bare(setup, setup.ctx, images[fixed], labels[fixed],
                                            batches))
            figures[f"pipeline{i}"].append(pipeline(setup, setup.ctx, images, labels, batches,
                                                    gen))
        print(f"round {r + 1}: " + " | ".join(
            f"[{spec or 'params file'}] bare {figures[f'bare{i}'][-1]:.1f}, pipeline "
            f"{figures[f'pipeline{i}'][-1]:.1f}" for i, (spec, _) in enumerate(setups)
            if figures[f"pipeline{i}"])
            + (f" images/s | {precision_name(amp)} matmul {figures['ceiling'][-1]:.3f} TFLOP/s"
               if ceiling
               else ""), flush=True)
        if late:
            break
    result: dict[str, Any] = {"rounds": rounds, "batches": batches, "device": str(device),
                              "threads": torch.get_num_threads()}
    top = float(np.median(figures["ceiling"])) if ceiling else None
    if ceiling:
        result["ceiling_tflops"], result["ceiling_precision"] = top, precision_name(amp)
    rows = []
    for i, (spec, setup) in enumerate(setups):
        if not figures[f"pipeline{i}"]:
            rows.append({"spec": spec, "skipped": "time budget"})
            continue
        pipe = float(np.median(figures[f"pipeline{i}"]))
        row = {"spec": spec, "batch_size": setup.batch, "lr": setup.train.lr,
               "compile": setup.compile, "fused": setup.train.fused,
               "precision": setup.precision, "stem": setup.stem, "crop": setup.input_size,
               "gflop_per_image": flops[i] / 1e9,
               "bare_images_per_s": float(np.median(figures[f"bare{i}"])),
               "pipeline_images_per_s": pipe, "step_tflops": pipe * flops[i] / 1e12}
        if top:
            row["share_of_ceiling"] = row["step_tflops"] / top
        row["speedup"] = pipe / rows[0]["pipeline_images_per_s"] if i else 1.0
        rows.append(row)
    result["variants"] = rows
    print(f"{'settings':<44} {'bare':>7} {'pipeline':>8} {'GFLOP':>6} {'TFLOP/s':>7} "
          f"{'of peak':>7} {'speed-up':>8}")
    for row in rows:
        if "skipped" in row:
            print(f"{(row['spec'] or 'params file')[:44]:<44} skipped: {row['skipped']}")
            continue
        share = f"{row['share_of_ceiling']:.2f}" if "share_of_ceiling" in row else "-"
        print(f"{(row['spec'] or 'params file')[:44]:<44} {row['bare_images_per_s']:7.1f} "
              f"{row['pipeline_images_per_s']:8.1f} {row['gflop_per_image']:6.2f} "
              f"{row['step_tflops']:7.3f} {share:>7} {row['speedup']:7.2f}x")
    if top:
        print(f"ceiling: {precision_name(amp)} {4096}^3 matrix product {top:.3f} TFLOP/s on "
              f"{device}")
    return result
