"""Listing a FER2013 source safely: a zip, a tar (.tar, .tar.gz ...) or a folder.

Sources are untrusted: links, device files, paths leaving the archive, names that are not UTF-8 and
archives that unpack too large or into too many members are refused before anything is read
(`list_files`, `check_archive`). What the listing holds is read by `ferpipe.data.layout` and
written out by `ferpipe.data.raw_archive`.
"""

from __future__ import annotations

import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from ferpipe.core.errors import DataError
from ferpipe.data.fer2013_csv import CSV_NAME

#: Defaults of the decompression-bomb caps (the values of `download.max_unpacked_mb` and
#: `download.max_members` in params.yaml).
MAX_UNPACKED_BYTES = 2048 * 2**20
MAX_MEMBERS = 200_000

#: What reading a damaged archive raises: zipfile's, tarfile's and the decompressors' errors
#: (zlib, bz2 (OSError), lzma), a truncated stream (EOFError) and an unsupported zip compression
#: method (NotImplementedError).
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error,
                  lzma.LZMAError, NotImplementedError)

#: Magic bytes of the compressions tarfile reads (gzip, bzip2, xz).
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")

#: What a file-type mode other than a regular file or a folder is, for error messages.
_SPECIAL_KINDS = {stat.S_IFLNK: "a symlink", stat.S_IFCHR: "a character device",
                  stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
                  stat.S_IFSOCK: "a socket"}
_TAR_KINDS = {tarfile.SYMTYPE: "a symlink", tarfile.LNKTYPE: "a hardlink",
              tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
              tarfile.FIFOTYPE: "a FIFO"}


class Listing(NamedTuple):
    """What `list_files` found in a source, paths relative to its root."""

    #: Every regular file, with a zero-argument function returning its bytes.
    files: dict[PurePosixPath, Callable[[], bytes]]
    #: Every folder (for archives: those with a member of their own).
    folders: set[PurePosixPath]


def _check_member_name(name: str, where: Path) -> PurePosixPath:
    """The member's path, refusing absolute paths and `..` (they would land outside the target)."""
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or ".." in member.parts or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{where}: unsafe member path '{name}'")
    return member


def _special_kind(mode: int) -> str | None:
    """None for a regular file, a folder or no file type (zips made on Windows), else its kind."""
    kind = stat.S_IFMT(mode)
    if kind in (0, stat.S_IFREG, stat.S_IFDIR):
        return None
    return _SPECIAL_KINDS.get(kind, "a special file")


def _check_caps(source: Path, members: int, unpacked: int, max_members: int,
                max_unpacked_bytes: int, complete: bool) -> None:
    """Refuse a source with more members or more unpacked bytes than the caps allow.

    `complete` is False while a source is still being listed: the figures are then lower bounds.
    """
    at_least = "" if complete else "at least "
    if members > max_members:
        raise DataError(f"{source}: {at_least}{members} members, more than "
                        f"download.max_members = {max_members} (raise it if you trust this source)")
    if unpacked > max_unpacked_bytes:
        raise DataError(f"{source}: {at_least}{unpacked} bytes ({unpacked / 2**20:.1f} MiB) "
                        f"unpacked, more than download.max_unpacked_mb = "
                        f"{max_unpacked_bytes / 2**20:g} ({max_unpacked_bytes} bytes) "
                        f"(raise it if you trust this source)")


def list_files(source: Path, max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
               max_members: int = MAX_MEMBERS) -> Listing:
    """Every regular file and folder in a zip, a tar (.tar, .tar.gz ...) or a folder.

    Members are checked and counted, and their declared (unpacked) sizes summed, before any is
    read: a decompression bomb is refused without being unpacked. Archive members are then read
    into memory (FER2013 is ~60 MB) so the archive is closed on return (a compressed tar is
    decompressed twice: once for the headers and the end check, once for the data); folder files are read when
    their reader is called. Members and entries of every kind (folders included) count towards
    `max_members`.

    Args:
        max_unpacked_bytes: cap on the sum of the files' sizes, bytes.
        max_members: cap on the number of members (folder entries).

    Returns:
        The files, each with a reader for its bytes, and the folders.

    Raises:
        DataError: unreadable or unknown source; a member with an absolute path or `..`; a member
            or folder entry that is a symlink, hardlink, device file, FIFO or socket (refused,
            never followed), naming it; more members or bytes than the caps, naming the params
            key (`download.max_members`, `download.max_unpacked_mb`), the cap and the source's
            figure.
    """
    files: dict[PurePosixPath, Callable[[], bytes]] = {}
    folders: set[PurePosixPath] = set()
    try:
        if source.is_dir():
            count = size = 0
            for path in source.rglob("*"):
                rel = PurePosixPath(path.relative_to(source).as_posix())
                _check_utf8(str(rel), source)
                info = path.lstat()
                if stat.S_ISDIR(info.st_mode):
                    folders.add(rel)
                elif stat.S_ISREG(info.st_mode):
                    files[rel] = _file_reader(path)
                    size += info.st_size
                else:
                    raise DataError(f"{source}: '{rel}' is {_special_kind(info.st_mode)} "
                                    f"(links and special files are refused, not followed)")
                count += 1
                _check_caps(source, count, size, max_members, max_unpacked_bytes, False)
        elif zipfile.is_zipfile(source):
            _list_zip(source, files, folders, max_unpacked_bytes, max_members)
        elif tarfile.is_tarfile(source) or _looks_compressed(source):
            _list_tar(source, files, folders, max_unpacked_bytes, max_members)
        else:
            raise DataError(f"{source}: expected a .zip, .tar or .tar.gz archive, a "
                            f"{CSV_NAME} or a folder; {_first_bytes(source)}")
    except ARCHIVE_ERRORS as err:
        raise DataError(f"{source}: cannot read: {_reason(err)}") from err
    return Listing(files, folders)


