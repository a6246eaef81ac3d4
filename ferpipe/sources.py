"""Reading a FER2013 source safely and writing it as `data/raw/images.zip`.

A source is a zip, a tar (.tar, .tar.gz ...), a folder, or the challenge's `fer2013.csv` (bare or
inside one of those). `data/raw/images.zip` is the source normalized to `<split>/<class>/<file>`
members (canonical split and class names, sorted, uncompressed, fixed timestamps: the same source
gives the same bytes). One file instead of FER2013's 35,887 small ones keeps the download stage
and DVC's hashing, caching and removing of its output fast; the JPEG bytes are copied as they are
(the CSV's rows become lossless PNGs) and decoded once, by prepare (`ferpipe.decode`). Every file
in a class folder is copied, images or not (only OS junk such as `.DS_Store` is skipped): files
that do not decode are reported by prepare, not here. Sources are untrusted: links, device files,
paths leaving the archive and archives that unpack too large or into too many members are refused
before anything is read.
"""

from __future__ import annotations

import csv
import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from io import BytesIO, TextIOWrapper
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from PIL import Image

from ferpipe.classes import SPLIT_ALIASES, map_class_folders
from ferpipe.data import CLASS_NAMES
from ferpipe.errors import DataError

#: File and folder names (lower-cased) of OS junk that is skipped; so is every name starting with
#: a dot (`.DS_Store`, macOS `._*` files).
JUNK_NAMES = {"__macosx", "thumbs.db", "desktop.ini"}

#: The challenge CSV's name; a source holding it is read as the CSV, not as image folders.
CSV_NAME = "fer2013.csv"
#: `emotion` indices of fer2013.csv, in the challenge's order (4, 5, 6 differ from CLASS_NAMES).
CSV_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: `Usage` values of fer2013.csv mapped to split names.
CSV_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
#: Side of the CSV's images, pixels (each row holds CSV_SIDE**2 values).
CSV_SIDE = 48

#: Defaults of the decompression-bomb caps (the values of `download.max_unpacked_mb` and
#: `download.max_members` in params.yaml).
MAX_UNPACKED_BYTES = 2048 * 2**20
MAX_MEMBERS = 200_000

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

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


def _is_junk(name: str) -> bool:
    """Whether a file or folder name is OS junk (`.DS_Store`, `Thumbs.db`, `__MACOSX` ...)."""
    return name.startswith(".") or name.lower() in JUNK_NAMES


