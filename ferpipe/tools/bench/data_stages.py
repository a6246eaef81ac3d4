"""The wall time of the data stages (download from the local archive, prepare, stats) run in a
temporary folder, and of a no-op `dvc repro`."""

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
