"""The raw FER2013 dataset: fetching it, checking its layout, decoding its images.

Data flows one way: source (Kaggle zip, tar, folder) -> `data/raw/images.zip` -> decoded uint8
arrays, which `ferpipe.data` saves as `data/prepared/<split>.npz`.

`data/raw/images.zip` is the source normalized to `<split>/<class>/<file>` members (canonical split
and class names, sorted, uncompressed, fixed timestamps: the same source gives the same bytes). One
file instead of FER2013's 35,887 small ones keeps the download stage and DVC's hashing, caching and
removing of its output fast; the JPEG bytes are copied as they are and decoded once, by prepare.
Only the download and prepare stages import this module, so changing how data is fetched does not
invalidate a trained model.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.request
import zipfile
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from ferpipe.data import CLASS_NAMES, IMAGE_SIZE, DataError

#: Class-folder spellings seen in FER2013 copies, lower-cased, mapped to the canonical names.
CLASS_ALIASES: dict[str, str] = {
    **{name: name for name in CLASS_NAMES},
    "anger": "angry", "disgusted": "disgust", "fearful": "fear", "afraid": "fear",
    "happiness": "happy", "neutrality": "neutral", "sadness": "sad", "surprised": "surprise",
}

#: Split-folder spellings mapped to the normalized split names.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

#: The download stage's output file inside `download.out`.
RAW_ARCHIVE = "images.zip"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

# --------------------------------------------------------------------------- class names


def canonical_class(folder_name: str) -> str | None:
    """Map a class-folder name (`Angry`, `happiness`, `3_sad` ...) to a canonical class, or None."""
    key = re.sub(r"[^a-z]", "", folder_name.lower())
    return CLASS_ALIASES.get(key)


def map_class_folders(names: list[str], where: str) -> dict[str, str]:
    """Map every folder name in `names` to a canonical class.

    Raises:
        DataError: a folder name is not a known spelling, or two folders map to one class; the
            message lists what was found and the 7 expected classes.
    """
    mapping: dict[str, str] = {}
    unknown = [name for name in names if canonical_class(name) is None]
    if unknown:
        raise DataError(
            f"{where}: unknown class folder(s) {sorted(unknown)}; found {sorted(names)}, "
            f"expected the 7 FER2013 classes {list(CLASS_NAMES)} (or spellings such as "
            f"'Angry', 'happiness', 'sadness')")
    for name in names:
        cls = canonical_class(name)
        if cls in mapping.values():
            raise DataError(f"{where}: two folders map to class '{cls}': {sorted(names)}")
        mapping[name] = cls
    return mapping


# --------------------------------------------------------------------------- download


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> None:
    """Check `path` against an expected hex sha256 (skipped when `expected` is empty).

    Raises:
        DataError: the hashes differ; the message shows both.
    """
    if not expected:
        return
    actual = sha256_of(path)
    if actual.lower() != expected.lower():
        raise DataError(f"{path}: sha256 mismatch: expected {expected}, got {actual}")


def http_download(url: str, dest: Path) -> Path:
    """Stream `url` to `dest` through `dest.part` with a progress bar, then rename.

    A download that stops half-way leaves only the `.part` file, never a truncated `dest`.

    Raises:
        DataError: the request failed (offline, HTTP error); the message names the URL.
    """
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except OSError as err:
        raise DataError(f"could not download {url}: {err}") from err
    part.replace(dest)
    return dest


def kaggle_download(handle: str) -> Path:
    """Download a Kaggle dataset through kagglehub and return its unpacked folder.

    Raises:
        DataError: kagglehub is missing or the download failed (offline, unknown handle).
    """
    try:
        import kagglehub
    except ImportError as err:
        raise DataError("the kaggle: source needs kagglehub (pip install kagglehub)") from err
    try:
        return Path(kagglehub.dataset_download(handle))
    except Exception as err:  # kagglehub raises many types (HTTP, connection, auth)
        raise DataError(f"could not download kaggle:{handle}: {err}") from err


def _check_member_name(name: str, where: Path) -> PurePosixPath:
    """The member's path, refusing absolute paths and `..` (they would land outside the target)."""
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or ".." in member.parts or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{where}: unsafe member path '{name}'")
    return member


