"""How stages write their outputs: all of them or none, and never over anything that is not theirs.

- `output_conflicts` is checked when params are loaded, before any stage does anything: an output
  must not be the project folder or above it, must not contain or lie inside the data source or
  the local archive, and must not overlap another stage's output.
- `stage_outputs()` gives a stage temp names for every output (`outs.file(path)`,
  `outs.folder(path, stage, names)`) and renames them all into place only when the stage's work
  is done; when it fails, the temp files are removed and the old outputs are left as they were.
- A folder output is written into a new temp folder beside it and swapped in. An existing folder
  is replaced only when it is recognisably the stage's own: it holds a manifest
  (`.ferpipe-output.json`) written by that stage and nothing else than the files the manifest
  lists, or (written before manifests existed) only files of the names the stage writes.
  Otherwise the stage refuses, naming the folder and what is in it, and deletes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ferpipe.core.errors import OutputError

#: The file by which a stage recognises a folder it wrote.
MANIFEST = ".ferpipe-output.json"


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raise an OSError (read-only folder, disk full ...) as an OutputError naming `path`."""
    try:
        yield
    except OSError as err:
        raise OutputError(f"{path}: cannot write: {err.strerror or err}") from err


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (both absolute)."""
    return path == folder or folder in path.parents


def output_conflicts(outputs: list[tuple[str, str, bool]], inputs: list[tuple[str, str]],
                     root: Path | None = None) -> list[str]:
    """Problems with where the stages would write, one line each (empty: none).

    Args:
        outputs: (params key or stage name, path, whether it is a folder) of every output.
        inputs: (params key, path) of files and folders of the user's that no output may
            contain, replace or lie inside (the data source, the local archive).
        root: the project folder (default: the working directory, where DVC runs stages).

    Returns:
        Lines `<key>: <path> <what is wrong>; expected ...`.
    """
    root = (root or Path.cwd()).resolve()
    resolved = [(key, Path(path), (root / path).resolve(), folder) for key, path, folder in outputs]
    problems = []
    for key, raw, path, _ in resolved:
        if _inside(root, path):
            problems.append(f"{key}: {raw} is the project folder or above it; expected a path "
                            f"inside it, such as data/raw")
    for key, raw, path, folder in resolved:
        for in_key, in_raw in inputs:
            source = (root / in_raw).resolve()
            if _inside(source, path) or (_inside(path, source)):
                where = ("is" if source == path else "holds" if _inside(source, path)
                         else "lies inside")
                problems.append(f"{key}: {raw} {where} {in_key} ({in_raw}), which must never be "
                                f"written; expected a {'folder' if folder else 'file'} of its own")
    for i, (key, raw, path, folder) in enumerate(resolved):
        for other_key, other_raw, other, other_folder in resolved[i + 1:]:
            if path == other or (folder and _inside(other, path)) or (
                    other_folder and _inside(path, other)):
                problems.append(f"{key}: {raw} overlaps {other_key} ({other_raw}); expected "
                                f"outputs that do not contain each other")
    return problems


def _is_own(folder: Path, stage: str, names: set[str]) -> bool:
    """Whether the existing `folder` is `stage`'s own output (see the module doc)."""
    entries = list(folder.iterdir())
    manifest = folder / MANIFEST
    listed: set[str] = set(names)
    if manifest.is_file():
        try:
            content = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(content, dict) or content.get("stage") != stage:
            return False
        listed = set(content.get("files", [])) | {MANIFEST}
    return all(entry.name in listed and entry.is_file() and not entry.is_symlink()
               for entry in entries)


def check_replaceable(folder: Path, stage: str, names: set[str]) -> None:
    """Refuse to replace `folder` unless it is missing, empty or `stage`'s own output.

    Raises:
        OutputError: naming the folder and (up to 5 of) the entries that are not the stage's.
    """
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise OutputError(f"{folder}: is {'a link' if folder.is_symlink() else 'a file'}, not a "
                          f"folder the {stage} stage wrote; move it away or choose another "
                          f"output path")
    if not folder.is_dir() or _is_own(folder, stage, names):
        return
    entries = sorted(entry.name for entry in folder.iterdir())
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise OutputError(f"{folder}: holds files the {stage} stage did not write ({shown}); it is "
                      f"never replaced: move them away or choose another output path")


