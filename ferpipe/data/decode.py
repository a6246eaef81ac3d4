"""Decoding the images of `data/raw/images.zip` for the prepare stage: grayscale 48 x 48 uint8
arrays, on every CPU core, with undecodable files reported rather than fatal."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ferpipe.core.errors import DataError
from ferpipe.data.splits import CLASS_NAMES, IMAGE_SIZE

#: Pillow modes holding 16-bit samples (mode `I`, 32-bit, is how older Pillows open 16-bit PNGs).
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class BadImage(DataError):
    """An image file that cannot be decoded; its message is a short reason ("truncated" ...)."""


def to_gray(img: Image.Image) -> Image.Image:
    """Mode L of any image, upright: EXIF orientation applied (as a photo viewer shows it),
    16-bit samples scaled (value / 257, rounded), colour and palette images by Pillow's
    `convert("L")` (ITU-R 601-2 luma). Used by prepare and by the predict command alike."""
    img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE_MODES:
        wide = np.asarray(img, dtype=np.int64)
        return Image.fromarray(np.clip((wide + 128) // 257, 0, 255).astype(np.uint8))
    return img.convert("L")


def decode_image(data: bytes, size: int = IMAGE_SIZE) -> tuple[np.ndarray, bool]:
    """Decode one encoded image (JPEG, PNG ...) to grayscale `size` x `size` pixels.

    EXIF orientation is applied; color and palette images become luma (ITU-R 601-2, Pillow's
    `convert("L")`), alpha and
    transparency are dropped (as torchvision's image loader does), 16-bit samples (modes I;16,
    I) are scaled to 8 bits (value / 257, rounded; mode I is clipped to 0..65535 first), and other
    sizes are resized (bilinear). Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`)
    applies, its warning level included.

    Returns:
        (uint8 array of shape (size, size), whether it had to be converted or resized).

    Raises:
        BadImage: the data cannot be decoded; its message is the reason: "empty file", "cannot
            identify image file", "truncated", "decompression bomb" or "corrupt: <detail>".
    """
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data)) as img:
                converted = img.mode != "L" or img.size != (size, size)
                img = to_gray(img)
                if img.size != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
                return np.asarray(img, dtype=np.uint8), converted
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise BadImage("decompression bomb") from err
    except UnidentifiedImageError as err:
        raise BadImage("cannot identify image file") from err
    except Exception as err:  # Pillow reports corrupt data as OSError, SyntaxError, ValueError ...
        raise BadImage("truncated" if "truncated" in str(err).lower() else f"corrupt: {err}"
                       ) from err


def _decode_members(archive: str, names: list[str], size: int
                    ) -> tuple[np.ndarray, int, list[tuple[int, str]]]:
    """Decode `names` from the zip `archive` (run in a worker process).

    Returns:
        (uint8 (n_good, size, size) pixels of the decodable ones in order, how many of them were
        converted, [(index in `names`, reason)] of the others).
    """
    pixels, converted, bad = [], 0, []
    with zipfile.ZipFile(archive) as zf:
        for i, name in enumerate(names):
            try:
                data = zf.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as err:
                raise DataError(f"{archive}: member '{name}' cannot be read: {err}; run the "
                                f"download stage again (dvc repro -f download)") from None
            try:
                image, was_converted = decode_image(data, size)
            except BadImage as err:
                bad.append((i, str(err)))
                continue
            pixels.append(image)
            converted += was_converted
    return (np.stack(pixels) if pixels else np.empty((0, size, size), np.uint8), converted, bad)


def exit_with_parent(parent: int) -> None:
    """A worker process's initializer: end this process when `parent` (the stage) dies, even by
    SIGKILL (the OOM killer, a CI timeout, `kill -9` of `dvc repro`), which gives the
    executor no chance to stop its workers.

    On Linux the kernel sends SIGKILL when the parent goes (`prctl(PR_SET_PDEATHSIG)`); on any
    system a daemon thread checks every second that the parent is still `parent`.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above ran
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def decode_archive(archive: Path, size: int = IMAGE_SIZE, workers: int | None = None
                   ) -> dict[str, tuple[dict[str, np.ndarray], dict]]:
    """Decode every image of `data/raw/images.zip`, split by split, in a stable order.

    Images are ordered by class (CLASS_NAMES order), then file name, and decoded by `workers`
    processes (default: one per CPU core), which end when the stage does, however it ends
    (`exit_with_parent`). Files that do not decode (see `decode_image`) are
    left out and listed; no threshold is applied here.

    Returns:
        {split: (arrays, info)}. arrays: `images` uint8 (N, size, size), `labels` int64 (N,)
        indexing CLASS_NAMES, `files` str (N,) as `<class>/<file name>`, for the N decodable
        files. info: `converted`, how many of them were converted to grayscale or resized;
        `bad`, [(`<class>/<file name>`, reason)] of the files left out, in the same order.

    Raises:
        DataError: the archive is missing or unreadable, a member is not `<split>/<class>/<file>`
            with a canonical class, or train or test has no decodable image.
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
        parts = name.split("/", 2)
        if len(parts) != 3 or parts[1] not in order:
            raise DataError(f"{archive}: unexpected member '{name}'; expected <split>/<class>/"
                            f"<file> with a class in {list(CLASS_NAMES)}")
        split, cls, file = parts
        members.setdefault(split, []).append((order[cls], file, name))
    workers = workers or os.cpu_count() or 1
    out = {}
    with ProcessPoolExecutor(workers, initializer=exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        for split, items in sorted(members.items()):
            items.sort()
            chunks = [items[i::workers] for i in range(workers)]
            results = list(pool.map(_decode_members, [str(archive)] * workers,
                                    [[n for _, _, n in chunk] for chunk in chunks],
                                    [size] * workers))
            images = np.empty((len(items), size, size), np.uint8)
            good = np.ones(len(items), bool)
            bad = []
            for w, (pixels, _, failed) in enumerate(results):
                positions = np.arange(w, len(items), workers)
                for i, reason in failed:
                    good[positions[i]] = False
                    bad.append((positions[i], reason))
                images[positions[good[positions]]] = pixels
            labels = np.asarray([label for label, _, _ in items], np.int64)
            files = [f"{CLASS_NAMES[label]}/{file}" for label, file, _ in items]
            out[split] = ({"images": images[good], "labels": labels[good],
                           "files": np.asarray([f for f, ok in zip(files, good) if ok], str)},
                          {"converted": sum(converted for _, converted, _ in results),
                           "bad": [(files[p], reason) for p, reason in sorted(bad)]})
    for required in ("train", "test"):
        if required not in out or not len(out[required][0]["labels"]):
            undecodable = len(out[required][1]["bad"]) if required in out else 0
            raise DataError(f"{archive}: no images in split '{required}'"
                            + (f" ({undecodable} files could not be decoded)"
                               if undecodable else ""))
    return out