def list_files(source: Path) -> dict[PurePosixPath, Callable[[], bytes]]:
    """Every regular file in a zip, a tar (.tar, .tar.gz) or a folder, with a reader for its bytes.

    Archive members are read into memory here (FER2013 is ~60 MB) so the archive is closed on
    return; folder files are read when their reader is called.

    Returns:
        {path relative to the source root: zero-argument function returning the file's bytes}.

    Raises:
        DataError: unreadable archive, a member with an absolute path or `..`, or a link member
            (symlinks and hardlinks are refused, not followed).
    """
    files: dict[PurePosixPath, Callable[[], bytes]] = {}
    try:
        if source.is_dir():
            for path in sorted(source.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    files[PurePosixPath(path.relative_to(source).as_posix())] = path.read_bytes
        elif zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    member = _check_member_name(info.filename, source)
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise DataError(f"{source}: member '{info.filename}' is a symlink")
                    if not info.is_dir():
                        data = zf.read(info)
                        files[member] = lambda data=data: data
        elif tarfile.is_tarfile(source):
            # Read in stream order: random access into a .tar.gz re-decompresses from the start.
            with tarfile.open(source) as tf:
                for info in tf:
                    member = _check_member_name(info.name, source)
                    if info.issym() or info.islnk():
                        raise DataError(f"{source}: member '{info.name}' is a link")
                    if info.isfile():
                        data = tf.extractfile(info).read()
                        files[member] = lambda data=data: data
        else:
            raise DataError(f"{source}: expected a .zip, .tar or .tar.gz archive or a folder")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{source}: cannot read: {err}") from err
    return files


def find_layout(paths: list[PurePosixPath], where: Path, max_depth: int = 3
                ) -> dict[PurePosixPath, tuple[str, str]]:
    """Map each image file of a FER2013 image-folder copy to its (split, class).

    The split folders (`train/`, `test/`, optionally `val/`, any spelling in SPLIT_ALIASES) are
    found at the top or under up to `max_depth` wrapping folders (`archive/`, `fer2013/` ...);
    images sit in `<split>/<class>/`. Files that are not images (by suffix) are ignored.

    Raises:
        DataError: no train/ folder, no test/ folder, an unknown class folder, or an empty split.
    """
    by_root: dict[PurePosixPath, dict[str, dict[str, list[PurePosixPath]]]] = {}
    for path in paths:
        if path.suffix.lower() not in IMAGE_SUFFIXES or len(path.parts) < 3:
            continue
        root, split_dir, class_dir = path.parents[2], path.parts[-3], path.parts[-2]
        if len(root.parts) <= max_depth and split_dir.lower() in SPLIT_ALIASES:
            by_root.setdefault(root, {}).setdefault(split_dir, {}).setdefault(
                class_dir, []).append(path)
    roots = sorted((r for r, splits in by_root.items()
                    if any(SPLIT_ALIASES[s.lower()] == "train" for s in splits)),
                   key=lambda r: len(r.parts))
    if not roots:
        raise DataError(f"{where}: no train/ folder found (expected train/<class>/ and "
                        f"test/<class>/, at the top or under up to {max_depth} folders)")
    root = roots[0]
    splits = {SPLIT_ALIASES[s.lower()]: (s, classes) for s, classes in by_root[root].items()}
    for required in ("train", "test"):
        if required not in splits:
            raise DataError(f"{where}/{root}: no {required}/ split folder; found "
                            f"{sorted(splits)}")
    layout: dict[PurePosixPath, tuple[str, str]] = {}
    for split, (split_dir, classes) in splits.items():
        mapping = map_class_folders(sorted(classes), f"{where}/{root / split_dir}")
        for class_dir, files in classes.items():
            for path in files:
                layout[path] = (split, mapping[class_dir])
    return layout


def write_raw_archive(source: Path, dest: Path) -> dict[str, dict[str, int]]:
    """Normalize a FER2013 copy (zip, tar, folder) into the uncompressed zip `dest`.

    Members are `<split>/<class>/<file name>` with canonical names, in sorted order, with fixed
    timestamps, so the same images give the same bytes. `dest` is written to a temp name first.

    Returns:
        Image counts per split and class (every canonical class listed, zeros included).

    Raises:
        DataError: see `list_files` and `find_layout`; two files that normalize to one name.
    """
    files = list_files(source)
    layout = find_layout(list(files), source)
    entries: dict[str, PurePosixPath] = {}
    for path, (split, cls) in layout.items():
        name = f"{split}/{cls}/{path.name}"
        if name in entries:
            raise DataError(f"{source}: '{entries[name]}' and '{path}' both become '{name}'")
        entries[name] = path
    counts = {split: {cls: 0 for cls in CLASS_NAMES}
              for split in sorted({s for s, _ in layout.values()})}
    tmp = dest.with_name(dest.name + ".tmp")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out:
            for name in sorted(entries):
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.external_attr = 0o644 << 16
                out.writestr(info, files[entries[name]]())
                split, cls = layout[entries[name]]
                counts[split][cls] += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return counts


def fetch_raw(source: str, local_archive: Path, dest: Path, sha256: str | None = None
              ) -> dict[str, dict[str, int]]:
    """Fetch FER2013 and write it to `dest/images.zip` in the normalized layout.

    `local_archive` is looked at first (as torchvision datasets check their root before
    downloading): if it exists it is used and the network is not touched. Otherwise `source` is
    `kaggle:<owner>/<dataset>` (through kagglehub), an `http(s)://` URL (saved to
    `local_archive`), or a local archive (zip, tar, tar.gz) or folder. `dest` is replaced only
    after the new archive is complete; the source is never modified.

    Returns:
        Image counts per split and class.

    Raises:
        DataError: the download failed (with where to put the archive to work offline), the
            sha256 does not match, or the layout is not FER2013's.
    """
    if local_archive.exists():
        print(f"using local copy {local_archive}")
        path = local_archive
    elif source.startswith("kaggle:"):
        try:
            path = kaggle_download(source.removeprefix("kaggle:"))
        except DataError as err:
            raise DataError(f"{err}\nTo work offline, put the FER2013 archive (the Kaggle zip) "
                            f"at {local_archive} and run again.") from err
    elif source.startswith(("http://", "https://")):
        try:
            path = http_download(source, local_archive)
        except DataError as err:
            raise DataError(f"{err}\nTo work offline, put the archive at {local_archive} "
                            f"and run again.") from err
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"download.source: {path} does not exist (expected kaggle:<owner>/"
                            f"<dataset>, an http(s) URL, or a local archive or folder)")
    if path.is_file():
        verify_sha256(path, sha256)
    elif sha256:
        print(f"note: {path} is a folder; download.sha256 applies to archives and is skipped")

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        counts = write_raw_archive(path, Path(tmp) / "raw" / RAW_ARCHIVE)
        if dest.exists():
            shutil.rmtree(dest)
        (Path(tmp) / "raw").replace(dest)
    return counts


