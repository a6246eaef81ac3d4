"""Training-speed benchmark: `ferpipe-bench [--batches N]` (or `python -m ferpipe.tools.bench.cli`).

Measures, in one run, with the device, precision, batch size and model that `params.yaml` gives
the train stage:

1. bare: images/s of the train step alone (`ferpipe.train.loop.train_step`: forward, loss, backward,
   optimizer step) on one ready, normalized batch already on the device;
2. pipeline: images/s of the project's own loop (`ferpipe.train.loop.train_one_epoch`) over the real
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
face detection (`--detector`: both YuNet and Haar by default, side by side), and aligning and
cropping + classifying, each and in all; and milliseconds per face when
`--faces` face crops are classified in one batch. `--model` may be an ONNX file (run with
onnxruntime); `--compare-onnx` exports the checkpoint to ONNX and measures both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ferpipe.core.errors import ParamsError, run_main
from ferpipe.core.files import read_json
from ferpipe.core.params import AMP_MODES, STEMS, TTA_MODES, load_params
from ferpipe.data.splits import RAW_ARCHIVE, load_split
from ferpipe.model.device import (
    precision_name,
)
from ferpipe.model.inference import DEFAULT_TTA
from ferpipe.predict.cli import HelpFormatter
from ferpipe.tools.bench.compare import OLD_DEFAULT, compare
from ferpipe.tools.bench.data_stages import data_stages, noop_repro_seconds
from ferpipe.tools.bench.latency import predict_latency
from ferpipe.tools.bench.profiling import profile_loop
from ferpipe.tools.bench.setup import WARMUP, Setup, matmul_tflops, step_flops, train_data, with_overrides
from ferpipe.tools.bench.step import (
    augment_only,
    bare,
    baseline,
    baseline_loader,
    forever,
    loader_only,
    pipeline,
)


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
    p.add_argument("--detector", choices=("auto", "yunet", "haar", "both"), default="both",
                   help="face detector for --predict (both: yunet then haar, side by side)")
    p.add_argument("--compare-onnx", action="store_true",
                   help="with --predict: export --model (a checkpoint) to ONNX in a temporary "
                        "folder and measure both, PyTorch first")
    args = p.parse_args(argv)
    if args.predict:
        if args.detector == "both":
            result = {name: predict_latency(args.model, args.repeats, args.tta, args.faces, name)
                      for name in ("yunet", "haar")}
        else:
            result = predict_latency(args.model, args.repeats, args.tta, args.faces,
                                     args.detector)
        if args.compare_onnx:
            from ferpipe.model.export import export_onnx

            with tempfile.TemporaryDirectory(prefix="ferpipe-bench-onnx-") as tmp:
                onnx_path = export_onnx(args.model, Path(tmp) / "model.onnx")
                result = {"pytorch": result,
                          "onnx": predict_latency(onnx_path, args.repeats, args.tta, args.faces,
                                                  "auto" if args.detector == "both"
                                                  else args.detector)}
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
