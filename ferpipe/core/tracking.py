"""MLflow runs: one per pipeline run, in the store `ferpipe.core.store` sets up.

The train stage starts the run (`start_run`, its params flattened, the git commit as a tag), logs
per-epoch metrics (`EpochLog`) and writes the run's id to a small JSON file (`write_run_ref`);
evaluate and plot reopen the run from that file (`resume_run`). `log_model` logs a checkpoint's
network with `mlflow.pytorch`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

if TYPE_CHECKING:
    import torch

from ferpipe.core.errors import DataError
from ferpipe.core.files import PACKAGE_DIR, read_json, write_json
from ferpipe.core.handoffs import check_run_record
from ferpipe.core.params import flatten
from ferpipe.core.store import (
    HEALTH_TIMEOUT_S,
    failure_reason,
    few_retries,
    quick_exit_hook,
    server_unreachable,
    setup,
    store_errors,
    store_exceptions,
    store_name,
    tracking_uri,
)


def git_commit() -> str:
    """The current git commit (HEAD), or "" outside a git repo."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def start_run(experiment: str, params: dict[str, Any], tags: dict[str, str],
              run_id: str | None = None) -> mlflow.ActiveRun:
    """Start the pipeline's run; all params logged flattened.

    Name: `DVC_EXP_NAME` under `dvc exp run`, otherwise `<commit>-<params hash>` (7 hex digits
    of the git commit, 8 of a sha256 over the params used), so a plain `dvc repro` run is
    recognisable and two runs of the same code and params share a name. Tags: the git commit,
    `dvc_exp_name` and `dvc_exp_baseline_rev` when DVC sets them (never empty), the params hash,
    plus `tags` (device, torch version ...). With `run_id` (a resumed training run) that run is
    reopened instead, and keeps its params.
    """
    setup(experiment)
    if run_id:
        return mlflow.start_run(run_id=run_id)
    flat = flatten(params)
    params_hash = hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()
                                 ).hexdigest()[:8]
    commit = git_commit()
    name = os.environ.get("DVC_EXP_NAME") or f"{commit[:7] or 'nogit'}-{params_hash}"
    run = mlflow.start_run(run_name=name)
    dvc_tags = {"dvc_exp_name": os.environ.get("DVC_EXP_NAME"),
                "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV")}
    mlflow.set_tags({"git_commit": commit, "params_hash": params_hash,
                     **{k: v for k, v in dvc_tags.items() if v}, **tags})
    mlflow.log_params({k: "" if v is None else v for k, v in flat.items()})
    return run


@contextmanager
def closing(active: mlflow.ActiveRun, consequence: str) -> Iterator[mlflow.ActiveRun]:
    """Use `active` (from `start_run`) and end it: FINISHED, or FAILED when the block raised
    (then a store that fails too does not hide the block's own error).

    Raises:
        TrackingError: the store failed while ending a run whose block succeeded
            (`store_errors` with `consequence`).
    """
    try:
        yield active
    except BaseException:
        if server_unreachable(HEALTH_TIMEOUT_S) is None:
            with contextlib.suppress(*store_exceptions()):
                mlflow.end_run("FAILED")
        quick_exit_hook()  # when the run could not be ended
        raise
    with store_errors("cannot end the run", consequence):
        mlflow.end_run("FINISHED")


