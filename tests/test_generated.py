"""Property-based tests (Hypothesis) of the untrusted inputs: the archive reader, the challenge CSV
and the params schema.

One property throughout: an input is either refused with the project's error (`DataError`,
`ParamsError`) naming it, or accepted with every image (every value) accounted for; never another
exception, never a silently smaller dataset. The inputs are generated: truncations and byte
corruptions of small zips and tars, folder layouts with odd member names, CSV rows, params values.
Example counts are kept small (the whole file runs in well under a minute) and the example
database is off, so a run writes nothing into the working tree.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import re
import struct
import tarfile
import tempfile
import types
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from ferpipe.core.errors import DataError, ParamsError, shorten
from ferpipe.core.params import Params, validate_params
from ferpipe.data.fer2013_csv import csv_members
from ferpipe.data.raw_archive import write_raw_archive
from ferpipe.data.splits import CLASS_NAMES
from tests.fakedata import make_image_folders, make_tar, make_zip

ROOT = Path(__file__).resolve().parents[1]


def bounded(n: int) -> settings:
    """`n` examples, no deadline (the machine may be busy), no example database (nothing is
    written into the working tree)."""
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Written out here, independently of ferpipe.data.archive, from the documented behaviour.
#: fer2013.csv's emotion indices.
CSV_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: fer2013.csv's Usage values and the splits they become.
CSV_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
#: OS junk names that are skipped (and every name starting with a dot).
JUNK = {"__macosx", "thumbs.db", "desktop.ini"}
#: Split folder spellings (a lone validation/ folder is the test split).
SPLIT_DIRS = {"train", "training", "val", "valid", "validation", "test", "testing"}
#: Class folder spellings seen in FER2013 copies.
SPELLINGS = {
    "angry": ["angry", "Angry", "ANGRY", "anger", "0_angry"],
    "disgust": ["disgust", "Disgust", "disgusted"],
    "fear": ["fear", "Fear", "fearful", "afraid"],
    "happy": ["happy", "Happy", "happiness", "3 happy"],
    "neutral": ["neutral", "Neutral", "neutrality"],
    "sad": ["sad", "Sad", "sadness"],
    "surprise": ["surprise", "Surprise", "surprised"],
}


def counts_of(members: dict[str, bytes]) -> dict[str, dict[str, int]]:
    """What `write_raw_archive` must return for these `<split>/<class>/<file>` members."""
    counts = {split: {cls: 0 for cls in CLASS_NAMES} for split in {m.split("/")[0] for m in members}}
    for name in members:
        split, cls, _ = name.split("/", 2)
        counts[split][cls] += 1
    return counts


def read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def refused_or_complete(source: Path, dest: Path, expected: dict[str, bytes],
                        same_bytes: bool = True) -> str:
    """The property: `write_raw_archive(source)` raises DataError naming `source` and writes
    nothing, or writes exactly the `expected` members (with their bytes unless `same_bytes` is
    False) and returns their counts. Any other exception fails the test."""
    try:
        counts = write_raw_archive(source, dest)
    except DataError as err:
        assert str(err).startswith(str(source)), f"DataError does not name the source: {err}"
        assert not dest.exists(), "a refused source left an output behind"
        return "refused"
    written = read_zip(dest)
    assert sorted(written) == sorted(expected), "accepted, but not every file accounted for"
    if same_bytes:
        assert written == expected, "accepted, but some member's bytes changed"
    assert counts == counts_of(expected)
    return "accepted"


# --------------------------------------------------------------------------- archives


@dataclass(repr=False)
class Archive:
    data: bytes
    suffix: str
    #: Named offsets of its structure (headers, data, index, end), for aimed corruptions.
    anchors: dict[str, int]
    #: Offsets of a zip's compression-method fields in its central directory.
    methods: frozenset[int] = frozenset()

    def __repr__(self) -> str:  # Hypothesis shows the fixture in a failing case: keep it short
        return f"Archive({len(self.data)} bytes, {self.suffix}, {self.anchors})"


class Archives(NamedTuple):
    kinds: dict[str, Archive]
    #: The members every archive must normalize to.
    expected: dict[str, bytes]

    def __repr__(self) -> str:
        return f"Archives({self.kinds}, {len(self.expected)} members expected)"


#: Anchor names every archive kind maps (to its own structure, or to a fallback offset).
ANCHORS = ("first_header", "first_data", "last_header", "last_data", "index", "end")


def _zip_anchors(data: bytes) -> dict[str, int]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    def data_at(info: zipfile.ZipInfo) -> int:
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                        info.header_offset + 30])
        return info.header_offset + 30 + name_len + extra_len
    eocd = data.rindex(b"PK\x05\x06")
    return {"first_header": infos[0].header_offset, "first_data": data_at(infos[0]),
            "last_header": infos[-1].header_offset, "last_data": data_at(infos[-1]),
            "index": struct.unpack("<I", data[eocd + 16:eocd + 20])[0], "end": eocd}


def _zip_methods(data: bytes) -> frozenset[int]:
    """Offsets of the (low byte of the) compression method of each central-directory entry."""
    eocd = data.rindex(b"PK\x05\x06")
    entries, _, start = struct.unpack("<HII", data[eocd + 10:eocd + 20])
    offsets = []
    for _ in range(entries):
        assert data[start:start + 4] == b"PK\x01\x02"
        offsets.append(start + 10)
        start += 46 + sum(struct.unpack("<HHH", data[start + 28:start + 34]))
    return frozenset(offsets)


def _tar_anchors(data: bytes) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
    last = members[-1]
    return {"first_header": members[0].offset, "first_data": members[0].offset_data,
            "last_header": last.offset, "last_data": last.offset_data,
            # tar has no index: the zero padding after a member's data
            "index": members[0].offset_data + members[0].size,
            "end": last.offset_data + -(-last.size // 512) * 512}


def _gz_anchors(data: bytes) -> dict[str, int]:
    # the gzip header (flags, mtime, OS byte, file name), the deflate stream, the trailer (CRC32,
    # ISIZE)
    assert data[3] & ~0x08 == 0, "a gzip header with fields other than FNAME"
    deflate = data.index(b"\0", 10) + 1 if data[3] & 0x08 else 10
    return {"first_header": 0, "first_data": deflate, "last_header": len(data) // 2,
            "last_data": len(data) - 200, "index": len(data) - 16, "end": len(data) - 8}


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Archives:
    """A small FER2013 copy (2 train and 1 test image per class) as a stored zip, a deflated zip,
    a .tar and a .tar.gz; and the members it must normalize to."""
    tmp = tmp_path_factory.mktemp("archives")
    src = tmp / "src"
    make_image_folders(src, n_train=2, n_test=1, seed=3)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    expected = {p.relative_to(src).as_posix(): p.read_bytes() for p in files}
    with zipfile.ZipFile(tmp / "deflated.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            zf.write(p, p.relative_to(src).as_posix())
    found = {
        "zip": (make_zip(src, tmp / "stored.zip"), ".zip", _zip_anchors),
        "zip_deflated": (tmp / "deflated.zip", ".zip", _zip_anchors),
        "tar": (make_tar(src, tmp / "plain.tar"), ".tar", _tar_anchors),
        "tar.gz": (make_tar(src, tmp / "packed.tar.gz"), ".tar.gz", _gz_anchors),
    }
    result = {}
    for kind, (path, suffix, anchors) in found.items():
        data = path.read_bytes()
        result[kind] = Archive(data, suffix, anchors(data), _zip_methods(data)
                               if suffix == ".zip" else frozenset())
    return Archives(result, expected)


#: Where a cut or a corruption lands: near a named part of the archive's structure, or anywhere.
positions = st.one_of(
    st.tuples(st.sampled_from(ANCHORS), st.integers(0, 600)),
    st.tuples(st.just("anywhere"), st.integers(0, 2**20)),
)


def offset_in(archive: Archive, position: tuple[str, int]) -> int:
    anchor, delta = position
    return (archive.anchors.get(anchor, 0) + delta) % len(archive.data)


def test_intact_archives_are_accepted_complete(archives):
    """The harness accepts: every intact archive normalizes to every member, bytes unchanged."""
    kinds, expected = archives
    for kind, archive in kinds.items():
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / f"copy{archive.suffix}"
            source.write_bytes(archive.data)
            assert refused_or_complete(source, Path(tmp) / "raw" / "images.zip",
                                       expected) == "accepted", kind


@bounded(60)
@given(kind=st.sampled_from(["zip", "zip_deflated", "tar.gz"]), position=positions)
def test_truncated_archive_refused_naming_it(archives, kind, position):
    """A zip or .tar.gz cut short anywhere is refused with a DataError naming it (or, were the
    cut harmless, accepted with every member)."""
    kinds, expected = archives
    archive = kinds[kind]
    cut = offset_in(archive, position)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"cut{archive.suffix}"
        source.write_bytes(archive.data[:cut])
        event(refused_or_complete(source, Path(tmp) / "raw" / "images.zip", expected))


@bounded(40)
@given(position=positions)
@example(position=("last_header", 0))
def test_truncated_plain_tar_refused_naming_it(archives, position):
    """An uncompressed .tar cut short is refused naming it, or accepted with every member."""
    kinds, expected = archives
    archive = kinds["tar"]
    cut = offset_in(archive, position)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "cut.tar"
        source.write_bytes(archive.data[:cut])
        event(refused_or_complete(source, Path(tmp) / "raw" / "images.zip", expected))


def corrupt_and_check(archives, kind: str, position: tuple[str, int], xor: int) -> None:
    """The property for `kind` with the byte at `position` xor-ed with `xor`."""
    kinds, expected = archives
    archive = kinds[kind]
    data = bytearray(archive.data)
    data[offset_in(archive, position)] ^= xor
    event(kind)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"bad{archive.suffix}"
        source.write_bytes(bytes(data))
        event(refused_or_complete(source, Path(tmp) / "raw" / "images.zip", expected,
                                  same_bytes=kind != "tar"))


@bounded(60)
@given(kind=st.sampled_from(["zip", "tar"]), position=positions, xor=st.integers(1, 255))
def test_corrupted_archive_refused_or_intact(archives, kind, position, xor):
    """One corrupted byte of a stored zip or a .tar: refused with a DataError naming the
    archive, or accepted with every member (a zip's CRCs catch changed data, so its members keep
    their bytes; a tar has checksums over its headers only, not over its data)."""
    corrupt_and_check(archives, kind, position, xor)


@bounded(40)
@given(kind=st.sampled_from(["zip_deflated", "tar.gz", "zip"]), position=positions,
       xor=st.integers(1, 255))
# the members are JPEGs of noise, which zlib stores in stored blocks (type 00): xor 0x06 on the
# first byte of the first member's deflate stream makes that block's type the reserved 11
@example(kind="zip_deflated", position=("first_data", 0), xor=0x06)
# the first central-directory entry's method: stored (0) -> deflate (8); the member is a JPEG,
# whose first byte 0xFF reads as a deflate block of the reserved type: zlib.error
@example(kind="zip", position=("index", 10), xor=0x08)
def test_corrupted_compressed_archive_refused_or_intact(archives, kind, position, xor):
    """As above, for a deflated zip (as Kaggle's fer2013.zip is) and a .tar.gz, whose stream
    checksums (member CRCs, the gzip trailer's CRC) catch changed data; and a stored zip with
    any corruption (its method fields included)."""
    corrupt_and_check(archives, kind, position, xor)


# --------------------------------------------------------------------------- layouts and names

#: File names: unicode, spaces, dots inside; never a path separator, a control character, a
#: leading dot or an OS junk name.
_NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\")
file_names = st.text(_NAME_CHARS, min_size=1, max_size=12).filter(
    lambda n: not n.startswith(".") and n.lower() not in JUNK)
#: Wrapping folders (`archive/`, `fer2013/` ...): not a split spelling; no ':' (a zip member
#: starting `c:` is refused as a Windows drive path).
wrapper_names = st.text(st.characters(blacklist_categories=("Cs", "Cc"),
                                      blacklist_characters="/\\:"), min_size=1, max_size=8).filter(
    lambda n: not n.startswith(".") and n.lower() not in JUNK | SPLIT_DIRS)


@dataclass
class Layout:
    files: dict[str, bytes] = field(default_factory=dict)  # path under the source -> bytes
    empty_dirs: list[str] = field(default_factory=list)
    expected: dict[str, bytes] = field(default_factory=dict)  # the members images.zip must get
    #: Why it must be refused (none: accepted, unless `may_refuse`).
    must_refuse: list[str] = field(default_factory=list)
    #: What a reader may refuse or leave out, as its documented policy says (a test or val split
    #: without some class; a file directly in a split folder): either is "accounted for".
    may_refuse: list[str] = field(default_factory=list)


@st.composite
def layouts(draw) -> Layout:
    """A FER2013 image-folder copy: splits and class folders in some spelling, under 0-2
    wrapping folders, files with odd names; maybe classes missing, OS junk, harmless extras, or
    one file in a place that must be refused."""
    lay = Layout()
    root = "/".join(draw(st.lists(wrapper_names, max_size=2)))
    at = (root + "/") if root else ""
    train_dir = draw(st.sampled_from(["train", "Train", "TRAINING", "training"]))
    test_dir = draw(st.sampled_from(["test", "Test", "testing", "validation"]))
    splits = {train_dir: "train", test_dir: "test"}
    if test_dir != "validation" and draw(st.booleans()):
        splits[draw(st.sampled_from(["val", "valid", "Validation"]))] = "val"
    pairs = [(d, c) for d in splits for c in CLASS_NAMES]
    missing = draw(st.one_of(st.just({}), st.dictionaries(
        st.sampled_from(pairs), st.sampled_from(["absent", "empty", "junk only"]),
        min_size=1, max_size=2)))
    class_dirs: dict[tuple[str, str], str] = {}
    for split_dir, split in splits.items():
        for cls in CLASS_NAMES:
            folder = f"{at}{split_dir}/{draw(st.sampled_from(SPELLINGS[cls]))}"
            class_dirs[split_dir, cls] = folder
            how = missing.get((split_dir, cls))
            if how:  # a model would silently learn fewer classes: the train split must have all
                (lay.must_refuse if split == "train" else lay.may_refuse).append(
                    f"{split_dir}/{cls} {how}")
            if how == "empty":
                lay.empty_dirs.append(folder)
            elif how == "junk only":
                lay.files[f"{folder}/.DS_Store"] = b"junk"
            elif how is None:
                for name in draw(st.lists(file_names, min_size=1, max_size=3, unique=True)):
                    lay.files[f"{folder}/{name}"] = f"{folder}/{name}".encode()
                    lay.expected[f"{split}/{cls}/{name}"] = f"{folder}/{name}".encode()
    # OS junk and files outside the split folders: skipped
    for junk in draw(st.lists(st.sampled_from(
            [".DS_Store", "Thumbs.db", "desktop.ini", "._img.jpg"]), max_size=2)):
        lay.files[f"{class_dirs[draw(st.sampled_from(pairs))]}/{junk}"] = b"junk"
    extras = draw(st.sets(st.sampled_from(["readme", "macosx", "hidden", "deeper copy"])))
    if "readme" in extras:
        lay.files[f"{at}README.txt"] = b"about"
    if "macosx" in extras:
        lay.files[f"__MACOSX/{at}{train_dir}/angry/._a.jpg"] = b"junk"
    if "hidden" in extras:
        lay.files[f"{at}.cache/{train_dir}/angry/a.jpg"] = b"junk"
    if "deeper copy" in extras:
        lay.files[f"{at}more/train/angry/decoy.jpg"] = b"not counted"
    if draw(st.booleans()):  # a file directly in a split folder (named so no folder has its name)
        split_dir = draw(st.sampled_from(sorted(splits)))
        lay.files[f"{at}{split_dir}/README {draw(file_names)}"] = b"loose"
        lay.may_refuse.append("a file directly in a split folder")
    # one file where it must be refused
    odd = draw(st.sampled_from([None, None, "in subfolder", "unknown class",
                                "two train folders"]))
    name = draw(file_names)
    split_dir = draw(st.sampled_from(sorted(splits)))
    if odd == "in subfolder":
        folder = class_dirs[split_dir, draw(st.sampled_from(CLASS_NAMES))]
        lay.files[f"{folder}/sub {draw(wrapper_names)}/{name}"] = b"stray"
    elif odd == "unknown class":
        other = draw(st.sampled_from(["contempt", "other", "\u00c4ngry", "7"]))
        lay.files[f"{at}{split_dir}/{other}/{name}"] = b"stray"
    elif odd == "two train folders":
        other = draw(st.sampled_from(sorted({"train", "Train", "training"} - {train_dir})))
        lay.files[f"{at}{other}/angry/{name}"] = b"stray"
    if odd:
        lay.must_refuse.append(odd)
    return lay


@bounded(50)
@given(layout=layouts(), kind=st.sampled_from(["folder", "zip", "tar", "tar.gz"]))
def test_layouts_refused_naming_the_source_or_every_file_copied(layout, kind):
    """A layout whose train split lacks a class, or with an unknown class folder, a second
    train folder or a file in a subfolder of a class folder, is refused with a DataError naming
    the source (or a path under it); a well-formed one is accepted with exactly the files of its
    class folders (junk and files outside the splits left out), under canonical names, bytes
    unchanged."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        for rel, data in layout.files.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes(data)
        for rel in layout.empty_dirs:
            (tree / rel).mkdir(parents=True, exist_ok=True)
        if kind == "folder":
            source = tree
        elif kind == "zip":
            source = make_zip(tree, Path(tmp) / "src.zip")
        else:
            source = make_tar(tree, Path(tmp) / f"src.{kind}")
        outcome = refused_or_complete(source, Path(tmp) / "raw" / "images.zip", layout.expected)
    event(outcome)
    if layout.must_refuse:
        assert outcome == "refused", f"accepted despite {layout.must_refuse}"
    elif not layout.may_refuse:
        assert outcome == "accepted", "a well-formed layout was refused"


# --------------------------------------------------------------------------- fer2013.csv

WHERE = "/data/src/fer2013.csv"
SIDE = 48

#: CSV text: any character but line breaks and NUL, and not the digits that are not decimal
#: digits (superscripts, circled digits: see test_csv_emotion_superscript_digit_refused).
_CSV_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00").filter(
    lambda ch: ch.isdecimal() or not ch.isdigit())
csv_text = st.text(_CSV_CHARS, max_size=8)

valid_emotions = st.one_of(
    st.integers(0, 6).map(str),
    st.tuples(st.sampled_from(["", " ", "\t", "0"]), st.integers(0, 6),
              st.sampled_from(["", " ", "  "])).map(lambda t: f"{t[0]}{t[1]}{t[2]}"))
any_emotions = st.one_of(
    valid_emotions, st.integers(-5, 20).map(str),
    st.sampled_from(["", " ", "3.0", "+3", "-0", "three", "0x3", "3 4", "\u0663"]), csv_text)
valid_usages = st.sampled_from(list(CSV_SPLITS)).flatmap(
    lambda u: st.sampled_from([u, f" {u}", f"{u} ", f"\t{u}"]))
any_usages = st.one_of(valid_usages, st.sampled_from(
    ["training", "TRAINING", "Test", "", "Private Test", "PublicTest2", "train"]), csv_text)


@st.composite
def pixel_texts(draw) -> tuple[str, np.ndarray | None]:
    """The pixels column and the 48x48 image it holds (None: not 2304 ints in 0..255)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(0, 256, SIDE * SIDE)
    sep = draw(st.sampled_from([" ", "  ", "\t"]))
    kind = draw(st.sampled_from(["valid", "valid", "short", "long", "out of range",
                                 "not an int", "text"]))
    tokens = [str(v) for v in values]
    if kind == "valid":
        return sep.join(tokens), values.reshape(SIDE, SIDE).astype(np.uint8)
    if kind == "short":
        return sep.join(tokens[:draw(st.integers(0, SIDE * SIDE - 1))]), None
    if kind == "long":
        return sep.join(tokens + ["7"] * draw(st.integers(1, 50))), None
    at = draw(st.integers(0, SIDE * SIDE - 1))
    if kind == "out of range":
        tokens[at] = str(draw(st.sampled_from([256, 300, -1, 10**30, -(10**30)])))
        return sep.join(tokens), None
    if kind == "not an int":
        tokens[at] = draw(st.sampled_from(["x", "1.5", "0x1", "1e2", "nan", "--1"]))
        return sep.join(tokens), None
    return draw(st.text(_CSV_CHARS, max_size=40)), None


@st.composite
def csv_tables(draw):
    """(header, rows): rows of (emotion, pixels text, image or None, usage)."""
    header = draw(st.sampled_from([("emotion", "pixels", "Usage"),
                                   (" emotion", "pixels ", " Usage "),
                                   ("Usage", "emotion", "pixels"),
                                   ("emotion", "pixel", "Usage")]))
    clean = draw(st.booleans())
    row = st.tuples(valid_emotions if clean else any_emotions, pixel_texts(),
                    valid_usages if clean else any_usages)
    rows = draw(st.lists(row, max_size=7))
    if draw(st.booleans()):  # usually both required splits are there
        rows = [(str(draw(st.integers(0, 6))), draw(pixel_texts()), u) for u in
                ("Training", "PrivateTest")] + rows
    return header, [(e, text, image, u) for e, (text, image), u in rows]


def _emotion_verdict(emotion: str) -> str | int:
    """The class index of a valid emotion (0-6, maybe padded); 'bad' when it must be refused;
    'maybe' for 0-6 written in the digits of another script, such as Arabic-Indic (accepting it
    as that index, as int() reads it, is allowed, so is refusing it)."""
    value = emotion.strip()
    if value.isascii():
        return int(value) if value.isdigit() and int(value) <= 6 else "bad"
    return "maybe" if value.isdecimal() and int(value) <= 6 else "bad"


@bounded(60)
@given(table=csv_tables())
def test_csv_rows_refused_naming_the_line_or_each_a_member(table):
    """fer2013.csv: refused with a DataError naming the file, the line and row (and the bad
    column's value), or every row becomes exactly one member `<split>/<class>/<i>.png` (its
    pixels, lossless) or `.txt` (its text, when the pixels are not 2304 ints in 0..255)."""
    header, rows = table
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    names = [h.strip() for h in header]
    for emotion, text, _, usage in rows:
        cells = {"emotion": emotion, "pixels": text, "Usage": usage}
        writer.writerow([cells.get(name, "") for name in names])
    verdicts = [(_emotion_verdict(e), u.strip() in CSV_SPLITS) for e, _, _, u in rows]
    first_bad = next((i for i, (e, u) in enumerate(verdicts) if e == "bad" or not u), None)
    missing_column = "pixels" not in names

    try:
        members = csv_members(io.StringIO(buffer.getvalue()), WHERE)
    except DataError as err:
        message = str(err)
        event("refused")
        assert message.startswith(f"{WHERE}: "), message
        if missing_column:
            assert "missing column" in message and "'pixels'" in message, message
            return
        at = re.match(rf"{re.escape(WHERE)}: line (\d+) \(row (\d+)\): column '(emotion|Usage)' "
                      rf"is '", message)
        if at:
            line, row, column = int(at[1]), int(at[2]), at[3]
            assert line == row + 2, message  # the header is line 1
            assert first_bad is None or row <= first_bad, message
            verdict, usage_ok = verdicts[row]
            assert verdict in ("bad", "maybe") or not usage_ok, f"a valid row refused: {message}"
            emotion, _, _, usage = rows[row]
            value = (emotion if column == "emotion" else usage).strip()
            assert message[at.end():].startswith(f"{value}';"), message
            return
        assert first_bad is None, f"row {first_bad} must be refused by its line: {message}"
        usages = {u.strip() for _, _, _, u in rows}
        assert "Training" not in usages or "PrivateTest" not in usages, message
        assert "no row with Usage" in message, message
        return

    event("accepted")
    assert not missing_column and first_bad is None, "a malformed CSV was accepted"
    usages = {u.strip() for _, _, _, u in rows}
    assert {"Training", "PrivateTest"} <= usages
    assert len(members) == len(rows), "not one member per row"
    for i, ((verdict, _), (emotion, text, image, usage)) in enumerate(zip(verdicts, rows)):
        cls = CSV_EMOTIONS[int(emotion.strip()) if verdict == "maybe" else verdict]
        stem = f"{CSV_SPLITS[usage.strip()]}/{cls}/{i:05d}"
        if image is not None:
            data = members[f"{stem}.png"]
            decoded = Image.open(io.BytesIO(data))
            assert decoded.mode == "L"
            np.testing.assert_array_equal(np.asarray(decoded), image)
        else:
            assert members[f"{stem}.txt"] == text.encode()


@bounded(10)
@given(digit=st.sampled_from(["\u00b2", "\u00b3", "\u00b9", "\u2460", "\u2075"]))
def test_csv_emotion_superscript_digit_refused(digit):
    """An emotion written as a superscript or circled digit is refused naming the line."""
    text = (f"emotion,pixels,Usage\n{digit},1 2 3,Training\n0,1 2 3,PrivateTest\n")
    with pytest.raises(DataError, match=rf"^{re.escape(WHERE)}: line 2 \(row 0\): column 'emotion'"):
        csv_members(io.StringIO(text), WHERE)


# --------------------------------------------------------------------------- params

PARAMS_FILE = "params.yaml"
RAW_PARAMS = yaml.safe_load((ROOT / PARAMS_FILE).read_text())
FIELDS = {(section, key): info.annotation
          for section, sinfo in Params.model_fields.items()
          for key, info in sinfo.annotation.model_fields.items()}
KEYS = sorted(FIELDS)
CHOICES = sorted({c for ann in FIELDS.values() if get_origin(ann) is Literal
                  for c in get_args(ann)})

ORIGINAL = object()  # stands for the project's own value of the key
params_values = st.one_of(
    st.just(ORIGINAL),
    st.floats(), st.integers(), st.booleans(), st.none(),
    st.sampled_from([0, 1, 8, 48, 1024, 2**32 - 1, 2**32, 2**63, 10**400, -1, 0.0, 0.5, 1.0,
                     1e-3, -0.0, 1e308, float("inf"), float("nan")]),
    st.sampled_from(["1e-3", "0.5", " 2 ", "nan", "inf", "-inf", "1_0", "0x10", "true", "1e999",
                     "", "auto", "cpu", "cuda:1", "cuda:x", "mps", "a" * 64, "0" * 64, "g" * 64]),
    st.sampled_from(CHOICES),
    st.sampled_from(["data/raw", "data", ".", "..", "/", "models", "metrics", "out/x",
                     "data/prepared/train.npz", "data/fer2013.zip", "metrics/plots",
                     "models/model.pt", "../elsewhere"]),
    st.text(max_size=20),
    st.integers(81, 5000).map(lambda n: "x" * n),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _expected(annotation: Any, value: Any) -> tuple[bool, Any]:
    """(whether the schema can take `value` at all for this field type, what it becomes)."""
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return False, None
        try:
            number = float(value)
        except (ValueError, OverflowError):
            return False, None
        return math.isfinite(number), number
    if annotation is int:
        return type(value) is int, value
    if annotation is bool:
        return type(value) is bool, value
    if annotation is str or get_origin(annotation) is Literal:
        return isinstance(value, str), value
    if get_origin(annotation) is Annotated:  # a member of a union keeps its metadata
        base, *metadata = get_args(annotation)
        possible, becomes = _expected(base, value)
        patterns = [m.pattern for info in metadata for m in getattr(info, "metadata", [])
                    if getattr(m, "pattern", None)]
        # download.sha256: 64 hexadecimal digits
        return possible and all(re.fullmatch(p, value) for p in patterns), becomes
    if annotation is type(None):
        return value is None, None
    if get_origin(annotation) in (Union, types.UnionType):
        # e.g. train.compile (true/false or a mode name), evaluate.tta_crop (null or pixels),
        # download.sha256 (null or 64 hexadecimal digits): possible when a member can take it
        for member in get_args(annotation):
            possible, becomes = _expected(member, value)
            if possible:
                return True, becomes
        return False, None
    raise AssertionError(f"no rule for the field type {annotation}")


@bounded(60)
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), params_values), min_size=1,
                        max_size=3, unique_by=lambda change: change[0]))
# Fields whose type is a union (a generated run once drew train.compile: 'auto', which the
# expectation did not cover): always tried.
@example(changes=[(("train", "compile"), "auto")])
@example(changes=[(("train", "compile"), True), (("evaluate", "tta_crop"), 48)])
@example(changes=[(("train", "compile"), "reduce-overhead"), (("download", "sha256"), "a" * 64)])
@example(changes=[(("train", "compile"), 1)])
def test_params_values_refused_naming_the_key_or_taken_as_given(changes):
    """Values put into the project's params: refused with a ParamsError whose every line is
    `params.yaml: <section>.<key>: ...` about a changed key (short: a huge value is cut), or
    accepted with each field holding the value given (a number string read as a float); a
    bool is never a number, a float never an int, nan and inf never a number."""
    raw = copy.deepcopy(RAW_PARAMS)
    given_values = {}
    for (section, key), value in changes:
        given_values[section, key] = raw[section][key] if value is ORIGINAL else value
        raw[section][key] = given_values[section, key]
    try:
        params = validate_params(raw, PARAMS_FILE)
    except ParamsError as err:
        event("refused")
        lines = str(err).splitlines()
        assert lines
        for line in lines:
            assert line.startswith(f"{PARAMS_FILE}: "), line
            assert len(line) <= 300, f"{len(line)} characters: {line[:200]}"
            assert any(f"{s}.{k}" in line for s, k in given_values), (
                f"names none of the changed keys {sorted(given_values)}: {line}")
        assert any(v is not ORIGINAL for _, v in changes), f"the project's own values: {err}"
        return
    event("accepted")
    for (section, key), value in given_values.items():
        possible, expected = _expected(FIELDS[section, key], value)
        got = getattr(getattr(params, section), key)
        assert possible, f"{section}.{key} accepted {value!r} as {got!r}"
        assert got == expected and type(got) is type(expected), (
            f"{section}.{key}: gave {value!r}, got {got!r}")


#: Unknown keys: short, on one line (long keys and line breaks: the test below).
unknown_keys = st.one_of(
    st.text(max_size=30).filter(lambda k: k.splitlines() in ([k], [])),
    st.integers(), st.none(),
).filter(lambda k: k not in Params.model_fields and not any(k == key for _, key in KEYS))


@bounded(40)
@given(section=st.sampled_from([None, *Params.model_fields]), key=unknown_keys,
       value=params_values)
def test_params_unknown_keys_refused_as_typos(section, key, value):
    """An unknown key in a section, or an unknown section, is refused naming it, one short
    line per problem."""
    raw = copy.deepcopy(RAW_PARAMS)
    value = 1 if value is ORIGINAL else value
    (raw if section is None else raw[section])[key] = value
    with pytest.raises(ParamsError) as caught:
        validate_params(raw, PARAMS_FILE)
    name = str(key) if section is None else f"{section}.{key}"
    if len(name) > 60 or not name.isprintable():  # shown cut and escaped
        name = shorten(name, 60)
    lines = str(caught.value).splitlines()
    # an unknown key (a typo), or a key that is not a string at all
    assert any(line.startswith(f"{PARAMS_FILE}: {name}: ") for line in lines), lines
    for line in lines:
        assert line.startswith(f"{PARAMS_FILE}: ") and len(line) <= 600, line[:200]


@bounded(20)
@given(section=st.sampled_from([None, "train"]), key=st.one_of(
    st.integers(500, 5000).map(lambda n: "k" * n),
    st.tuples(st.text(max_size=5), st.sampled_from(["\n", "\r", "\u2028", "\x0b"]),
              st.text(max_size=5)).map("".join)))
def test_params_odd_unknown_key_stays_one_short_line(section, key):
    raw = copy.deepcopy(RAW_PARAMS)
    (raw if section is None else raw[section])[key] = 1
    with pytest.raises(ParamsError) as caught:
        validate_params(raw, PARAMS_FILE)
    lines = str(caught.value).splitlines()
    assert len(lines) == 1, lines
    assert len(lines[0]) <= 600, f"{len(lines[0])} characters"