class Outputs:
    """A stage's outputs under temp names, renamed into place together by `commit`."""

    def __init__(self) -> None:
        self._files: list[tuple[Path, Path]] = []
        self._folders: list[tuple[Path, Path, str, set[str]]] = []
        self._order: list[Path] = []  # destinations, in the order registered

    @property
    def pending(self) -> list[Path]:
        """The destinations registered and not yet in place, in the order registered."""
        waiting = {dest for _, dest in self._files} | {dest for _, dest, *_ in self._folders}
        return [dest for dest in self._order if dest in waiting]

    def file(self, dest: str | Path) -> Path:
        """A temp path beside `dest` (its parent folder is created) to write `dest` to.

        Raises:
            OutputError: the folder cannot be created or written (e.g. read-only).
        """
        dest = Path(dest)
        if dest.is_dir():
            raise OutputError(f"{dest}: is a folder, where this stage writes a file; move it "
                              f"away")
        with _naming(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(dest.parent, os.W_OK):
                raise PermissionError(13, "Permission denied")
        tmp = dest.with_name(f".{dest.name}.tmp")
        self._files.append((tmp, dest))
        self._order.append(dest)
        return tmp

    def folder(self, dest: str | Path, stage: str, names: set[str]) -> Path:
        """A new empty temp folder beside `dest` to write the folder output `dest` into.

        Args:
            stage: the stage's name (recorded in the manifest).
            names: the file names the stage writes there (to recognise a folder of it written
                before manifests existed).

        Raises:
            OutputError: `dest` exists and is not the stage's own (see `check_replaceable`).
        """
        dest = Path(dest)
        check_replaceable(dest, stage, names)
        with _naming(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)  # as mkdir would make it (mkdtemp makes it private)
        self._folders.append((tmp, dest, stage, names))
        self._order.append(dest)
        return tmp

    def commit(self) -> None:
        """Swap every temp folder in (the replaced folder's own files are then deleted) and
        rename every temp file to its destination. Each output leaves this object's lists as
        soon as it is in place, so when a later one fails, `abort` removes only what is still
        temporary; a folder whose swap fails is put back as it was.

        Raises:
            OutputError: a temp file that was registered was never written, or a rename failed
                (naming the path).
        """
        missing = [str(dest) for tmp, dest in self._files if not tmp.exists()]
        if missing:
            raise OutputError(f"{missing[0]}: was not written (internal error)")
        while self._folders:
            tmp, dest, stage, names = self._folders[0]
            with _naming(dest):
                _swap_in(tmp, dest, stage, names)
            self._folders.pop(0)
        while self._files:
            tmp, dest = self._files[0]
            with _naming(dest):
                os.replace(tmp, dest)
            self._files.pop(0)

    def abort(self) -> None:
        """Remove the temp files and folders written so far; the old outputs stay."""
        for tmp, _ in self._files:
            tmp.unlink(missing_ok=True)
        for tmp, *_ in self._folders:
            shutil.rmtree(tmp, ignore_errors=True)  # a folder this object created
        self._files, self._folders = [], []


def _swap_in(tmp: Path, dest: Path, stage: str, names: set[str]) -> None:
    """Put the finished folder `tmp` at `dest`, with the stage's manifest; the folder it
    replaces (checked again to be the stage's own) is moved aside first, put back if the swap
    fails, and its files deleted once the swap is done."""
    files = sorted(p.name for p in tmp.iterdir())
    (tmp / MANIFEST).write_text(json.dumps({"stage": stage, "files": files}) + "\n")
    old = None
    if dest.exists():
        check_replaceable(dest, stage, names)  # again: it may have changed meanwhile
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
        dest.replace(old / dest.name)
    try:
        tmp.replace(dest)
    except OSError:
        if old is not None:
            (old / dest.name).replace(dest)
            old.rmdir()
        raise
    if old is not None:
        for entry in (old / dest.name).iterdir():  # checked above: only its own files
            entry.unlink()
        (old / dest.name).rmdir()
        old.rmdir()


#: errno values that always mean "this write failed", whatever file they name: no space, file
#: too large (RLIMIT_FSIZE), quota, read-only file system.
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def write_error(err: OSError, outs: Outputs) -> OutputError | None:
    """The one-line OutputError for an OSError raised while a stage wrote its outputs, or None
    when it is not a write error of those outputs (e.g. an input that cannot be read).

    The output named is the one whose temp file or folder `err.filename` lies in, else (a write
    that fails on close names no file, as zipfile's does) the output registered last: the stage
    is writing it.
    """
    name = getattr(err, "filename", None)
    dest = None
    if name:
        path = Path(name).absolute()
        for tmp, target in outs._files:
            if path == tmp.absolute():
                dest = target
        for tmp, target, *_ in outs._folders:
            if _inside(path, tmp.absolute()):
                dest = target
    if dest is None and err.errno in WRITE_ERRNOS and outs.pending:
        dest = outs.pending[-1]
    if dest is None:
        return None
    reason = err.strerror or os.strerror(err.errno or 0) or str(err)
    return OutputError(f"{dest}: cannot write: {reason} (errno {errno.errorcode.get(err.errno, err.errno)}); "
                       f"nothing was replaced, the previous outputs are as they were")


@contextlib.contextmanager
def stage_outputs() -> Iterator[Outputs]:
    """`with stage_outputs() as outs:` write to `outs.file(...)` / `outs.folder(...)`; on normal
    exit everything is renamed into place, on an error nothing is (and when renaming itself
    fails, what was not yet in place is removed). An OSError while writing (no space, file too
    large, quota, read-only folder) becomes one OutputError line naming the output and the
    reason (`write_error`), after the temp files are removed."""
    outs = Outputs()
    try:
        yield outs
        outs.commit()
    except OSError as err:
        line = write_error(err, outs)
        outs.abort()
        if line is None:
            raise
        raise line from err
    except BaseException:
        outs.abort()
        raise