def find_layout(files: list[PurePosixPath], where: Path, folders: Iterable[PurePosixPath] = (),
                max_depth: int = 3) -> dict[PurePosixPath, tuple[str, str]]:
    """Map each file of a FER2013 image-folder copy to its (split, class).

    The split folders (any spelling in SPLIT_ALIASES) are found at the top or under up to
    `max_depth` wrapping folders (`archive/`, `fer2013/`, `images/` ...); the shallowest folder
    holding a train split is used. Every file directly inside `<split>/<class>/` is mapped,
    whatever its type (a file that is not an image is reported when decoding), except OS junk
    (`.DS_Store`, `Thumbs.db`, anything under `__MACOSX/` or a hidden folder). A copy with a
    validation split but no test split (`images/train`, `images/validation`) uses it as the test
    split; next to a test split it is the val split.

    Args:
        files: the source's file paths.
        folders: its folder paths (folders that hold files need not be listed); they show empty
            splits and class folders.

    Raises:
        DataError: no train or no test split folder, two folders for one split, a split without
            class folders, an unknown class folder, a class folder without files, or a file in
            a subfolder of a class folder, naming it. Files directly in a split folder (a
            README) are left out with a printed note naming them.
    """
    def junk_in(parts: tuple[str, ...]) -> bool:
        return any(_is_junk(part) for part in parts)

    # Every folder, with those implied by file paths: a class folder holding only junk is empty.
    known: set[PurePosixPath] = set()
    for folder in [*folders, *(path.parent for path in files)]:
        if not junk_in(folder.parts):
            known.update([folder, *folder.parents])
    tree: dict[PurePosixPath, dict[str, dict[str, list[PurePosixPath]]]] = {}
    for folder in known:
        if folder.name.lower() in SPLIT_ALIASES and len(folder.parent.parts) <= max_depth:
            tree.setdefault(folder.parent, {})[folder.name] = {}
    for folder in known:
        root, split_dir = folder.parent.parent, folder.parent.name
        if split_dir in tree.get(root, {}):
            tree[root][split_dir][folder.name] = []
    for path in files:
        if len(path.parts) >= 3 and not junk_in(path.parts):
            root, split_dir, class_dir = path.parents[2], path.parts[-3], path.parts[-2]
            if split_dir in tree.get(root, {}):
                tree[root][split_dir][class_dir].append(path)

    roots = sorted((r for r, splits in tree.items()
                    if any(SPLIT_ALIASES[s.lower()] == "train" for s in splits)),
                   key=lambda r: (len(r.parts), str(r)))
    if not roots:
        raise DataError(f"{where}: no train/ folder found (expected train/<class>/ and "
                        f"test/<class>/, at the top or under up to {max_depth} folders)")
    root = roots[0]
    splits: dict[str, tuple[str, dict[str, list[PurePosixPath]]]] = {}
    for split_dir, classes in sorted(tree[root].items()):
        split = SPLIT_ALIASES[split_dir.lower()]
        if split in splits:
            raise DataError(f"{where / root}: folders '{splits[split][0]}' and '{split_dir}' "
                            f"are both the {split} split")
        splits[split] = (split_dir, classes)
    if "test" not in splits and "val" in splits:
        print(f"note: {where / root}: no test split; '{splits['val'][0]}/' is used as the test "
              f"split")
        splits["test"] = splits.pop("val")
    for required in ("train", "test"):
        if required not in splits:
            raise DataError(f"{where / root}: no {required}/ split folder; found "
                            f"{sorted(split_dir for split_dir, _ in splits.values())}")
    split_dirs = {root / split_dir for split_dir, _ in splits.values()}
    loose = []
    for path in sorted(files):
        if junk_in(path.parts) or not any(folder in path.parents for folder in split_dirs):
            continue
        depth = len(path.relative_to(root).parts)
        if depth == 2:
            loose.append(str(path))
        elif depth > 3:
            raise DataError(f"{where / path}: an image in a subfolder of a class folder; expected "
                            f"images directly in <split>/<class>/ (move it up or delete it)")
    if loose:
        print(f"note: {where}: {len(loose)} file(s) directly in a split folder, not in a class "
              f"folder, are left out: {', '.join(loose[:5])}" + (" ..." if len(loose) > 5 else ""))
    layout: dict[PurePosixPath, tuple[str, str]] = {}
    for split, (split_dir, classes) in splits.items():
        split_path = where / root / split_dir
        if not classes:
            raise DataError(f"{split_path}: empty split: no class folders (expected "
                            f"{list(CLASS_NAMES)})")
        mapping = map_class_folders(sorted(classes), str(split_path))
        for class_dir, paths in sorted(classes.items()):
            if not paths:
                raise DataError(f"{split_path / class_dir}: empty class folder (no files)")
            for path in paths:
                layout[path] = (split, mapping[class_dir])
    return layout


