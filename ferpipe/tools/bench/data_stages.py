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

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ferpipe.core.params import Params, load_params
from ferpipe.tools.bench.setup import ROOT


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
