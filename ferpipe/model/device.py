"""Where and in what precision the model runs: device choice, AMP dtype, and the `StepContext`
that carries them (with the normalization and memory format) into every train and inference step."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ferpipe.core.errors import ParamsError


def resolve_device(name: str = "auto", key: str = "train.device") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; otherwise `torch.device(name)`.

    Args:
        name: a value the params schema allows (auto, cpu, mps, cuda, cuda:<index>).
        key: the params key it came from, for the error message.

    Raises:
        ParamsError: a device that is named but not available (e.g. `cuda` on a CPU machine).
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"{key}: '{name}' requested but CUDA is not available (use auto or cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ParamsError(f"{key}: '{name}' requested but only {torch.cuda.device_count()} "
                          f"CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ParamsError(f"{key}: '{name}' requested but MPS is not available (use auto or cpu)")
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


def cuda_supports_bf16(device: torch.device) -> bool:
    """Whether the CUDA `device` (not the current one) has native bf16, without counting
    emulation: `torch.cuda.is_bf16_supported()` alone answers True on a V100 or T4, which run
    bf16 emulated, much slower than fp16."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (CUDA, MPS), so that a clock read next measures
    the device's time, not the time to queue it; nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp` (one of `params.AMP_MODES`) on `device`, or None for
    full fp32.

    `auto`: bf16 on CUDA devices with native bf16 (compute capability 8.0 and up: A100, RTX 30xx
    and later), fp16 on older ones (V100, T4: they emulate bf16, far slower), bf16 on CPUs with
    native bf16; fp32 elsewhere.

    Raises:
        ParamsError: fp16 requested off CUDA.
    """
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ParamsError("train.amp: fp16 needs a CUDA device; use bf16 or none")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if cuda_supports_bf16(device) else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def resolve_compile(value: bool | str, device: torch.device) -> str | None:
    """The torch.compile mode for `train.compile`, or None for eager: false -> None, true ->
    "default", a mode name (`params.COMPILE_MODES`, e.g. "reduce-overhead": CUDA graphs) -> that
    mode, `auto` -> "default" on CUDA and None elsewhere.

    On a 2-core AVX512-BF16 CPU, torch.compile (inductor) made the default train step slower
    (about 220 against 240 images/s, side by side) after a minute of compiling, so `auto` leaves
    the CPU in eager mode; on a GPU it fuses the many small kernels of a 40-pixel step
    (docs/speed.md, docs/gpu.md)."""
    if value == "auto":
        return "default" if device.type == "cuda" else None
    if value is True:
        return "default"
    return value or None


def precision_name(dtype: torch.dtype | None) -> str:
    """"bfloat16", "float16" or "fp32" (no autocast), for logs and metrics."""
    return str(dtype).removeprefix("torch.") if dtype else "fp32"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` for `dtype`, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class StepContext:
    """What a train or inference step needs besides the model and data.

    Attributes:
        device: where the model and batches live.
        mean, std: pixel normalization, [0, 1] units.
        amp_dtype: autocast dtype, or None for fp32.
        channels_last: pass batches in `channels_last` memory format (as the model).
        input_size: the side of the model's input, pixels, when it was trained on crops
            smaller than the images (`augment.crop`); None: the images' own size.
    """

    device: torch.device
    mean: float
    std: float
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    input_size: int | None = None

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Put a normalized float batch (B, 1, H, W) in the model's memory format."""
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x