# --------------------------------------------------------------------------- prepare


def decode_image(data: bytes, size: int = IMAGE_SIZE) -> tuple[np.ndarray, bool]:
    """Decode one encoded image (JPEG, PNG ...) to grayscale `size` x `size` pixels.

    Returns:
        (uint8 array of shape (size, size), whether it had to be converted or resized).
    """
    with Image.open(BytesIO(data)) as img:
        converted = img.mode != "L" or img.size != (size, size)
        img = img.convert("L")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8), converted


def _decode_members(archive: str, names: list[str], size: int) -> tuple[np.ndarray, int]:
    """Decode `names` from the zip `archive` (run in a worker process)."""
    with zipfile.ZipFile(archive) as zf:
        decoded = [decode_image(zf.read(name), size) for name in names]
    return (np.stack([pixels for pixels, _ in decoded]) if decoded
            else np.empty((0, size, size), np.uint8), sum(c for _, c in decoded))


def decode_archive(archive: Path, size: int = IMAGE_SIZE, workers: int | None = None
                   ) -> dict[str, tuple[dict[str, np.ndarray], int]]:
    """Decode every image of `data/raw/images.zip`, split by split, in a stable order.

    Images are ordered by class (CLASS_NAMES order), then file name, and decoded by `workers`
    processes (default: one per CPU core).

    Returns:
        {split: (arrays, converted)}: `images` uint8 (N, size, size), `labels` int64 (N,)
        indexing CLASS_NAMES, `files` str (N,) as `<class>/<file name>`; and how many images
        were converted to grayscale or resized.

    Raises:
        DataError: the archive is missing or unreadable, or train or test has no images.
    """
    if not archive.is_file():
        raise DataError(f"{archive}: not found (run the download stage)")
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{archive}: cannot read: {err}") from err
    order = {cls: i for i, cls in enumerate(CLASS_NAMES)}
    members: dict[str, list[tuple[int, str, str]]] = {}
    for name in names:
        split, cls, file = name.split("/", 2)
        members.setdefault(split, []).append((order[cls], file, name))
    workers = workers or os.cpu_count() or 1
    out = {}
    with ProcessPoolExecutor(workers) as pool:
        for split, items in sorted(members.items()):
            items.sort()
            chunks = [items[i::workers] for i in range(workers)]
            results = list(pool.map(_decode_members, [str(archive)] * workers,
                                    [[n for _, _, n in chunk] for chunk in chunks],
                                    [size] * workers))
            images = np.empty((len(items), size, size), np.uint8)
            for w, (pixels, _) in enumerate(results):
                images[w::workers] = pixels
            out[split] = ({"images": images,
                           "labels": np.asarray([label for label, _, _ in items], np.int64),
                           "files": np.asarray([f"{CLASS_NAMES[label]}/{file}"
                                                for label, file, _ in items])},
                          sum(c for _, c in results))
    for required in ("train", "test"):
        if required not in out:
            raise DataError(f"{archive}: no images in split '{required}'")
    return out
