"""File helpers every layer may use: the package's and the repo's folders, JSON files written
atomically, and file hashes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ferpipe.core.errors import DataError

#: The installed package's folder (`ferpipe/`): MLflow logs it whole as a model's code, and the
#: released model lives in it.
PACKAGE_DIR = Path(__file__).resolve().parents[1]

#: The folder above the package: the repo root in a clone (params.yaml, data/, vendor/).
REPO_ROOT = PACKAGE_DIR.parent


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(obj: dict, path: str | Path) -> None:
    """Write `obj` as indented JSON, creating the parent folder; through a temp file renamed
    into place, removed when the write fails (the OSError is raised)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> dict:
    """Read a JSON file; raises DataError naming the file when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not readable JSON ({err})") from None
