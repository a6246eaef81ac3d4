"""The files one stage hands the next, checked when they are read, before any compute is spent on
them: a schema per file, beside the params schema (`ferpipe.core.params`).

- `data/stats.json` (the stats stage): `mean` and `std` of the training pixels in [0, 1] units,
  finite, 0 < mean < 1, 0 < std <= 0.5 (the largest std values in [0, 1] can have);
- `data/prepared/<split>.npz` (the prepare stage): `images` uint8 (N, S, S), `labels` integers
  (N,) in 0..classes-1, `files` (N,) when present, N >= 1;
- `models/mlflow_run.json` (the train stage): the MLflow `run_id` (32 hex digits) and
  `experiment` the later stages log into;
- `metrics/train.json` (the train stage): best val accuracy in [0, 1], epochs, minutes and
  images/s, finite; `metrics/history.csv` and `metrics/lr.csv`: their columns, at least one row,
  finite numbers;
- `metrics/data.json` (the prepare stage): the image count of each split (train, val, test);
- `metrics/eval.json` (the evaluate stage): `test.per_class` with an F1 in [0, 1] per class;
  `metrics/confusion.csv`: `actual` and `predicted` columns naming those classes.

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

from ferpipe.core.errors import DataError, shorten

#: Who writes each file, as the error line says it.
WRITERS = {"stats": "the stats stage: dvc repro stats",
           "split": "the prepare stage: dvc repro prepare",
           "run": "the train stage: dvc repro train",
           "train": "the train stage: dvc repro train",
           "data": "the prepare stage: dvc repro prepare",
           "eval": "the evaluate stage: dvc repro evaluate"}

#: The columns each CSV a later stage reads must have (all numeric but confusion.csv's).
TABLES = {"history": ("metrics/history.csv", "train",
                      ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")),
          "lr": ("metrics/lr.csv", "train", ("step", "lr")),
          "confusion": ("metrics/confusion.csv", "eval", ("actual", "predicted"))}

FRACTION = "a finite number from 0 to 1"


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


class TrainSummary(BaseModel):
    """`metrics/train.json` (what the evaluate stage reads of it)."""

    model_config = ConfigDict(extra="allow")

    best_val_accuracy: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False,
                                              description=FRACTION)]
    epochs: Annotated[int, Strict(), Field(ge=1, description="a whole number >= 1")]
    train_minutes: Annotated[float, Field(ge=0, allow_inf_nan=False,
                                          description="a finite number of minutes >= 0")]
    images_per_s: Annotated[float, Field(gt=0, allow_inf_nan=False,
                                         description="a finite number > 0")]


class SplitCount(BaseModel):
    """One split's entry in `metrics/data.json`: its image count (and one per class)."""

    model_config = ConfigDict(extra="allow")

    images: Annotated[int, Strict(), Field(ge=1, description="a whole number of images >= 1")]


class DataCounts(BaseModel):
    """`metrics/data.json`."""

    model_config = ConfigDict(extra="allow")

    train: Annotated[SplitCount, Field(description="an object with the split's images")]
    val: Annotated[SplitCount, Field(description="an object with the split's images")]
    test: Annotated[SplitCount, Field(description="an object with the split's images")]


class ClassScores(BaseModel):
    """One class of `metrics/eval.json`'s `test.per_class`."""

    model_config = ConfigDict(extra="allow")

    f1: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, description=FRACTION)]


class TestScores(BaseModel):
    """`metrics/eval.json`'s `test`."""

    model_config = ConfigDict(extra="allow")

    per_class: Annotated[dict[str, ClassScores], Field(
        min_length=1, description="an object with one entry per class")]


class EvalFile(BaseModel):
    """`metrics/eval.json` (what the plot stage reads of it)."""

    model_config = ConfigDict(extra="allow")

    test: Annotated[TestScores, Field(description="an object with the test metrics")]


def _description(schema: type[BaseModel], loc: tuple) -> str | None:
    """The description of the innermost schema field at `loc` (nested models and dict values
    followed), or None."""
    description = None
    for part in loc:
        info = schema.model_fields.get(str(part)) if isinstance(schema, type) else None
        if info is None:
            continue  # a dict key: its value's model is the annotation's argument
        description = info.description or description
        inner = info.annotation
        args = getattr(inner, "__args__", ())
        inner = args[-1] if args else inner
        schema = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
        if schema is None:
            break
    return description


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
        expected = _description(schema, first["loc"]) or first["msg"]
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


def check_train_summary(raw: Any, path: str | Path) -> dict[str, Any]:
    """`raw` (parsed `metrics/train.json`) checked: best_val_accuracy, epochs, train_minutes,
    images_per_s (and whatever else the train stage wrote).

    Raises:
        DataError: a missing, non-finite or out-of-range field (one line).
    """
    return _check(raw, TrainSummary, path, "train")


def check_data_counts(raw: Any, path: str | Path) -> dict[str, Any]:
    """`raw` (parsed `metrics/data.json`) checked: {"train", "val", "test"}, each with `images`
    >= 1 (and its per-class counts).

    Raises:
        DataError: a missing split or image count (one line).
    """
    return _check(raw, DataCounts, path, "data")


def check_eval(raw: Any, path: str | Path) -> dict[str, Any]:
    """`raw` (parsed `metrics/eval.json`) checked: `test.per_class` maps each class name to
    metrics with an `f1` in [0, 1].

    Raises:
        DataError: a missing or out-of-range field (one line).
    """
    return _check(raw, EvalFile, path, "eval")


def check_table(frame: Any, path: str | Path, kind: str,
                classes: list[str] | None = None) -> Any:
    """A CSV one stage hands the next (`TABLES[kind]`: history, lr, confusion), read as a pandas
    DataFrame, checked: its columns present, at least one row; numbers finite (history, lr);
    class names among `classes` (confusion). Returns `frame`.

    Raises:
        DataError: the file, the column and what was expected, and the stage that writes it.
    """
    _, writer, columns = TABLES[kind]

    def bad(field: str, got: str, expected: str) -> DataError:
        return DataError(f"{path}: {field}: got {got}; expected {expected} (written by "
                         f"{WRITERS[writer]})")

    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise bad(missing[0], "nothing (missing column)", f"the columns {', '.join(columns)}")
    if len(frame) == 0:
        raise bad("(rows)", "no rows", "at least one row")
    for column in columns:
        values = frame[column]
        if kind == "confusion":
            unknown = sorted(set(values.astype(str)) - set(classes or ()))
            if unknown:
                raise bad(column, shorten(unknown[0]), f"a class name ({', '.join(classes or ())})")
            continue
        numbers = np.asarray(_numeric(values), dtype=float)
        if not np.isfinite(numbers).all():
            where = int(np.flatnonzero(~np.isfinite(numbers))[0])
            cell = values.iloc[where]
            cell = cell.item() if isinstance(cell, np.generic) else cell  # nan, not np.float64(nan)
            raise bad(column, f"{shorten(cell)} in row {where + 1}",
                      "finite numbers")
    return frame


def _numeric(values: Any) -> Any:
    """`values` (a pandas Series) as numbers, with NaN where a cell is not one."""
    import pandas as pd  # pandas is imported by the stages that read CSVs only

    return pd.to_numeric(values, errors="coerce")


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
