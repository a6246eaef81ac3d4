"""Train-step speed, images/s: the bare step on one ready batch, the project's own loop over the
prepared arrays, and the per-image `ImageFolder` + `DataLoader` baseline, each through the same
`train_step`.
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
