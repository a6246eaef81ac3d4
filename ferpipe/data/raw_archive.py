"""Writing a FER2013 source as `data/raw/images.zip`.

A source is a zip, a tar, a folder, or the challenge's `fer2013.csv` (bare or inside one of
those). `data/raw/images.zip` is the source normalized to `<split>/<class>/<file>` members
(canonical split and class names, sorted, uncompressed, fixed timestamps: the same source gives
the same bytes). One file instead of FER2013's 35,887 small ones keeps the download stage and
DVC's hashing, caching and removing of its output fast; the JPEG bytes are copied as they are
(the CSV's rows become lossless PNGs) and decoded once, by prepare (`ferpipe.data.decode`). Every
file in a class folder is copied, images or not (only OS junk is skipped): files that do not
decode are reported by prepare, not here.
"""

from __future__ import annotations

import zipfile
from io import BytesIO, TextIOWrapper
from pathlib import Path

from ferpipe.core.errors import DataError
from ferpipe.data.archive import MAX_MEMBERS, MAX_UNPACKED_BYTES, list_files
from ferpipe.data.fer2013_csv import CSV_NAME, csv_members
from ferpipe.data.layout import find_layout
from ferpipe.data.splits import CLASS_NAMES

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

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
