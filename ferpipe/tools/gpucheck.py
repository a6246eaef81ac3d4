"""The GPU check: `python -m ferpipe.tools.gpucheck OUT_DIR`, one command that measures the project on
a machine with one NVIDIA GPU and nothing else: no internet, no pip index, no dvc, mlflow or
pydantic (docs/gpu.md says how to run it).

It needs only Python with torch, torchvision, numpy, PyYAML and tqdm; pydantic (the params
schema) comes as wheels in `vendor/wheels/` (`scripts/gpu_wheels.sh` downloads them), which are
unpacked into a temporary folder and put on the path first when the machine lacks one of the
packages. Then, through the project's own
functions (the data stages, `make_recipe`, `train_one_epoch`, `validate`, `fit`; MLflow left
out), within about 8 minutes by default:

1. env: Python, torch, CUDA and cuDNN versions, the GPU, native bf16, the resolved precision;
2. data: the download, prepare and stats stages on the FER2013 archive, in a temporary folder;
3. bench: `ferpipe.tools.bench.compare.compare` of the settings in `BENCH_SPECS` (the old and the new default,
   compiled or not, the GPU recipe's stem and crop, its mixup/CutMix and EMA, a larger batch)
   with the matrix-product ceiling (in the default's precision), until `--bench-seconds` are
   spent; the per-image DataLoader baseline for the default; epoch seconds from the images/s;
4. syncs (CUDA only): host syncs per epoch of `train_one_epoch` with the GPU recipe's options on,
   counted with `torch.cuda.set_sync_debug_mode`, for two epoch lengths (they must not grow with
   the steps);
5. train: the default recipe (with `--train` overrides) trained end to end for as many epochs as
   fit in `--train-minutes`, its one-cycle schedule fitted to them: val accuracy per epoch, the
   best epoch, and that checkpoint's test accuracy (the evaluate stage's TTA and none).

Everything goes to OUT_DIR/gpu_check.json (rewritten after each part) and OUT_DIR/gpu_check.log.
A part that fails is one line (`error: gpucheck <part>: ...`, e.g. a missing package or a CUDA
error), recorded in the JSON; the other parts still run and the exit status is 1. `--smoke` runs
the same code on any device with a few steps (CI runs it on the CPU with tiny generated data).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferpipe.core.files import REPO_ROOT

ROOT = REPO_ROOT
WHEELS = ROOT / "vendor" / "wheels"
#: Import names the check needs, and where each comes from.
NEEDED = {"torch": "the machine", "torchvision": "the machine", "numpy": "the machine",
          "yaml": "the machine (PyYAML)", "tqdm": "the machine", "PIL": "torchvision's Pillow",
          "pydantic": "vendor/wheels (scripts/gpu_wheels.sh)"}

#: The settings the bench part compares, most important first (a time budget cuts the tail).
#: "" is the params file (with the check's overrides); the old default is the first reference.
BENCH_SPECS = [
    "train.fused=false,train.compile=false",        # the old default: per-tensor AdamW, eager
    "train.compile=false",                           # the new default, eager
    "train.compile=true",                            # the new default, compiled (auto on CUDA)
    "model.stem=3x3_nopool,augment.crop=44,train.compile=false",   # the GPU recipe's model
    "model.stem=3x3_nopool,augment.crop=44,train.compile=true",
    "model.stem=3x3_nopool,augment.crop=44,train.compile=true,augment.mixup_alpha=0.2,"
    "augment.cutmix_alpha=1.0,augment.mix_prob=0.5,train.ema_decay=0.999",
    "train.compile=true,train.batch_size=512",      # a larger batch (its LR is a recipe matter)
    "train.compile=reduce-overhead",                # CUDA graphs
]
#: The GPU recipe's regularizers, for the sync count.
SYNC_SPEC = ("augment.mixup_alpha=0.2,augment.cutmix_alpha=1.0,augment.mix_prob=0.5,"
             "train.ema_decay=0.999,train.compile=false")
#: Overrides that shrink everything for `--smoke` (tiny data, a few steps).
SMOKE_SPEC = "train.batch_size=8,evaluate.batch_size=16"


class Log:
    """Print to stdout and append to the log file, flushed at once."""

    def __init__(self, path: Path) -> None:
        self.fh = open(path, "a", encoding="utf-8")

    def __call__(self, *parts: Any) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.fh.write(line + "\n")
        self.fh.flush()


def use_wheels(folder: Path, target: Path) -> list[str]:
    """Unpack every wheel in `folder` into `target` and put `target` first on `sys.path` and
    `PYTHONPATH` (the stage subprocesses import from it too); returns the wheel names.

    A wheel is a zip archive of importable files, so no pip is needed; extension modules
    (pydantic-core's) load from the unpacked files.
    """
    names = []
    for wheel in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(target)
        names.append(wheel.name)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(target), *filter(None, [os.environ.get("PYTHONPATH")])])
    return names


def missing_packages() -> list[str]:
    """`NEEDED` import names that do not import, each with where it should come from."""
    missing = []
    for name, source in NEEDED.items():
        try:
            importlib.import_module(name)
        except Exception as err:  # ImportError, or a broken binary
            missing.append(f"{name} ({source}: {type(err).__name__}: {err})")
    return missing


def environment() -> dict[str, Any]:
    """Versions, the device, and the precision and compile setting the train stage would use."""
    import torch

    from ferpipe.model.device import precision_name, resolve_amp, resolve_compile, resolve_device

    device = resolve_device("auto")
    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": importlib.import_module("torchvision").__version__,
        "numpy": importlib.import_module("numpy").__version__,
        "pydantic": importlib.import_module("pydantic").VERSION,
        "device": str(device), "cpu_threads": torch.get_num_threads(),
        "precision": precision_name(resolve_amp("auto", device)),
        "compile_auto": resolve_compile("auto", device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   bf16_native=torch.cuda.is_bf16_supported(including_emulation=False))
    return env


def count_syncs(fn: Callable[[], Any]) -> int:
    """Host syncs during `fn()` on CUDA, as `torch.cuda.set_sync_debug_mode("warn")` reports
    them (one warning each)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def epoch_syncs(params, train: dict, stats: dict, steps: tuple[int, ...]) -> dict[str, Any]:
    """Host syncs of `train_one_epoch` over epochs of each length in `steps`, with `params`'
    options (the GPU recipe's mixup, CutMix and EMA), after one warm-up epoch."""
    import torch

    from ferpipe.tools.bench.setup import Setup
    from ferpipe.train.loop import train_one_epoch
    from ferpipe.train.recipe import make_ema

    s = Setup(params, train["labels"], stats["mean"], stats["std"])
    images = torch.from_numpy(train["images"]).to(s.device)
    labels = torch.from_numpy(train["labels"]).to(s.device)
    gen = torch.Generator(device=s.device).manual_seed(0)
    ema = make_ema(s.model, params.train.ema_decay)

    def epoch(n: int) -> None:
        order = torch.randperm(len(labels), generator=gen, device=s.device)[:n * s.batch]
        train_one_epoch(s.net, images, labels, order, s.optimizer, s.scheduler, s.loss_fn,
                        s.ctx, s.aug, s.batch, gen, s.grad_clip, desc="syncs", ema=ema)

    epoch(2)
    return {"options": SYNC_SPEC, "syncs_per_epoch": {str(n): count_syncs(lambda n=n: epoch(n))
                                                      for n in steps}}


def train_recipe(params, data_dir: Path, stats: dict, minutes: float, max_epochs: int,
                 log: Log) -> dict[str, Any]:
    """Train `params`' recipe for as many epochs as fit in `minutes`, all of this included
    (timed on a probe of training steps and one validation, compiling first when compile is on;
    `fit` compiles its model again, from the compile cache), with `training.fit`; score the best
    epoch's weights on test.

    Returns:
        {"epochs", "probe_images_per_s", "history": fit's rows, "best_epoch",
         "best_val_accuracy", "test_accuracy" (evaluate.tta), "test_accuracy_no_tta",
         "tta", "train_seconds", "peak_gpu_memory_gib" (CUDA)}
    """
    import numpy as np
    import torch

    from ferpipe.data.splits import CLASS_NAMES, load_split
    from ferpipe.model.device import StepContext, resolve_amp, resolve_device
    from ferpipe.model.inference import predict_log_proba
    from ferpipe.model.network import build_model
    from ferpipe.tools.bench.setup import Setup
    from ferpipe.tools.bench.step import pipeline
    from ferpipe.train.fit import fit
    from ferpipe.train.loop import validate

    train, val = load_split(data_dir / "train.npz"), load_split(data_dir / "val.npz")
    test = load_split(data_dir / "test.npz")
    begun = time.perf_counter()
    # Probe: images/s of the loop (compiling first when compile is on) and one validation.
    probe = Setup(params, train["labels"], stats["mean"], stats["std"])
    images = torch.from_numpy(train["images"]).to(probe.device)
    labels = torch.from_numpy(train["labels"]).to(probe.device)
    batches = max(1, min(20, len(labels) // probe.batch - 2))
    speed = pipeline(probe, probe.ctx, images, labels, batches,
                     torch.Generator(device=probe.device).manual_seed(0))
    start = time.perf_counter()
    validate(probe.model, torch.from_numpy(val["images"]).to(probe.device),
             torch.from_numpy(val["labels"]).to(probe.device), probe.ctx)
    epoch_s = len(labels) / speed + (time.perf_counter() - start)
    left = minutes * 60 - (time.perf_counter() - begun) - (30 if probe.compile else 5)
    epochs = int(max(1, min(max_epochs, left / (epoch_s * 1.05))))
    log(f"train: probe {speed:.0f} images/s, about {epoch_s:.1f} s per epoch -> {epochs} epochs")
    del probe, images, labels

    cfg = params.train.model_copy(update={"epochs": epochs, "resume": False})
    device = resolve_device(params.train.device)
    torch.manual_seed(cfg.seed)
    size = train["images"].shape[-1]
    input_size = min(params.augment.crop, size)
    model = build_model(params.model, len(CLASS_NAMES), input_size).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ctx = StepContext(device, stats["mean"], stats["std"], resolve_amp(cfg.amp, device),
                      cfg.channels_last)
    best: dict[str, Any] = {}

    def on_best(epoch: int, accuracy: float, state: dict) -> None:
        best.update(epoch=epoch, accuracy=accuracy, state=state)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = fit(model, train, val, cfg, params.augment, ctx, on_best,
                 on_epoch=lambda row: log(f"train: epoch {row['epoch']}: val accuracy "
                                          f"{row['val_accuracy']:.4f}"))
    seconds = time.perf_counter() - start
    model.load_state_dict(best["state"])
    eval_ctx = StepContext(device, stats["mean"], stats["std"], ctx.amp_dtype, cfg.channels_last,
                           input_size if input_size < size else None)
    tta = params.evaluate.tta
    y = torch.from_numpy(test["labels"])
    scores = {mode: (predict_log_proba(model, test["images"], eval_ctx, tta=mode,
                                       batch_size=params.evaluate.batch_size).argmax(1) == y
                     ).double().mean().item() for mode in dict.fromkeys([tta, "none"])}
    out = {"epochs": epochs, "probe_images_per_s": speed, "history": result.history,
           "best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
           "tta": tta, "test_accuracy": scores[tta], "test_accuracy_no_tta": scores["none"],
           "test_images": int(len(y)), "train_seconds": seconds,
           "images_per_s": result.images / max(result.step_seconds, 1e-9),
           "median_epoch_seconds": float(np.median([r["seconds"] for r in result.history]))}
    if device.type == "cuda":
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ferpipe.tools.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder for gpu_check.json and gpu_check.log")
    p.add_argument("--archive", type=Path, default=ROOT / "data" / "fer2013.zip",
                   help="the FER2013 archive (default: %(default)s)")
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                   help="params file (default: %(default)s)")
    p.add_argument("--wheels", type=Path, default=WHEELS,
                   help="folder of wheels to unpack first (default: %(default)s)")
    p.add_argument("--train", default="", metavar="SPEC",
                   help="overrides of the trained recipe, as ferpipe-bench --compare's SPEC, "
                        "e.g. 'model.stem=3x3_nopool,augment.crop=44' (default: none)")
    p.add_argument("--train-minutes", type=float, default=5.0,
                   help="time budget of the train part, minutes, compiling and the test "
                        "scoring included (default: %(default)s)")
    p.add_argument("--max-epochs", type=int, default=200,
                   help="at most this many epochs (default: %(default)s)")
    p.add_argument("--bench-seconds", type=float, default=90.0,
                   help="time budget of the bench part, compiling included (default: %(default)s)")
    p.add_argument("--batches", type=int, default=20, help="timed batches per setting per round")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the bench part")
    p.add_argument("--skip", nargs="*", default=[], choices=["bench", "baseline", "syncs", "train"],
                   help="parts to leave out")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps of everything (tiny data; CI runs it on the CPU)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "gpu_check.log")
    report: dict[str, Any] = {"command": " ".join(["python -m ferpipe.tools.gpucheck", *sys.argv[1:]]),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "parts": {}}
    failed: list[str] = []

    def save() -> None:
        tmp = args.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        tmp.replace(args.out / "gpu_check.json")

    def part(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        log(f"--- {name}")
        try:
            value = fn()
        except BaseException as err:  # noqa: BLE001 - every failure becomes one line
            if isinstance(err, KeyboardInterrupt):
                raise
            line = f"error: gpucheck {name}: {type(err).__name__}: {str(err).strip()}"
            log(line.splitlines()[0] if line else line)
            (args.out / "gpu_check.log").open("a").write(traceback.format_exc())
            report["parts"][name] = {"error": line, "seconds": time.perf_counter() - start}
            failed.append(name)
            save()
            return None
        report["parts"][name] = {"seconds": time.perf_counter() - start,
                                 **(value if isinstance(value, dict) else {"value": value})}
        log(f"{name}: done in {report['parts'][name]['seconds']:.1f} s")
        save()
        return value

    begun = time.monotonic()
    # The stages run as subprocesses from a temporary folder: they import ferpipe from here.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory(prefix="ferpipe-gpucheck-") as tmp:
        missing = missing_packages()
        report["wheels"] = []
        if missing and args.wheels.is_dir():  # only what the machine lacks comes from wheels
            for name in [m for m in sys.modules if m.split(".")[0] in NEEDED]:
                if name.split(".")[0] in {line.split()[0] for line in missing}:
                    del sys.modules[name]  # a failed import leaves half-loaded modules
            report["wheels"] = use_wheels(args.wheels, Path(tmp) / "site")
            missing = missing_packages()
        if missing:
            for line in missing:
                log(f"error: gpucheck: package {line}")
            report["missing_packages"] = missing
            save()
            return 1
        part("env", environment)
        from ferpipe.core.params import load_params
        from ferpipe.tools.bench.setup import with_overrides

        params = with_overrides(load_params(args.params), SMOKE_SPEC if args.smoke else "",
                                "--smoke")
        work = Path(tmp) / "work"
        work.mkdir()

        def data() -> dict[str, Any]:
            from ferpipe.tools.bench.data_stages import data_stages

            if not args.archive.is_file():
                raise FileNotFoundError(f"{args.archive}: the FER2013 archive is not there "
                                        f"(copy it to data/fer2013.zip, or pass --archive)")
            return {"stage_seconds": data_stages(params, args.archive, work)}

        if part("data", data) is None:
            return finish(report, save, log, failed, begun)
        from ferpipe.data.splits import RAW_ARCHIVE, load_split, read_stats

        prepared = work / params.prepare.out
        train = load_split(prepared / "train.npz")
        stats = read_stats(work / params.stats.out)
        batches, rounds = (2, 1) if args.smoke else (args.batches, args.rounds)

        def bench() -> dict[str, Any]:
            import torch

            from ferpipe.tools.bench.compare import compare

            on_gpu = torch.cuda.is_available()
            specs = BENCH_SPECS if on_gpu else [spec for spec in BENCH_SPECS
                                                if "compile=false" in spec]
            if args.smoke:
                specs = specs[:2]
            result = compare(params, specs, train, stats, batches, rounds,
                             ceiling=True, deadline=time.monotonic() + args.bench_seconds)
            n = len(train["labels"])
            for row in result["variants"]:
                if "pipeline_images_per_s" in row:
                    row["epoch_seconds_estimate"] = n / row["pipeline_images_per_s"]
            if not on_gpu:
                result["left_out"] = "the compiled settings (compiling is for CUDA here)"
            return result

        def baseline() -> dict[str, Any]:
            from ferpipe.tools.bench.setup import Setup
            from ferpipe.tools.bench.step import baseline as run_baseline
            from ferpipe.tools.bench.step import baseline_loader, forever

            raw = work / params.prepare.raw / RAW_ARCHIVE
            folder = Path(tmp) / "images"
            with zipfile.ZipFile(raw) as zf:
                zf.extractall(folder, [n for n in zf.namelist() if n.startswith("train/")])
            s = Setup(params.model_copy(update={"train": params.train.model_copy(
                update={"compile": False})}), train["labels"], stats["mean"], stats["std"])
            loader = forever(baseline_loader(folder / "train", s, stats["mean"], stats["std"],
                                             min(os.cpu_count() or 1, 16)))
            try:
                return {"baseline_images_per_s": run_baseline(s, s.ctx, loader, batches),
                        "workers": min(os.cpu_count() or 1, 16)}
            finally:
                loader.close()

        def syncs() -> dict[str, Any]:
            import torch

            if not torch.cuda.is_available():
                return {"skipped": "not CUDA (torch.cuda.set_sync_debug_mode is CUDA's)"}
            return epoch_syncs(with_overrides(params, SYNC_SPEC), train, stats, (4, 8))

        def training() -> dict[str, Any]:
            recipe = with_overrides(params, args.train, "--train")
            if args.smoke:
                return train_recipe(recipe, prepared, stats, 0.0, 2, log)
            return train_recipe(recipe, prepared, stats, args.train_minutes, args.max_epochs, log)

        for name, fn in (("bench", bench), ("baseline", baseline), ("syncs", syncs),
                         ("train", training)):
            if name not in args.skip:
                part(name, fn)
    return finish(report, save, log, failed, begun)


def finish(report: dict, save: Callable[[], None], log: Log, failed: list[str], begun: float
           ) -> int:
    """Record the total time and the failed parts; 1 when any part failed."""
    report["seconds"] = time.monotonic() - begun
    report["failed"] = failed
    save()
    log(f"gpucheck: {'failed: ' + ', '.join(failed) if failed else 'all parts ran'} in "
        f"{report['seconds']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