def _reason(err: BaseException) -> str:
    """A library error's text, worded for a user (a truncated stream says so)."""
    if isinstance(err, EOFError):
        return f"the archive is truncated ({err})"
    if "CRC" in str(err):
        return f"the data are corrupted ({err})"
    return str(err) or type(err).__name__


def _looks_compressed(path: Path) -> bool:
    """Whether a file starts as a gzip, bzip2 or xz stream (a compressed tar that
    `tarfile.is_tarfile` could not read is then reported with tarfile's reason)."""
    with open(path, "rb") as fh:
        return fh.read(6).startswith(_COMPRESSED_MAGIC)


def _first_bytes(path: Path) -> str:
    """What a file that is not an archive starts with, for an error message."""
    with open(path, "rb") as fh:
        head = fh.read(40)
    if not head:
        return "it is empty"
    return f"it starts with {head!r}"


def _check_utf8(name: str, source: Path) -> None:
    """Refuse a file name that is not valid UTF-8 (it cannot be stored in images.zip)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise DataError(f"{source}: file name '{shown}' is not valid UTF-8; rename it") from None


def _file_reader(path: Path) -> Callable[[], bytes]:
    """A function returning the bytes of `path`, raising DataError naming it when unreadable."""
    def read() -> bytes:
        try:
            return path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: cannot read: {err.strerror or err}") from err
    return read


def _list_zip(source: Path, files: dict, folders: set, max_unpacked_bytes: int,
              max_members: int) -> None:
    """`list_files` for a zip: names, kinds and caps checked first, then every member read (its
    CRC checked by zipfile)."""
    with zipfile.ZipFile(source) as zf:
        members = []
        for info in zf.infolist():
            member = _check_member_name(info.filename, source)
            kind = _special_kind(info.external_attr >> 16)
            if kind:
                raise DataError(f"{source}: member '{info.filename}' is {kind}")
            if info.flag_bits & 0x1:
                raise DataError(f"{source}: member '{info.filename}' is encrypted "
                                f"(password-protected); expected an archive without a password")
            members.append((info, member))
        _check_caps(source, len(members),
                    sum(info.file_size for info, _ in members if not info.is_dir()),
                    max_members, max_unpacked_bytes, True)
        for info, member in members:
            if info.is_dir():
                folders.add(member)
                continue
            try:
                data = zf.read(info)
            except (*ARCHIVE_ERRORS, RuntimeError, ValueError) as err:
                raise DataError(f"{source}: member '{info.filename}' cannot be read: "
                                f"{_reason(err)}") from err
            files[member] = lambda data=data: data


def _list_tar(source: Path, files: dict, folders: set, max_unpacked_bytes: int,
              max_members: int) -> None:
    """`list_files` for a tar (.tar, .tar.gz, .tar.bz2, .tar.xz): headers checked and counted
    first, then the archive is read to its very end (so a damaged header that tarfile takes for
    the end of the archive, or a compressed stream whose checksum fails, is refused instead of
    silently ending the listing), then the members' data are read."""
    with tarfile.open(source) as tf:
        members, size = [], 0
        for info in tf:  # headers only: checked before the next member's data is skipped
            member = _check_member_name(info.name, source)
            if not (info.isfile() or info.isdir()):
                kind = _TAR_KINDS.get(info.type, f"of tar type {info.type!r}")
                raise DataError(f"{source}: member '{info.name}' is {kind}")
            members.append((info, member))
            size += info.size if info.isfile() else 0
            _check_caps(source, len(members), size, max_members, max_unpacked_bytes, False)
        end = tf.offset
        stream = tf.fileobj
        stream.seek(end)
        position = end
        for block in iter(lambda: stream.read(1 << 20), b""):
            rest = block.lstrip(b"\0")
            if rest:
                nonzero = len(block) - len(rest)
                last = f" after member '{members[-1][0].name}'" if members else ""
                raise DataError(f"{source}: damaged at byte {position + nonzero}{last}: the "
                                f"archive's listing ends at byte {end} but data follow (a "
                                f"corrupted member header?)")
            position += len(block)
        if position - end < 2 * tarfile.BLOCKSIZE:
            raise DataError(f"{source}: truncated: it ends at byte {position} without the "
                            f"end-of-archive marker (two empty 512-byte blocks) after member "
                            f"'{members[-1][0].name if members else ''}'")
        for info, member in members:  # in stream order: a .tar.gz is read once more
            if info.isdir():
                folders.add(member)
            else:
                try:
                    data = tf.extractfile(info).read()
                except ARCHIVE_ERRORS as err:
                    raise DataError(f"{source}: member '{info.name}' cannot be read: "
                                    f"{_reason(err)}") from err
                files[member] = lambda data=data: data


def check_archive(path: Path, max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
                  max_members: int = MAX_MEMBERS) -> None:
    """Check that `path` is a zip or tar archive that reads to its end: every zip member's CRC,
    every tar header and, for a compressed tar, the stream's checksum. Nothing is kept.

    Raises:
        DataError: another kind of file (naming its first bytes), a damaged or truncated
            archive (naming the member or byte), or one over the caps (see `list_files`).
    """
    if zipfile.is_zipfile(path) or tarfile.is_tarfile(path) or _looks_compressed(path):
        list_files(path, max_unpacked_bytes, max_members)
        return
    raise DataError(f"{path}: not a zip or tar archive; {_first_bytes(path)}")
