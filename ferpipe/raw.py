"""The raw FER2013 dataset: fetching the archive, checking its layout, decoding its images.

Data flows one way: archive -> `data/raw/<split>/<class>/*` -> decoded uint8 arrays, which
`ferpipe.data` saves as `data/prepared/<split>.npz`. Only the download and prepare stages import
this module, so changing how data is fetched does not invalidate a trained model.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

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
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")

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


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar archive into `dest`, refusing members that would land outside it.

    Raises:
        DataError: the archive is unreadable or has a member with an absolute path or `..`.
    """
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    parts = Path(member).parts
                    if Path(member).is_absolute() or ".." in parts:
                        raise DataError(f"{archive}: unsafe member path '{member}'")
                zf.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")
        else:
            raise DataError(f"{archive}: not a zip or tar archive")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{archive}: cannot unpack: {err}") from err


def find_split_root(folder: Path, max_depth: int = 3) -> Path:
    """Find the folder that holds the split folders (`train/`, `test/`, ...) under `folder`.

    The Kaggle copies put `train/` and `test/` at the top or under one or two wrapping folders.

    Raises:
        DataError: no folder within `max_depth` levels has a `train` folder.
    """
    level = [folder]
    for _ in range(max_depth + 1):
        for candidate in level:
            children = [p for p in candidate.iterdir() if p.is_dir()]
            if any(SPLIT_ALIASES.get(c.name.lower()) == "train" for c in children):
                return candidate
        level = [c for p in level for c in p.iterdir() if c.is_dir()]
    raise DataError(f"{folder}: no train/ folder found (expected train/<class>/ and test/<class>/)")


def normalize_layout(source: Path, dest: Path, move: bool) -> dict[str, dict[str, int]]:
    """Copy (or move) the images under `source` into `dest/<split>/<class>/`.

    Args:
        source: a folder holding train/ and test/ (and optionally val/) with class folders.
        dest: the normalized output folder; must not exist yet.
        move: move files instead of copying (only for a temporary extraction folder).

    Returns:
        Image counts per split and class.

    Raises:
        DataError: train or test is missing, a class folder has an unknown name, or a split has
            no images.
    """
    root = find_split_root(source)
    splits: dict[str, Path] = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        split = SPLIT_ALIASES.get(child.name.lower())
        if split:
            splits[split] = child
    for required in ("train", "test"):
        if required not in splits:
            raise DataError(f"{root}: no {required}/ split folder; found {sorted(splits)}")
    counts: dict[str, dict[str, int]] = {}
    transfer = shutil.move if move else shutil.copy2
    for split, split_dir in splits.items():
        class_dirs = [p for p in split_dir.iterdir() if p.is_dir()]
        mapping = map_class_folders([p.name for p in class_dirs], str(split_dir))
        counts[split] = {}
        for class_dir in class_dirs:
            cls = mapping[class_dir.name]
            out = dest / split / cls
            out.mkdir(parents=True, exist_ok=True)
            files = [f for f in class_dir.iterdir()
                     if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
            for f in files:
                transfer(str(f), str(out / f.name))
            counts[split][cls] = len(files)
        if sum(counts[split].values()) == 0:
            raise DataError(f"{split_dir}: split '{split}' has no images")
    return counts


def fetch_raw(source: str, local_archive: Path, dest: Path, sha256: str | None = None,
              workdir: Path | None = None) -> dict[str, dict[str, int]]:
    """Fetch FER2013 and unpack it into `dest` in the normalized layout.

    `local_archive` is looked at first (as torchvision datasets check their root before
    downloading): if it exists it is used and the network is not touched. Otherwise `source` is
    `kaggle:<owner>/<dataset>` (through kagglehub), an `http(s)://` URL (saved to
    `local_archive`), or a local archive (zip, tar, tar.gz) or folder. `dest` is written
    atomically: it is replaced only after the whole layout is built beside it.

    Returns:
        Image counts per split and class.

    Raises:
        DataError: the download failed (with where to put the archive to work offline), the
            sha256 does not match, or the layout is not FER2013's.
    """
    workdir = Path(workdir or dest.parent)
    workdir.mkdir(parents=True, exist_ok=True)
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

    with tempfile.TemporaryDirectory(dir=workdir, prefix=".unpack-") as tmp:
        tmp = Path(tmp)
        if path.is_file():
            if not _is_archive(path) and not zipfile.is_zipfile(path):
                raise DataError(f"{path}: expected a .zip, .tar or .tar.gz archive")
            _safe_extract(path, tmp / "src")
            counts = normalize_layout(tmp / "src", tmp / "out", move=True)
        else:
            counts = normalize_layout(path, tmp / "out", move=False)
        if dest.exists():
            shutil.rmtree(dest)
        (tmp / "out").replace(dest)
    return counts


# --------------------------------------------------------------------------- prepare


def decode_image(path: Path, size: int = IMAGE_SIZE) -> tuple[np.ndarray, bool]:
    """Decode one image to grayscale `size` x `size`.

    Returns:
        (uint8 array of shape (size, size), whether it had to be converted or resized).
    """
    with Image.open(path) as img:
        converted = img.mode != "L" or img.size != (size, size)
        img = img.convert("L")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8), converted


def decode_split(split_dir: Path, size: int = IMAGE_SIZE) -> tuple[dict[str, np.ndarray], int]:
    """Decode every image of one split folder (`<split>/<class>/*`), in a stable order.

    Returns:
        (arrays, converted): `images` uint8 (N, size, size), `labels` int64 (N,) indexing
        CLASS_NAMES, `files` str (N,) paths relative to the split folder; and how many images
        were converted to grayscale or resized.

    Raises:
        DataError: the split has no images.
    """
    images, labels, files, converted = [], [], [], 0
    for label, cls in enumerate(CLASS_NAMES):
        class_dir = split_dir / cls
        if not class_dir.is_dir():
            continue
        for f in sorted(class_dir.iterdir()):
            pixels, was_converted = decode_image(f, size)
            images.append(pixels)
            labels.append(label)
            files.append(f"{cls}/{f.name}")
            converted += was_converted
    if not images:
        raise DataError(f"{split_dir}: no images")
    return {"images": np.stack(images), "labels": np.asarray(labels, dtype=np.int64),
            "files": np.asarray(files)}, converted