class EpochLog:
    """Logs the train stage's per-epoch rows as MLflow metrics `epoch/<column>` at step
    `epoch`. When the store fails (a server that stops answering is probed first, so a dead
    one costs seconds, not MLflow's minutes of retries), it says so once on stderr and logs
    nothing more: training goes on, the rows stay in metrics/history.csv, and `flush` logs the
    missed ones once the store answers again (at the end, or in a resumed run).

    Args:
        missed: epochs not logged so far (a list this object appends to: the train stage keeps
            it in the resume checkpoint, so a resumed run knows them).
    """

    def __init__(self, missed: list[int] | None = None) -> None:
        self.missed = missed if missed is not None else []
        self.failing = False

    @staticmethod
    def _log(row: dict[str, float]) -> None:
        # Curves under epoch/: MLflow's charts page shows prefixed sections in name
        # order before the unprefixed ones, so "epoch" comes before "summary".
        mlflow.log_metrics({f"epoch/{k}": v for k, v in row.items() if k != "epoch"},
                           step=int(row["epoch"]))

    def __call__(self, row: dict[str, float]) -> None:
        epoch = int(row["epoch"])
        if self.failing:
            self.missed.append(epoch)
            return
        why = server_unreachable(HEALTH_TIMEOUT_S)
        try:
            if why is None:
                with few_retries():  # a server that dies after the probe: seconds, not minutes
                    self._log(row)
        except store_exceptions() as err:
            why = failure_reason(err)
        if why is not None:
            self.failing = True
            self.missed.append(epoch)
            print(f"warning: {store_name()}: per-epoch metrics not logged from epoch {epoch} "
                  f"on: {why}; training goes on (every epoch is in metrics/history.csv, and "
                  f"is logged at the end if the store answers again)", file=sys.stderr,
                  flush=True)

    def flush(self, history: list[dict[str, float]]) -> None:
        """Log the rows of `history` whose epochs were missed (inside an active run).

        Raises:
            the store's exception (wrap the call in `store_errors`).
        """
        missed = set(self.missed)
        for row in history:
            if int(row["epoch"]) in missed:
                self._log(row)
        self.missed.clear()
        self.failing = False


def write_run_ref(path: str | Path, run: mlflow.ActiveRun, experiment: str) -> None:
    """Write {run_id, experiment, tracking_uri} for the later stages."""
    write_json({"run_id": run.info.run_id, "experiment": experiment,
                "tracking_uri": tracking_uri()}, path)


def read_run_record(ref_path: str | Path) -> dict:
    """The run record the train stage wrote (`models/mlflow_run.json`), checked: {"run_id",
    "experiment", ...}. The later stages call it before they spend compute, then `resume_run`.

    Raises:
        DataError: `ref_path` is missing (run the train stage first), or lacks a valid run id
            or experiment (`handoffs.check_run_record`).
    """
    ref_path = Path(ref_path)
    if not ref_path.is_file():
        raise DataError(f"{ref_path}: MLflow run reference not found (run the train stage first)")
    return check_run_record(read_json(ref_path), ref_path)


@contextmanager
def resume_run(ref_path: str | Path) -> Iterator[mlflow.ActiveRun]:
    """Reopen the run named in `ref_path` (written by the train stage) to log more into it.

    Raises:
        DataError: as `read_run_record`.
    """
    ref = read_run_record(ref_path)
    setup(ref["experiment"])
    with mlflow.start_run(run_id=ref["run_id"]) as run:
        yield run


def log_model(checkpoint: str | Path, model: torch.nn.Module, input_size: int,
              name: str = "model") -> None:
    """Log a checkpoint's model to the active run with `mlflow.pytorch.log_model`.

    Args:
        checkpoint: the checkpoint file, logged beside the model as an artifact.
        model: that checkpoint's network, loaded on the CPU in fp32 (`load_checkpoint`).
        input_size: the model's input side S in pixels (the training crop, else 48).
        name: the model's artifact name in the run.

    The input example holds 2 normalized 1 x S x S images, so the saved signature
    accepts any batch size: input float32 (B, 1, S, S),
    normalized with the checkpoint's mean/std; output float32 logits (B, 7). The checkpoint file
    (with class names and normalization) is logged beside it.

    It is pickled (`serialization_format="pickle"`, with the `ferpipe` package as code, for
    `model.arch: small_cnn`), so `mlflow.pytorch.load_model` gives back the model's own module
    (a torchvision ResNet) rather than MLflow 3's default, a `torch.export` GraphModule.
    """
    import mlflow.pytorch
    import numpy as np
    import torch

    example = np.zeros((2, 1, input_size, input_size), dtype=np.float32)
    mlflow.pytorch.log_model(model, name=name, input_example=example,
                             serialization_format="pickle",
                             code_paths=[str(PACKAGE_DIR)],
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                               f"mlflow=={mlflow.__version__}"])
    mlflow.log_artifact(str(checkpoint), artifact_path="checkpoint")
