"""The challenge's `fer2013.csv` (pixels as space-separated numbers, one row an image, the
`Usage` column its split): its rows as lossless PNG members of the raw archive."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from io import BytesIO

import numpy as np
from PIL import Image

from ferpipe.core.errors import DataError

#: The challenge CSV's name; a source holding it is read as the CSV, not as image folders.
CSV_NAME = "fer2013.csv"
#: `emotion` indices of fer2013.csv, in the challenge's order (4, 5, 6 differ from CLASS_NAMES).
CSV_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: `Usage` values of fer2013.csv mapped to split names.
CSV_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
#: Side of the CSV's images, pixels (each row holds CSV_SIDE**2 values).
CSV_SIDE = 48

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
