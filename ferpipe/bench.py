"""Training-speed benchmark: `ferpipe-bench [--batches N]` (or `python -m ferpipe.bench`).

Measures, in one run, with the device, precision, batch size and model that `params.yaml` gives
the train stage:

1. bare: images/s of the train step alone (`training.train_step`: forward, loss, backward,
   optimizer step) on one ready, normalized batch already on the device;
2. pipeline: images/s of the project's own loop (`training.train_one_epoch`) over the real
   prepared arrays, augmentation, indexing and the LR schedule included;
3. baseline: images/s of the per-image approach common FER projects use: torchvision
   `ImageFolder` over the unpacked training JPEGs, per-image PIL transforms (flip, rotation,
   colour jitter, `ToTensor`, `Normalize`) in a `DataLoader` with worker processes, feeding the
   same model through the same `train_step`;

then the ratios pipeline / bare and pipeline / baseline, the peak resident memory of the process
after bare + pipeline (real arrays, model, optimizer: what the train stage holds), the wall time of
the data stages (download from the local archive, prepare, stats) run in a temporary folder, and
optionally the time of a no-op `dvc repro`. Bare, pipeline and baseline are measured in turns
(`--rounds`) so drifting machine speed hits all three alike.

It also prints the achieved TFLOP/s of the step (its FLOPs per image, counted by
`torch.utils.flop_counter`, times the pipeline's images/s) beside the TFLOP/s of a 4096^3
matrix product on the same device in the step's precision (bf16 where the step autocasts to it,
fp32 where it runs fp32), the ceiling (`--no-ceiling` skips it).

`--compare [SPEC ...]` measures several settings side by side instead, in turns: each SPEC is
comma-separated `section.key=value` overrides of the params file (as `dvc exp run -S`; `default`
or "" is the params file itself), the first the reference of the speed-ups; with no SPEC, the
old default (`OLD_DEFAULT`) against the params file. `--profile N` runs `torch.profiler` over N
batches of the loop and prints where the time goes by kind of op, and the time of one
validation.

`--predict` measures the predict command's latency instead: milliseconds per photo for a 640 x 480
JPEG with one face (scikit-image's astronaut portrait, resized), model already loaded: decoding,
face detection, and cropping + classifying, each and in all; and milliseconds per face when
`--faces` face crops are classified in one batch. `--model` may be an ONNX file (run with
onnxruntime); `--compare-onnx` exports the checkpoint to ONNX and measures both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ferpipe.augment import normalize
from ferpipe.data import CLASS_NAMES, RAW_ARCHIVE, load_split, pixel_stats, read_json, read_stats
from ferpipe.device import (
    StepContext,
    precision_name,
    resolve_amp,
    resolve_compile,
    resolve_device,
    synchronize,
)
from ferpipe.distributed import wrap_model
from ferpipe.errors import ParamsError, run_main
from ferpipe.model import build_model
from ferpipe.params import AMP_MODES, STEMS, TTA_MODES, Params, load_params, validate_params
from ferpipe.predict import HelpFormatter
from ferpipe.predictor import DEFAULT_TTA
from ferpipe.training import make_recipe, train_one_epoch, train_step

ROOT = Path(__file__).resolve().parents[1]


WARMUP = 2  # batches run before each timed part (allocator, autotuning, worker start-up)


sync = synchronize  # wait for queued device work, so wall-clock timings are real

#: The train stage's defaults before the speed work, as `--compare` overrides: per-tensor
#: optimizer ops, no compiling (the crop folded into the augmentation's sampling grid gives the
#: same images and is not switchable).
OLD_DEFAULT = "train.fused=false,train.compile=false"


def matmul_tflops(device: torch.device, dtype: torch.dtype | None = torch.bfloat16,
                  n: int = 4096, repeats: int = 3) -> float:
    """TFLOP/s of an n x n x n matrix product in `dtype` (bf16; None: fp32) on `device`, the
    best of `repeats` after one warm-up: the ceiling a train step's TFLOP/s is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    b = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e12


