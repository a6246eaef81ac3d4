"""The files one stage hands the next, checked when they are read, before any compute is spent on
them: a schema per file, beside the params schema (`ferpipe.params`).

- `data/stats.json` (the stats stage): `mean` and `std` of the training pixels in [0, 1] units,
  finite, 0 < mean < 1, 0 < std <= 0.5 (the largest std values in [0, 1] can have);
- `data/prepared/<split>.npz` (the prepare stage): `images` uint8 (N, S, S), `labels` integers
  (N,) in 0..classes-1, `files` (N,) when present, N >= 1;
- `models/mlflow_run.json` (the train stage): the MLflow `run_id` (32 hex digits) and
  `experiment` the later stages log into.

(The checkpoint, `models/model.pt`, is checked by `model.load_checkpoint`.) A bad file is one
line, raised as `DataError`: the file, the field, what was found and what was expected, and the
stage that writes it, e.g. `data/stats.json: std: got 0.0; expected a finite number > 0 and
<= 0.5 (written by the stats stage: dvc repro stats)`. These functions check what was read; the
callers read (`data.read_stats`, `data.load_split`, `tracking.resume_run`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictStr, ValidationError

from ferpipe.errors import DataError, shorten

#: Who writes each file, as the error line says it.
WRITERS = {"stats": "the stats stage: dvc repro stats",
           "split": "the prepare stage: dvc repro prepare",
           "run": "the train stage: dvc repro train"}


class StatsFile(BaseModel):
    """`data/stats.json`."""

    model_config = ConfigDict(extra="allow")

    mean: Annotated[float, Strict(), Field(gt=0, lt=1, allow_inf_nan=False,
                                 description="a finite number > 0 and < 1")]
    std: Annotated[float, Strict(), Field(gt=0, le=0.5, allow_inf_nan=False,
                                description="a finite number > 0 and <= 0.5")]
    pixels: Annotated[int, Strict(), Field(gt=0, description="a whole number > 0")] | None = None


class RunRecord(BaseModel):
    """`models/mlflow_run.json`."""

    model_config = ConfigDict(extra="allow")

    run_id: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{32}$",
                                       description="an MLflow run id (32 hex digits)")]
    experiment: Annotated[StrictStr, Field(min_length=1, description="an experiment name")]


def _check(raw: Any, schema: type[BaseModel], path: str | Path, writer: str) -> dict[str, Any]:
    """`raw` validated against `schema` as a plain dict, or DataError for its first problem."""
    if not isinstance(raw, dict):
        raise DataError(f"{path}: got {type(raw).__name__}; expected a JSON object "
                        f"(written by {WRITERS[writer]})")
    try:
        return schema.model_validate(raw).model_dump()
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(file)"
        info = schema.model_fields.get(str(first["loc"][0])) if first["loc"] else None
        expected = (info.description if info is not None and info.description
                    else first["msg"])
        got = ("nothing (missing)" if first["type"] == "missing"
               else shorten(first.get("input")))
        raise DataError(f"{path}: {field}: got {got}; expected {expected} (written by "
                        f"{WRITERS[writer]})") from None


def check_stats(raw: Any, path: str | Path) -> dict[str, Any]:
    """`raw` (parsed `data/stats.json`) checked: {"mean", "std", "pixels"?} as floats.

    Raises:
        DataError: a missing, non-finite or out-of-range mean or std (one line, see the module).
    """
    return _check(raw, StatsFile, path, "stats")


def check_run_record(raw: Any, path: str | Path) -> dict[str, Any]:
    """`raw` (parsed `models/mlflow_run.json`) checked: {"run_id", "experiment", ...}.

    Raises:
        DataError: a missing or malformed run id or experiment name (one line).
    """
    return _check(raw, RunRecord, path, "run")


def check_split(arrays: dict[str, np.ndarray], path: str | Path, classes: int
                ) -> dict[str, np.ndarray]:
    """A prepared split's arrays checked: `images` uint8 (N, S, S) with N >= 1, `labels` an
    integer array (N,) with every value in 0..classes-1 (returned as int64), `files` (N,) when
    present. Returns `arrays`.

    Raises:
        DataError: the first problem, naming the file, the array and what was expected.
    """
    def bad(field: str, got: str, expected: str) -> DataError:
        return DataError(f"{path}: {field}: got {got}; expected {expected} (written by "
                         f"{WRITERS['split']})")

    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8:
        raise bad("images", f"dtype {images.dtype}", "uint8 pixels 0-255")
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[0] == 0:
        raise bad("images", f"shape {images.shape}", "(N, S, S): N >= 1 square images")
    n = images.shape[0]
    if labels.ndim != 1 or len(labels) != n:
        raise bad("labels", f"shape {labels.shape}", f"({n},): one label per image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise bad("labels", f"dtype {labels.dtype}", "integer class indices")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise bad("labels", f"values {low}..{high}", f"class indices 0..{classes - 1}")
    if "files" in arrays and arrays["files"].shape != (n,):
        raise bad("files", f"shape {arrays['files'].shape}", f"({n},): one file name per image")
    arrays["labels"] = labels.astype(np.int64, copy=False)
    return arrays

