"""Prepared FER2013 arrays: class names, the split files, the val carve-out and pixel stats.

Data flows one way: source -> `data/raw/images.zip` (`ferpipe.data.fetch`, `ferpipe.data.archive`) ->
decoded (`ferpipe.data.decode`) -> `data/prepared/<split>.npz` (uint8 images N x 48 x 48, int64
labels, source file names) -> `data/stats.json`. The train stage needs only this module, not the
fetching code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ferpipe.core.errors import DataError
from ferpipe.core.files import read_json
from ferpipe.core.handoffs import TABLES, check_split, check_stats, check_table

#: The 7 FER2013 classes in the project's canonical order (alphabetical, as in the Kaggle copy).
CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

#: Side of the prepared images, pixels.
IMAGE_SIZE = 48

#: The download stage's one output file inside `download.out` (and prepare's input).
RAW_ARCHIVE = "images.zip"

def stratified_split(arrays: dict[str, np.ndarray], fraction: float, seed: int
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Split arrays into (train, val) with `fraction` of each class in val, seeded.

    Uses scikit-learn's `train_test_split(stratify=labels)`, which puts ceil(fraction * N)
    images in val.

    Raises:
        DataError: naming `prepare.val_fraction`: a class has fewer than 2 images, or val or
            train would get fewer images than there are classes.
    """
    from sklearn.model_selection import train_test_split  # only the prepare stage needs it

    labels = arrays["labels"]
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    classes = int((counts > 0).sum())
    for cls, count in zip(CLASS_NAMES, counts):
        if count == 1:
            raise DataError(f"prepare.val_fraction: class '{cls}' has 1 training image; a "
                            f"stratified val split needs at least 2 of each class")
    n_val = int(np.ceil(fraction * len(labels)))
    if n_val < classes or len(labels) - n_val < classes:
        raise DataError(f"prepare.val_fraction: {fraction} of {len(labels)} training images "
                        f"leaves {n_val} for val and {len(labels) - n_val} for train; each needs "
                        f"at least one image of each of the {classes} classes")
    index = np.arange(len(labels))
    try:
        train_idx, val_idx = train_test_split(index, test_size=fraction, random_state=seed,
                                              stratify=labels)
    except ValueError as err:
        raise DataError(f"prepare.val_fraction: {fraction}: {err}") from None
    train_idx.sort()
    val_idx.sort()
    return ({k: v[train_idx] for k, v in arrays.items()},
            {k: v[val_idx] for k, v in arrays.items()})


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """Images per class name for an int64 label array."""
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    return {cls: int(n) for cls, n in zip(CLASS_NAMES, counts)}


def save_split(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write one split to an uncompressed `.npz` (written to a temp name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    try:
        np.savez(tmp, **arrays)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def load_split(path: str | Path) -> dict[str, np.ndarray]:
    """Load a prepared split: `images` uint8 (N, 48, 48), `labels` int64 (N,), `files` str (N,).

    Raises:
        DataError: the file is missing, unreadable, lacks `images` or `labels`, or holds arrays
            of another dtype, shape or label range (`handoffs.check_split`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prepared split not found (run the prepare stage)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable prepared split ({err}); run the prepare stage "
                        f"again (dvc repro -f prepare)") from None
    if "images" not in arrays or "labels" not in arrays:
        raise DataError(f"{path}: holds {sorted(arrays)}; expected images and labels (a split "
                        f"written by the prepare stage)")
    return check_split(arrays, path, len(CLASS_NAMES))


# --------------------------------------------------------------------------- stats


def pixel_stats(images: np.ndarray) -> dict[str, float]:
    """Mean and std of uint8 pixels in [0, 1] units, exact, from a 256-bin histogram.

    Args:
        images: uint8 array of any shape.

    Returns:
        {"mean": float, "std": float, "pixels": int}
    """
    flat = images.reshape(-1)
    hist = np.zeros(256, dtype=np.float64)
    for start in range(0, flat.size, 1 << 22):  # chunks keep bincount's int64 copy small
        hist += np.bincount(flat[start:start + (1 << 22)], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum()
    mean = float((hist * values).sum() / n)
    var = float((hist * (values - mean) ** 2).sum() / n)
    return {"mean": mean, "std": var ** 0.5, "pixels": int(n)}


def read_stats(path: str | Path) -> dict:
    """Read `data/stats.json` and check it (`handoffs.check_stats`): {"mean", "std", "pixels"}.

    Raises:
        DataError: missing, not JSON, or a mean/std that is missing, not finite or out of range.
    """
    return check_stats(read_json(path), path)


def read_table(kind: str, path: str | Path | None = None, classes: list[str] | None = None):
    """Read a CSV one stage hands the next as a pandas DataFrame and check it
    (`handoffs.check_table`): kind "history" (metrics/history.csv), "lr" (metrics/lr.csv) or
    "confusion" (metrics/confusion.csv, whose class names must be among `classes`); `path`
    defaults to the kind's file.

    Raises:
        DataError: missing, not readable as CSV, or a missing column, no rows, a non-finite
            number or an unknown class name (one line naming the file and its writer stage).
    """
    import pandas as pd  # only the stages that read CSVs pay for the import

    path = Path(path if path is not None else TABLES[kind][0])
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: not readable CSV ({str(err).splitlines()[0]})") from None
    return check_table(frame, path, kind, classes)