def step_flops(s: Setup, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs per image of one train step (forward, loss, backward; matrix products and
    convolutions, as `torch.utils.flop_counter` counts them) of `s`'s bare model on the uint8
    batch x (B, 48, 48), y int64 (B,). The step changes the weights like any other."""
    from torch.utils.flop_counter import FlopCounterMode

    xb = s.ctx.prepare(TF.center_crop(normalize(x.to(s.device), s.ctx.mean, s.ctx.std),
                                      [s.input_size, s.input_size]))
    with FlopCounterMode(display=False) as counter:
        train_step(s.model, xb, y.to(s.device), s.optimizer, s.loss_fn, s.ctx, s.grad_clip)
    return counter.get_total_flops() / len(y)


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

    from ferpipe.training import validate

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


def with_overrides(params: Params, spec: str, source: str = "--compare") -> Params:
    """`params` with the comma-separated `section.key=value` overrides of `spec` (values read
    as YAML, as `dvc exp run -S` does; "" or "default": none), validated like a params file.

    Raises:
        ParamsError: a malformed override, an unknown key or a bad value (one line each).
    """
    import yaml

    raw = params.model_dump(mode="json")
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if item == "default":
            continue
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in raw:
            raise ParamsError(f"{source}: '{item}': expected section.key=value with a section "
                              f"of params.yaml ({', '.join(raw)})")
        raw[section][name] = yaml.safe_load(value)
    return validate_params(raw, source)


class Setup:
    """Model, optimizer, loss and step context, built by the functions the train stage uses
    (`build_model`, `make_recipe`), from the params and the training labels (int64 (N,))."""

    def __init__(self, params: Params, labels: np.ndarray, mean: float, std: float) -> None:
        self.train, self.aug = params.train, params.augment
        self.device = resolve_device(self.train.device)
        self.amp = resolve_amp(self.train.amp, self.device)
        self.stem = params.model.stem
        self.batch = self.train.batch_size
        torch.manual_seed(0)
        #: the model's input side: the training crop, else the image (as the train stage)
        self.input_size = min(params.augment.crop, params.prepare.image_size)
        model = build_model(params.model, len(CLASS_NAMES), self.input_size).to(self.device)
        if self.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.compile = resolve_compile(self.train.compile, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as the train stage (`training.fit`)
        self.net = wrap_model(model, self.device, compile=self.compile)
        self.ctx = StepContext(self.device, mean, std, self.amp, self.train.channels_last)
        recipe = make_recipe(model, self.train, labels, self.ctx, 10 ** 6)
        self.optimizer, self.loss_fn = recipe.optimizer, recipe.loss_fn
        self.scheduler = recipe.scheduler if recipe.per_step else None  # stepped per batch
        self.grad_clip = self.train.grad_clip

    @property
    def precision(self) -> str:
        return precision_name(self.amp)


def bare(s: Setup, ctx: StepContext, x: torch.Tensor, y: torch.Tensor, batches: int) -> float:
    """images/s of `train_step` on one ready batch; x uint8 (B, 48, 48) (centre-cropped to the
    model's input size), y int64 (B,)."""
    xb = ctx.prepare(TF.center_crop(normalize(x.to(s.device), ctx.mean, ctx.std),
                                    [s.input_size, s.input_size]))
    yb = y.to(s.device)
    s.net.train()
    for _ in range(WARMUP):
        train_step(s.net, xb, yb, s.optimizer, s.loss_fn, ctx, s.grad_clip)
    sync(s.device)
    start = time.perf_counter()
    for _ in range(batches):
        train_step(s.net, xb, yb, s.optimizer, s.loss_fn, ctx, s.grad_clip)
    sync(s.device)
    return batches * len(yb) / (time.perf_counter() - start)


def pipeline(s: Setup, ctx: StepContext, images: torch.Tensor, labels: torch.Tensor,
             batches: int, gen: torch.Generator) -> float:
    """images/s of `train_one_epoch` over `batches` random batches of the real arrays."""
    scheduler = s.scheduler  # the train stage's (None for a per-epoch schedule)
    order = torch.randperm(len(labels), generator=gen, device=s.device)
    train_one_epoch(s.net, images, labels, order[:WARMUP * s.batch], s.optimizer, scheduler,
                    s.loss_fn, ctx, s.aug, s.batch, gen, s.grad_clip, desc="warm-up")
    stats = train_one_epoch(s.net, images, labels,
                            order[WARMUP * s.batch:(WARMUP + batches) * s.batch], s.optimizer,
                            scheduler, s.loss_fn, ctx, s.aug, s.batch, gen, s.grad_clip,
                            desc="pipeline")
    return stats["images_per_s"]


def baseline_loader(folder: Path, s: Setup, mean: float, std: float, workers: int):
    """The per-image loader of a typical FER notebook, as a DataLoader over `folder`."""
    from torchvision import datasets, transforms

    aug = s.aug
    tf = transforms.Compose([
        transforms.Grayscale(num_output_channels=1),  # ImageFolder opens images as RGB
        transforms.RandomHorizontalFlip(aug.hflip),
        transforms.RandomRotation(aug.rotation),
        transforms.ColorJitter(brightness=aug.brightness, contrast=aug.contrast),
        transforms.RandomCrop(s.input_size),
        transforms.ToTensor(),
        transforms.Normalize([mean], [std]),
    ])
    dataset = datasets.ImageFolder(str(folder), transform=tf)
    return torch.utils.data.DataLoader(dataset, batch_size=s.batch, shuffle=True,
                                       num_workers=workers, drop_last=True,
                                       pin_memory=s.device.type == "cuda")


def forever(loader):
    """Batches from `loader`, epoch after epoch (a small dataset must not run dry)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("train.batch_size: larger than the training images the "
                             "baseline loader found")


def baseline(s: Setup, ctx: StepContext, loader_iter, batches: int) -> float:
    """images/s of `train_step` fed by the per-image DataLoader."""
    s.net.train()

    def step() -> int:
        x, y = next(loader_iter)
        x = ctx.prepare(x.to(s.device, non_blocking=True))
        train_step(s.net, x, y.to(s.device, non_blocking=True), s.optimizer, s.loss_fn, ctx,
                   s.grad_clip)
        return len(y)

    for _ in range(WARMUP):
        step()
    sync(s.device)
    start = time.perf_counter()
    seen = sum(step() for _ in range(batches))
    sync(s.device)
    return seen / (time.perf_counter() - start)


def loader_only(loader_iter, batches: int) -> float:
    """images/s of the per-image DataLoader alone (no model)."""
    next(loader_iter)
    start = time.perf_counter()
    seen = sum(len(next(loader_iter)[1]) for _ in range(batches))
    return seen / (time.perf_counter() - start)


def augment_only(s: Setup, ctx: StepContext, images: torch.Tensor, batches: int,
                 gen: torch.Generator) -> float:
    """images/s of the project's whole-batch augmentation alone (no model)."""
    from ferpipe.augment import augment_batch

    idx = torch.randint(len(images), (batches, s.batch), generator=gen, device=s.device)
    augment_batch(images[idx[0]], s.aug, ctx.mean, ctx.std, gen)
    sync(s.device)
    start = time.perf_counter()
    for i in range(batches):
        ctx.prepare(augment_batch(images[idx[i]], s.aug, ctx.mean, ctx.std, gen))
    sync(s.device)
    return batches * s.batch / (time.perf_counter() - start)


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


def data_stages(params_path: Path | Params, archive: Path, workdir: Path | None = None
                ) -> dict[str, float]:
    """Wall seconds of `python stages/{download,prepare,stats}.py` in a fresh temp folder (or in
    `workdir`, which keeps what they write: data/prepared/*.npz, data/stats.json), with the local
    archive as the source (each stage a new process, as DVC runs it).

    Args:
        params_path: the params file, or params already read.

    Raises:
        subprocess.CalledProcessError: a stage failed (its error line is on stderr).
    """
    params = (params_path if isinstance(params_path, Params) else load_params(params_path)
              ).model_dump(mode="json")
    params["download"]["local_archive"] = str(archive.resolve())
    seconds = {}
    with contextlib.ExitStack() as stack:
        tmp = workdir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="ferpipe-bench-")))
        (Path(tmp) / "params.yaml").write_text(json.dumps(params))  # JSON is valid YAML
        for stage in ("download", "prepare", "stats"):
            start = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=tmp,
                           check=True, stdout=subprocess.DEVNULL)
            seconds[stage] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    return seconds


