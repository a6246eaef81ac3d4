"""Training-speed benchmark: `ferpipe-bench [--batches N]` (or `python -m ferpipe.tools.bench.cli`).

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

import time
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF

from ferpipe.model.device import (
    StepContext,
)
from ferpipe.model.inference import normalize
from ferpipe.tools.bench.setup import WARMUP, Setup, sync
from ferpipe.train.loop import train_one_epoch, train_step


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
    from ferpipe.train.augment import augment_batch

    idx = torch.randint(len(images), (batches, s.batch), generator=gen, device=s.device)
    augment_batch(images[idx[0]], s.aug, ctx.mean, ctx.std, gen)
    sync(s.device)
    start = time.perf_counter()
    for i in range(batches):
        ctx.prepare(augment_batch(images[idx[i]], s.aug, ctx.mean, ctx.std, gen))
    sync(s.device)
    return batches * s.batch / (time.perf_counter() - start)
