"""What every benchmark mode shares: the `Setup` of model, recipe and precision that
`params.yaml` gives the train stage, params overrides (`--compare` specs), the training arrays,
and the FLOP counts and matrix-product ceiling the figures are compared with.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ferpipe.core.errors import ParamsError
from ferpipe.core.files import REPO_ROOT
from ferpipe.core.params import Params, validate_params
from ferpipe.data.splits import CLASS_NAMES, load_split, pixel_stats, read_stats
from ferpipe.model.device import (
    StepContext,
    precision_name,
    resolve_amp,
    resolve_compile,
    resolve_device,
    synchronize,
)
from ferpipe.model.inference import normalize
from ferpipe.model.network import build_model
from ferpipe.train.distributed import wrap_model
from ferpipe.train.loop import train_step
from ferpipe.train.recipe import make_recipe

ROOT = REPO_ROOT


WARMUP = 2  # batches run before each timed part (allocator, autotuning, worker start-up)


sync = synchronize  # wait for queued device work, so wall-clock timings are real

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