def noop_repro_seconds() -> float | None:
    """Seconds of `dvc repro` when `dvc status` says nothing changed; None if something did
    (then a repro would train, which is not a benchmark)."""
    status = subprocess.run(["dvc", "status", "--json"], cwd=ROOT, capture_output=True,
                            text=True)
    if status.returncode != 0 or json.loads(status.stdout or "{}"):
        return None
    start = time.perf_counter()
    subprocess.run(["dvc", "repro"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def predict_latency(model: Path, repeats: int, tta: str = DEFAULT_TTA, faces: int = 8
                    ) -> dict[str, Any]:
    """Milliseconds per 640 x 480 photo with one face through the predict command's steps.

    Args:
        model: a checkpoint or ONNX file, or an MLflow URI (see `predictor.load_classifier`).
        faces: face crops classified in one batch for the per-face figure.

    Returns:
        median and 90th-percentile ms of decode (JPEG bytes -> grayscale), detect (Haar cascade),
        classify (crop + model) and total per photo, and of classifying `faces` crops divided
        by `faces` (`per_face`), over `repeats` runs after 3 warm-up runs; the faces found.

    Raises:
        CheckpointError: see `predictor.load_classifier`.
    """
    from io import BytesIO

    from PIL import Image
    from skimage import data as skdata

    from ferpipe.faces import crop_face
    from ferpipe.predictor import Predictor, load_classifier, load_gray

    buffer = BytesIO()
    Image.fromarray(skdata.astronaut()).resize((640, 480)).save(buffer, "JPEG", quality=90)
    predictor = Predictor(load_classifier(str(model)), tta=tta)
    size = predictor.classifier.image_size
    times: dict[str, list[float]] = {"decode": [], "detect": [], "classify": [], "total": [],
                                     "per_face": []}
    found = 0
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        _, gray = load_gray(BytesIO(buffer.getvalue()))
        t1 = time.perf_counter()
        boxes = predictor.detector.detect(gray)
        t2 = time.perf_counter()
        crops = np.stack([crop_face(gray, box, predictor.margin, size) for box in boxes])
        predictor.classifier.predict(crops, tta)
        t3 = time.perf_counter()
        predictor.classifier.predict(np.repeat(crops[:1], faces, 0), tta)
        t4 = time.perf_counter()
        found = len(boxes)
        if i >= 3:
            for key, seconds in (("decode", t1 - t0), ("detect", t2 - t1), ("classify", t3 - t2),
                                 ("total", t3 - t0), ("per_face", (t4 - t3) / faces)):
                times[key].append(seconds * 1000)
    backend = "onnxruntime" if str(model).lower().endswith(".onnx") else "pytorch"
    result: dict[str, Any] = {"model": str(model), "backend": backend, "photo": "640x480 JPEG",
                              "faces": found, "batch_faces": faces, "repeats": repeats,
                              "tta": tta, "threads": torch.get_num_threads()}
    for key, values in times.items():
        result[f"{key}_ms_median"] = round(float(np.median(values)), 2)
        result[f"{key}_ms_p90"] = round(float(np.percentile(values, 90)), 2)
    return result


def train_data(params: Params) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The prepared training split and its pixel stats (`data/stats.json`, checked; computed
    from the split when the stats stage has not run).

    Raises:
        DataError: see `load_split` and `read_stats`.
    """
    train = load_split(Path(params.train.data) / "train.npz")
    stats_path = Path(params.train.stats)
    stats = read_stats(stats_path) if stats_path.is_file() else pixel_stats(train["images"])
    return train, stats


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the figures and return them.

    Raises:
        DataError: the prepared arrays or the raw archive are missing (run `dvc repro prepare`
            first).
        ParamsError: the training split is too small for `--batches` batches of
            train.batch_size; see also `load_params`.
    """
    p = argparse.ArgumentParser(prog="ferpipe-bench", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--params", type=Path, default=Path("params.yaml"),
                   help="params file, relative to the working directory")
    p.add_argument("--batches", type=int, default=10, help="timed batches per part per round")
    p.add_argument("--rounds", type=int, default=2, help="turns of bare/pipeline/baseline")
    p.add_argument("--amp", choices=AMP_MODES,
                   help="override train.amp, e.g. compare none with bf16 (default %(default)s: "
                        "the params file's)")
    p.add_argument("--stem", choices=STEMS,
                   help="override model.stem (default %(default)s: the params file's)")
    p.add_argument("--channels-last", choices=["true", "false"],
                   help="override train.channels_last (default %(default)s: the params file's)")
    p.add_argument("--workers", type=int, default=os.cpu_count(),
                   help="DataLoader worker processes for the baseline (default %(default)s: the "
                        "CPU cores)")
    p.add_argument("--skip-baseline", action="store_true", help="skip the per-image baseline")
    p.add_argument("--skip-data", action="store_true", help="skip timing the data stages")
    p.add_argument("--noop-repro", action="store_true",
                   help="also time a no-op `dvc repro` (only if `dvc status` is clean)")
    p.add_argument("--json", type=Path,
                   help="also write the figures to this JSON file (default %(default)s: none)")
    p.add_argument("--compare", nargs="*", metavar="SPEC",
                   help="measure settings side by side instead: each SPEC is comma-separated "
                        "section.key=value overrides of the params file (\"\" or default: "
                        "none), the first the reference; with no SPEC, the old default ("
                        f"{OLD_DEFAULT}) against the params file")
    p.add_argument("--profile", type=int, metavar="BATCHES",
                   help="profile the loop over this many batches instead (torch.profiler: "
                        "self time by kind of op, and one validation)")
    p.add_argument("--set", default="", metavar="SPEC",
                   help="overrides of the params file for the plain benchmark and --profile, "
                        "as a --compare SPEC (e.g. train.fused=false)")
    p.add_argument("--no-ceiling", action="store_true",
                   help="skip the matrix-product ceiling (seconds per round)")
    p.add_argument("--predict", action="store_true",
                   help="measure the predict command's latency per photo instead")
    p.add_argument("--model", type=Path, default=Path("models/model.pt"),
                   help="checkpoint or ONNX file (.onnx) for --predict")
    p.add_argument("--repeats", type=int, default=50, help="photos timed with --predict")
    p.add_argument("--faces", type=int, default=8,
                   help="face crops per batch for --predict's per-face figure")
    p.add_argument("--tta", choices=TTA_MODES, default=DEFAULT_TTA,
                   help="TTA for --predict (the predict command's default)")
    p.add_argument("--compare-onnx", action="store_true",
                   help="with --predict: export --model (a checkpoint) to ONNX in a temporary "
                        "folder and measure both, PyTorch first")
    args = p.parse_args(argv)
    if args.predict:
        result = predict_latency(args.model, args.repeats, args.tta, args.faces)
        if args.compare_onnx:
            from ferpipe.export import export_onnx

            with tempfile.TemporaryDirectory(prefix="ferpipe-bench-onnx-") as tmp:
                onnx_path = export_onnx(args.model, Path(tmp) / "model.onnx")
                result = {"pytorch": result,
                          "onnx": predict_latency(onnx_path, args.repeats, args.tta, args.faces)}
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return result

    params = with_overrides(load_params(args.params), args.set, "--set")
    if args.compare is not None:
        train, stats = train_data(params)
        specs = args.compare or [OLD_DEFAULT, "default"]
        result = compare(params, specs, train, stats, args.batches, args.rounds,
                         ceiling=not args.no_ceiling)
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return result
    if args.profile:
        train, stats = train_data(params)
        val = load_split(Path(params.train.data) / "val.npz")
        s = Setup(params, train["labels"], stats["mean"], stats["std"])
        result = profile_loop(s, torch.from_numpy(train["images"]).to(s.device),
                              torch.from_numpy(train["labels"]).to(s.device), val, args.profile,
                              torch.Generator(device=s.device).manual_seed(0))
        print(f"{result['ms_per_batch']:.0f} ms per batch of {s.batch} (profiled); self time:")
        for name, share in result["categories"].items():
            print(f"  {share:6.1%}  {name}")
        print(f"validation of {result['val_images']} images: {result['validation_seconds']:.1f} s"
              f" against ~{result['epoch_train_seconds_estimate']:.0f} s of training per epoch; "
              + ", ".join(f"{v:.2f} s at batch {k}"
                          for k, v in result["validation_seconds_by_batch"].items()))
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return result
    train_update = {key: value for key, value in (
        ("amp", args.amp),
        ("channels_last", None if args.channels_last is None else args.channels_last == "true"))
        if value is not None}
    params = params.model_copy(update={
        "train": params.train.model_copy(update=train_update),
        "model": params.model.model_copy(update={"stem": args.stem} if args.stem else {})})
    train, stats = train_data(params)
    if params.train.batch_size * (args.batches + WARMUP) > len(train["labels"]):
        raise ParamsError(f"train.batch_size {params.train.batch_size} x {args.batches + WARMUP} "
                          f"batches is more than the {len(train['labels'])} training images; use "
                          f"fewer --batches")
    s = Setup(params, train["labels"], stats["mean"], stats["std"])
    ctx = s.ctx
    images = torch.from_numpy(train["images"]).to(s.device)
    labels = torch.from_numpy(train["labels"]).to(s.device)
    gen = torch.Generator(device=s.device).manual_seed(0)
    fixed = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))[:s.batch]
    print(f"device {s.device}, precision {s.precision}, stem {s.stem}, batch {s.batch}, "
          f"channels_last {s.train.channels_last}, compile {s.compile}, "
          f"threads {torch.get_num_threads()}, {args.batches} batches x {args.rounds} rounds",
          flush=True)

    tmp = None
    loader_iter = None
    if not args.skip_baseline:
        raw = Path(params.prepare.raw) / RAW_ARCHIVE
        tmp = tempfile.TemporaryDirectory(prefix="ferpipe-bench-images-")
        with zipfile.ZipFile(raw) as zf:  # the unpacked JPEGs the per-image loader reads
            zf.extractall(tmp.name, [n for n in zf.namelist() if n.startswith("train/")])
        loader = baseline_loader(Path(tmp.name) / "train", s, stats["mean"], stats["std"],
                                 args.workers)
        loader_iter = forever(loader)

    figures: dict[str, list[float]] = {"bare": [], "pipeline": [], "baseline": []}
    rss_mb = 0.0
    try:
        for r in range(args.rounds):
            figures["bare"].append(bare(s, ctx, images[fixed], labels[fixed], args.batches))
            figures["pipeline"].append(pipeline(s, ctx, images, labels, args.batches, gen))
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if loader_iter is not None:
                figures["baseline"].append(baseline(s, ctx, loader_iter, args.batches))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in figures.items()
                                                 if v) + " images/s", flush=True)
        result: dict[str, Any] = {
            "device": str(s.device), "precision": s.precision, "stem": s.stem,
            "batch_size": s.batch, "channels_last": s.train.channels_last,
            "compile": s.compile, "threads": torch.get_num_threads(),
            "batches": args.batches, "rounds": args.rounds}
        for key, values in figures.items():
            if values:
                result[f"{key}_images_per_s"] = float(np.mean(values))
        result["pipeline_over_bare"] = result["pipeline_images_per_s"] / result["bare_images_per_s"]
        if figures["baseline"]:
            result["pipeline_over_baseline"] = (result["pipeline_images_per_s"]
                                                / result["baseline_images_per_s"])
            result["baseline_loader_only_images_per_s"] = loader_only(loader_iter, args.batches)
        result["augment_only_images_per_s"] = augment_only(s, ctx, images, args.batches, gen)
        flops = step_flops(s, images[fixed], labels[fixed])
        result["gflop_per_image"] = flops / 1e9
        result["step_tflops"] = result["pipeline_images_per_s"] * flops / 1e12
        if not args.no_ceiling:
            result["ceiling_tflops"] = matmul_tflops(s.device, s.amp)
            result["ceiling_precision"] = precision_name(s.amp)
            result["share_of_ceiling"] = result["step_tflops"] / result["ceiling_tflops"]
        result["train_loop_peak_rss_mb"] = round(rss_mb, 1)
    finally:
        if loader_iter is not None:
            loader_iter.close()  # drops the DataLoader iterator: its workers stop
        if tmp is not None:
            tmp.cleanup()

    if not args.skip_data:
        local = Path(params.download.local_archive)
        if local.is_file():
            result["data_stage_seconds"] = data_stages(args.params, local)
        else:
            print(f"data stages not timed: {local} not found")
    if args.noop_repro:
        result["noop_repro_seconds"] = noop_repro_seconds()
    train_json = Path("metrics/train.json")
    if train_json.is_file():
        result["last_train_stage_peak_rss_mb"] = read_json(train_json).get("peak_rss_mb")

    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    """The `ferpipe-bench` command: `run` with the command line, errors as one line each."""
    run_main(lambda: run() and None)


if __name__ == "__main__":
    main()
