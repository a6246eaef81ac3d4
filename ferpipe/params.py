"""Reading and checking `params.yaml`: one section per stage, every value validated at start.

The schema is a set of pydantic models, one per section. Every stage validates the whole file
when it starts, so a typo (`train.lrr`), a value of the wrong type, out of range or not among the
allowed choices stops the stage before it writes anything, with an error that names the file,
the key, the bad value and what is allowed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_PARAMS = Path("params.yaml")

#: The ResNet18 stems `ferpipe.model.STEMS` builds (kept here so reading params needs no torch).
STEMS = ("standard", "3x3", "3x3_nopool")

Probability = Annotated[float, Field(ge=0, le=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0)]
Path_ = Annotated[str, Field(min_length=1)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]


class ParamsError(ValueError):
    """A params file is missing, unreadable, or has a value that is not allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Download(_Section):
    source: Path_
    local_archive: Path_
    sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]] = None
    out: Path_
    max_unpacked_mb: Positive
    max_members: Count


class Prepare(_Section):
    raw: Path_
    out: Path_
    val_fraction: Fraction
    seed: Seed
    image_size: Annotated[int, Field(ge=8, le=1024)]
    max_bad_fraction: Probability
    drop_test_overlap: bool
    drop_duplicates: bool
    drop_uniform: bool
    uniform_std: NonNegative


class Stats(_Section):
    train: Path_
    out: Path_


class Model(_Section):
    stem: Literal[STEMS]  # type: ignore[valid-type]
    pretrained: bool
    hidden: Annotated[int, Field(ge=0)]
    dropout: Annotated[float, Field(ge=0, lt=1)]


class Augment(_Section):
    hflip: Probability
    rotation: Annotated[float, Field(ge=0, le=180)]
    translate: Annotated[float, Field(ge=0, lt=1)]
    scale: Annotated[float, Field(ge=0, lt=1)]
    brightness: Annotated[float, Field(ge=0, lt=1)]
    contrast: Annotated[float, Field(ge=0, lt=1)]
    erasing: Probability


class Train(_Section):
    data: Path_
    stats: Path_
    out: Path_
    experiment: Annotated[str, Field(min_length=1)]
    lr: Positive
    epochs: Count
    batch_size: Count
    optimizer: Literal["adamw", "sgd"]
    momentum: Annotated[float, Field(ge=0, lt=1)]
    weight_decay: NonNegative
    pct_start: Fraction
    grad_clip: NonNegative
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]
    class_weights: Literal["none", "inverse_frequency"]
    seed: Seed
    device: Device
    amp: Literal["auto", "bf16", "fp16", "none"]
    channels_last: bool
    compile: bool
    launcher: Annotated[str, Field(min_length=1)]
    resume: bool


class Evaluate(_Section):
    test: Path_
    model: Path_
    run: Path_
    batch_size: Count
    device: Device
    tta: Literal["none", "hflip", "ten_crop"]
    tta_crop: Annotated[int, Field(ge=8, le=1024)]
    registry: bool
    registry_name: Annotated[str, Field(min_length=1)]
    registry_alias: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]


class Plot(_Section):
    test: Path_
    run: Path_
    out: Path_
    grid: Path_
    grid_images: Annotated[int, Field(ge=1, le=400)]
    seed: Seed


class Params(_Section):
    download: Download
    prepare: Prepare
    stats: Stats
    model: Model
    augment: Augment
    train: Train
    evaluate: Evaluate
    plot: Plot


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    """One line for one pydantic error: the dotted key, the bad value, and what is allowed."""
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        owner: Any = model
        for part in loc[:-1]:
            owner = owner.model_fields[part].annotation
        allowed = ", ".join(owner.model_fields)
        where = f"key in section '{'.'.join(loc[:-1])}'" if len(loc) > 1 else "section"
        return f"{key}: unknown {where} (a typo?); allowed: {allowed}"
    if err["type"] == "string_pattern_mismatch" and loc[-1] == "device":
        return f"{key}: got {err.get('input')!r}; expected auto, cpu, mps, cuda or cuda:<index>"
    if err["type"] == "string_pattern_mismatch" and loc[-1] == "sha256":
        return f"{key}: got {err.get('input')!r}; expected null or 64 hexadecimal digits"
    if err["type"] == "string_pattern_mismatch" and loc[-1] == "registry_alias":
        return (f"{key}: got {err.get('input')!r}; expected a name of letters, digits, _ and - "
                f"(an MLflow model alias, e.g. candidate)")
    if err["type"] == "missing":
        return f"{key}: missing (required)"
    return f"{key}: got {err.get('input')!r}; {err['msg'][0].lower()}{err['msg'][1:]}"


def validate_params(raw: Any, path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Check a parsed params mapping against the schema.

    Returns:
        The params as plain dicts, with defaults filled in and numbers converted (`"1e-3"`,
        which YAML reads as a string, becomes 0.001).

    Raises:
        ParamsError: one line per problem, each naming `<section>.<key>`, the bad value and
            what is allowed, after the file name.
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw).model_dump()
    except ValidationError as err:
        lines = [_describe(e, Params) for e in err.errors()]
        raise ParamsError(f"{path}: {len(lines)} invalid value(s):\n  " + "\n  ".join(lines)
                          ) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read and validate the whole params file (see `validate_params`).

    Args:
        path: the YAML file (default `params.yaml` in the working directory).

    Returns:
        The validated mapping of section name to section dict.

    Raises:
        ParamsError: the file does not exist, is not valid YAML, or a value is not allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    return validate_params(raw, path)


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """Return `params[name]` of validated params.

    Raises:
        ParamsError: there is no such section.
    """
    if name not in params:
        raise ParamsError(f"no params section '{name}'")
    return params[name]


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested sections to dotted keys, e.g. `{"train": {"lr": 1e-3}}` -> `{"train.lr": 1e-3}`."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def stage_args(description: str) -> argparse.Namespace:
    """Parse the only option a stage takes: `--params PATH` (default `params.yaml`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (YAML)")
    return parser.parse_args()
