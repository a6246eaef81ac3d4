"""Reading `params.yaml`: one section per stage, with errors that name the file and key."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """A params file is missing, unreadable, or lacks a key a stage needs."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read the whole params file.

    Args:
        path: the YAML file (default `params.yaml` in the working directory).

    Returns:
        The parsed mapping of section name to section dict.

    Raises:
        ParamsError: the file does not exist, is not valid YAML, or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str, required: tuple[str, ...] = (),
            path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Return `params[name]`, checking that every key in `required` is present.

    Raises:
        ParamsError: the section or one of the required keys is missing; the message names
            `<name>.<key>` and the file.
    """
    sec = params.get(name)
    if not isinstance(sec, dict):
        raise ParamsError(f"{path}: missing section '{name}' (expected a mapping)")
    missing = [key for key in required if key not in sec]
    if missing:
        keys = ", ".join(f"{name}.{key}" for key in missing)
        raise ParamsError(f"{path}: missing key(s) {keys}")
    return sec


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