def _png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 (H, W) array (mode L)."""
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def csv_members(lines: Iterable[str], where: str) -> dict[str, bytes]:
    """Turn the challenge CSV `fer2013.csv` into `images.zip` members.

    Columns (their names may carry spaces): `emotion`, the class index (0 angry, 1 disgust,
    2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral: CSV_CLASSES, not CLASS_NAMES's order);
    `pixels`, 48*48 = 2304 space-separated ints 0-255, row by row; `Usage`, Training ->
    train, PublicTest -> val, PrivateTest -> test. Data row i (0-based, the header not counted)
    becomes `<split>/<class>/<i>.png`, a lossless 48x48 mode-L PNG, with i zero-padded to 5
    digits (more for a longer CSV). A row whose pixels are not 2304 ints in 0..255 becomes
    `<split>/<class>/<i>.txt` holding its pixel text, which `decode_archive` reports as a bad
    image.

    Args:
        lines: the CSV's text lines (an open text file).
        where: the CSV's name for error messages.

    Returns:
        {member name: bytes}.

    Raises:
        DataError: malformed CSV, a missing column, an emotion or Usage value not among the
            expected ones (naming the line, row, column and value), or no Training or no
            PrivateTest row.
    """
    reader = csv.DictReader(lines)
    rows: list[tuple[str, str, str, bytes]] = []
    try:
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in ("emotion", "pixels", "Usage") if name not in columns]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}; found {columns}, expected "
                            f"emotion, pixels, Usage")
        reader.fieldnames = columns
        for row in reader:
            at = f"{where}: line {reader.line_num} (row {len(rows)})"
            emotion, usage = (row["emotion"] or "").strip(), (row["Usage"] or "").strip()
            if not re.fullmatch(r"[0-9]{1,3}", emotion) or int(emotion) >= len(CSV_CLASSES):
                raise DataError(f"{at}: column 'emotion' is '{emotion}'; expected 0-6 ("
                                + ", ".join(f"{i} {c}" for i, c in enumerate(CSV_CLASSES)) + ")")
            if usage not in CSV_USAGE:
                raise DataError(f"{at}: column 'Usage' is '{usage}'; expected one of "
                                f"{list(CSV_USAGE)}")
            text = row["pixels"] or ""
            values = text.split()
            try:
                pixels = np.array(values, dtype=np.int64)
            except (ValueError, OverflowError):
                pixels = np.empty(0, np.int64)
            if pixels.size == CSV_SIDE ** 2 and pixels.min() >= 0 and pixels.max() <= 255:
                rows.append((CSV_USAGE[usage], CSV_CLASSES[int(emotion)], ".png",
                             _png(pixels.astype(np.uint8).reshape(CSV_SIDE, CSV_SIDE))))
            else:
                rows.append((CSV_USAGE[usage], CSV_CLASSES[int(emotion)], ".txt",
                             text.encode()))
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{where}: line {reader.line_num}: not a readable CSV: {err}") from err
    found = {split for split, _, _, _ in rows}
    for usage, split in CSV_USAGE.items():
        if split != "val" and split not in found:
            raise DataError(f"{where}: no row with Usage '{usage}' (the {split} split); found "
                            f"{sorted(u for u, s in CSV_USAGE.items() if s in found)}")
    width = max(5, len(str(len(rows) - 1)))
    return {f"{split}/{cls}/{i:0{width}d}{suffix}": data
            for i, (split, cls, suffix, data) in enumerate(rows)}


def write_raw_archive(source: Path, dest: Path, max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
                      max_members: int = MAX_MEMBERS) -> dict[str, dict[str, int]]:
    """Normalize a FER2013 copy (zip, tar, folder, fer2013.csv) into the uncompressed zip `dest`.

    A `.csv` file, or an archive or folder holding a `fer2013.csv`, is read as the challenge CSV
    (see `csv_members`); anything else as image folders (see `find_layout`), every file of a
    class folder copied as it is. Members are `<split>/<class>/<file name>` with canonical names,
    in sorted order, with fixed timestamps, so the same source gives the same bytes. `dest` is
    written to a temp name first.

    Args:
        max_unpacked_bytes, max_members: caps on the archive or folder (see `list_files`).

    Returns:
        File counts per split and class (every canonical class listed, zeros included).

    Raises:
        DataError: see `list_files`, `find_layout` and `csv_members`; two files that normalize to
            one name; more than one fer2013.csv; a train split without images of some class
            (listing the missing classes).
    """
    if source.is_file() and source.suffix.lower() == ".csv":
        try:
            with open(source, encoding="utf-8-sig", newline="") as lines:
                table = csv_members(lines, str(source))
        except OSError as err:
            raise DataError(f"{source}: cannot read: {err.strerror or err}") from err
        entries = {name: (lambda data=data: data) for name, data in table.items()}
    else:
        listing = list_files(source, max_unpacked_bytes, max_members)
        tables = sorted(path for path in listing.files if path.name.lower() == CSV_NAME)
        if len(tables) > 1:
            raise DataError(f"{source}: more than one {CSV_NAME}: {[str(t) for t in tables]}")
        if tables:
            lines = TextIOWrapper(BytesIO(listing.files[tables[0]]()), encoding="utf-8-sig",
                                  newline="")
            table = csv_members(lines, f"{source}/{tables[0]}")
            entries = {name: (lambda data=data: data) for name, data in table.items()}
        else:
            entries = {}
            layout = find_layout(list(listing.files), source, listing.folders)
            for path, (split, cls) in layout.items():
                name = f"{split}/{cls}/{path.name}"
                if name in entries:
                    raise DataError(f"{source}: two files become '{name}' (one is '{path}')")
                entries[name] = listing.files[path]
    counts = {split: {cls: 0 for cls in CLASS_NAMES}
              for split in sorted({name.split("/")[0] for name in entries})}
    for name in entries:
        split, cls, _ = name.split("/", 2)
        counts[split][cls] += 1
    missing = [cls for cls, n in counts.get("train", {}).items() if n == 0]
    if missing:  # a model would silently learn fewer classes
        raise DataError(f"{source}: the train split has no {', no '.join(missing)} images; "
                        f"expected all 7 classes {list(CLASS_NAMES)}")
    tmp = dest.with_name(dest.name + ".tmp")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out:
            for name in sorted(entries):
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.external_attr = 0o644 << 16
                out.writestr(info, entries[name]())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return counts
