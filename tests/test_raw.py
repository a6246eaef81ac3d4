"""ferpipe.data.fetch, ferpipe.data.archive and ferpipe.data.decode on generated data: source layouts,
fer2013.csv, unsafe sources and caps, bad and odd images, downloads and sha256."""

import gzip
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import types
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from math import isqrt
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ferpipe.core.errors import DataError
from ferpipe.data.decode import BadImage, decode_archive, decode_image
from ferpipe.data.fetch import fetch_raw
from ferpipe.data.splits import CLASS_NAMES, RAW_ARCHIVE
from tests.fakedata import face_like, make_image_folders, make_tar, make_zip, write_fer2013_csv

ROOT = Path(__file__).resolve().parents[1]

#: fer2013.csv's emotion indices, written out here independently of ferpipe.data.archive.
CSV_EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def members(raw_dir: Path) -> list[str]:
    with zipfile.ZipFile(raw_dir / RAW_ARCHIVE) as zf:
        return zf.namelist()


def expected_members(n_train: int, n_test: int, test_dir: str = "test",
                     test_split: str = "test") -> list[str]:
    """The members `make_image_folders(n_train, n_test)` normalizes to (`test_dir` as written)."""
    return sorted([f"train/{c}/train_{c}_{i}.jpg" for c in CLASS_NAMES for i in range(n_train)]
                  + [f"{test_split}/{c}/{test_dir}_{c}_{i}.jpg"
                     for c in CLASS_NAMES for i in range(n_test)])


def per_class(n: int, **changes: int) -> dict[str, int]:
    return {**{c: n for c in CLASS_NAMES}, **changes}


def assert_nothing_written(where: Path, expected: list[str]) -> None:
    """`where` holds exactly `expected`: no raw/, no images.zip, no .download-* or .tmp files."""
    assert sorted(p.name for p in where.iterdir()) == sorted(expected)


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 grayscale PNG whose header claims `width` x `height` (valid CRC, no pixels for it)."""
    buffer = BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --------------------------------------------------------------------------- 1. layouts


@pytest.mark.parametrize("prefix", ["", "archive/", "fer2013/", "Dataset/", "archive/fer2013/",
                                    "Dataset/fer2013/"])
def test_train_and_test_are_found_at_the_top_or_under_one_or_two_folders(tmp_path, prefix):
    make_image_folders(tmp_path / "src", n_train=2, n_test=1)
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip", prefix=prefix)
    counts = fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw")
    assert counts == {"test": per_class(1), "train": per_class(2)}
    assert members(tmp_path / "raw") == expected_members(2, 1)


def test_validation_is_the_test_split_when_there_is_no_test_split(tmp_path, capsys):
    make_image_folders(tmp_path / "src", n_train=2, n_test=1)
    (tmp_path / "src/test").rename(tmp_path / "src/validation")
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip", prefix="images/")
    counts = fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw")
    assert counts == {"test": per_class(1), "train": per_class(2)}
    assert members(tmp_path / "raw") == expected_members(2, 1)
    assert "'validation/' is used as the test split" in capsys.readouterr().out


@pytest.mark.parametrize("val_dir", ["val", "validation"])
def test_a_val_folder_next_to_train_and_test_is_the_val_split(tmp_path, val_dir):
    make_image_folders(tmp_path / "src", n_train=2, n_test=1)
    shutil.copytree(tmp_path / "src/test", tmp_path / "src" / val_dir)
    archive = make_tar(tmp_path / "src", tmp_path / "fer.tar.gz", prefix="archive/")
    counts = fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw")
    assert counts == {"test": per_class(1), "train": per_class(2), "val": per_class(1)}
    assert members(tmp_path / "raw") == sorted(
        expected_members(2, 1) + [f"val/{c}/test_{c}_0.jpg" for c in CLASS_NAMES])


def test_two_folders_for_one_split_are_refused(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    for name in ("val", "validation"):
        shutil.copytree(tmp_path / "src/test", tmp_path / "src" / name)
    with pytest.raises(DataError, match="folders 'val' and 'validation' are both the val split"):
        fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw")
    assert_nothing_written(tmp_path, ["src"])


@pytest.mark.parametrize("remove,message", [
    (["train"], "no train/ folder found"),
    (["test"], "no test/ split folder; found ['train']"),
])
def test_a_missing_split_is_named(tmp_path, remove, message):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    for name in remove:
        shutil.rmtree(tmp_path / "src" / name)
    with pytest.raises(DataError) as err:
        fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw")
    assert message in str(err.value)
    assert_nothing_written(tmp_path, ["src"])


@pytest.mark.parametrize("packing", ["folder", "zip"])
def test_an_empty_split_is_named(tmp_path, packing):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    shutil.rmtree(tmp_path / "src/test")
    (tmp_path / "src/test").mkdir()
    source = tmp_path / "src"
    if packing == "zip":
        source = make_zip(tmp_path / "src", tmp_path / "fer.zip")
        with zipfile.ZipFile(source, "a") as zf:
            zf.writestr("test/", b"")  # a folder entry, as `zip -r` writes them
    with pytest.raises(DataError) as err:
        fetch_raw(str(source), tmp_path / "none.zip", tmp_path / "raw")
    assert f"{source}/test: empty split: no class folders" in str(err.value)
    assert "raw" not in os.listdir(tmp_path)


@pytest.mark.parametrize("leftover", [None, ".DS_Store", "Thumbs.db"])
def test_an_empty_class_folder_is_named(tmp_path, leftover):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    folder = tmp_path / "src/train/disgust"
    for f in folder.iterdir():
        f.unlink()
    if leftover:
        (folder / leftover).write_bytes(b"junk")
    source = tmp_path / "src" if leftover is None else make_zip(tmp_path / "src",
                                                                tmp_path / "fer.zip")
    with pytest.raises(DataError) as err:
        fetch_raw(str(source), tmp_path / "none.zip", tmp_path / "raw")
    assert f"{source}/train/disgust: empty class folder (no files)" in str(err.value)
    assert "raw" not in os.listdir(tmp_path)


def test_every_file_in_a_class_folder_is_copied_except_os_junk(tmp_path, capsys):
    src = tmp_path / "src"
    make_image_folders(src, n_train=1, n_test=1)
    (src / "train/happy/notes.txt").write_text("not an image")
    (src / "train/happy/empty.jpg").write_bytes(b"")
    (src / "train/happy/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "test/sad/Thumbs.db").write_bytes(b"thumbs")
    (src / "__MACOSX/train/happy").mkdir(parents=True)
    (src / "__MACOSX/train/happy/._train_happy_0.jpg").write_bytes(b"resource fork")
    (src / ".hidden/train/happy").mkdir(parents=True)
    (src / ".hidden/train/happy/x.jpg").write_bytes(b"x")
    (src / "train/README.txt").write_text("not in a class folder")
    counts = fetch_raw(str(src), tmp_path / "none.zip", tmp_path / "raw")
    assert counts == {"test": per_class(1), "train": per_class(1, happy=3)}
    assert members(tmp_path / "raw") == sorted(
        expected_members(1, 1) + ["train/happy/notes.txt", "train/happy/empty.jpg"])
    with zipfile.ZipFile(tmp_path / "raw" / RAW_ARCHIVE) as zf:
        assert zf.read("train/happy/notes.txt") == b"not an image"
    assert (f"note: {src}: 1 file(s) directly in a split folder, not in a class folder, are "
            f"left out: train/README.txt") in capsys.readouterr().out


# --------------------------------------------------------------------------- 2. fer2013.csv


def csv_rows(seed: int = 0) -> list[tuple[int, np.ndarray, str]]:
    """21 rows: emotions 0-6 for Training, then PublicTest, then PrivateTest."""
    rng = np.random.default_rng(seed)
    return [(emotion, face_like(emotion, rng), usage)
            for usage in ("Training", "PublicTest", "PrivateTest") for emotion in range(7)]


def pack_csv(tmp_path: Path, packing: str) -> Path:
    """fer2013.csv bare, or as the classic fer2013.tar.gz (fer2013/fer2013.csv), or zipped."""
    src = tmp_path / "src"
    csv_path = write_fer2013_csv(src / "fer2013/fer2013.csv", csv_rows())
    (src / "fer2013/README").write_text("the challenge's readme")
    if packing == "csv":
        return csv_path
    if packing == "tar.gz":
        return make_tar(src, tmp_path / "fer2013.tar.gz")
    return make_zip(src, tmp_path / "fer2013.zip")


@pytest.mark.parametrize("packing", ["csv", "tar.gz", "zip"])
def test_fer2013_csv_rows_become_png_members_under_canonical_classes(tmp_path, packing):
    source = pack_csv(tmp_path, packing)
    counts = fetch_raw(str(source), tmp_path / "none.zip", tmp_path / "raw")
    assert counts == {split: per_class(1) for split in ("test", "train", "val")}
    rows = csv_rows()
    splits = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    assert members(tmp_path / "raw") == sorted(
        f"{splits[usage]}/{CSV_EMOTIONS[emotion]}/{i:05d}.png"
        for i, (emotion, _, usage) in enumerate(rows))
    # The indices that differ from CLASS_NAMES's order, spelled out:
    names = members(tmp_path / "raw")
    assert "train/sad/00004.png" in names and "train/surprise/00005.png" in names
    assert "train/neutral/00006.png" in names and "test/neutral/00020.png" in names
    with zipfile.ZipFile(tmp_path / "raw" / RAW_ARCHIVE) as zf:
        with Image.open(BytesIO(zf.read("val/fear/00009.png"))) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "L", (48, 48))
            assert np.array_equal(np.asarray(img), rows[9][1])
    decoded = decode_archive(tmp_path / "raw" / RAW_ARCHIVE, workers=1)
    for i, (emotion, pixels, usage) in enumerate(rows):
        arrays, info = decoded[splits[usage]]
        assert info == {"converted": 0, "bad": []}
        at = arrays["files"].tolist().index(f"{CSV_EMOTIONS[emotion]}/{i:05d}.png")
        assert arrays["labels"][at] == CLASS_NAMES.index(CSV_EMOTIONS[emotion])
        assert np.array_equal(arrays["images"][at], pixels)


def test_the_same_csv_gives_the_same_raw_archive_bare_in_a_tar_or_in_a_zip(tmp_path):
    digests = set()
    for packing in ("csv", "tar.gz", "zip"):
        source = pack_csv(tmp_path / packing, packing)
        fetch_raw(str(source), tmp_path / "none.zip", tmp_path / packing / "raw")
        digests.add(hashlib.sha256((tmp_path / packing / "raw" / RAW_ARCHIVE).read_bytes())
                    .hexdigest())
    assert len(digests) == 1


def test_csv_rows_with_bad_pixels_are_written_and_reported_when_decoding(tmp_path):
    rng = np.random.default_rng(1)
    good = [face_like(0, rng), face_like(3, rng)]
    rows = [(0, good[0], "Training"),
            (6, "1 2 3", "Training"),                    # too few values
            (4, " ".join(["256"] * 2304), "Training"),   # out of range
            (5, " ".join(["x"] * 2304), "Training"),     # not ints
            (3, "", "Training"),                         # nothing
            (2, " ".join(["1.5"] * 2304), "Training"),
            (1, " ".join(["-1"] * 2304), "Training"),
            (3, good[1], "PrivateTest")]
    source = write_fer2013_csv(tmp_path / "fer2013.csv", rows)
    counts = fetch_raw(str(source), tmp_path / "none.zip", tmp_path / "raw")
    assert counts == {"test": per_class(0, happy=1), "train": per_class(1)}
    with zipfile.ZipFile(tmp_path / "raw" / RAW_ARCHIVE) as zf:
        assert zf.read("train/neutral/00001.txt") == b"1 2 3"
        assert zf.read("train/happy/00004.txt") == b""
    decoded = decode_archive(tmp_path / "raw" / RAW_ARCHIVE, workers=2)
    arrays, info = decoded["train"]
    assert arrays["files"].tolist() == ["angry/00000.png"]
    assert np.array_equal(arrays["images"][0], good[0])
    assert info == {"converted": 0, "bad": [
        ("disgust/00006.txt", "cannot identify image file"),
        ("fear/00005.txt", "cannot identify image file"),
        ("happy/00004.txt", "empty file"),
        ("neutral/00001.txt", "cannot identify image file"),
        ("sad/00002.txt", "cannot identify image file"),
        ("surprise/00003.txt", "cannot identify image file")]}
    assert decoded["test"][0]["files"].tolist() == ["happy/00007.png"]


@pytest.mark.parametrize("header,row,message", [
    ("emotion,pixels,Usage", "7,0 0,Training",
     "line 2 (row 0): column 'emotion' is '7'; expected 0-6 (0 angry, 1 disgust, 2 fear, "
     "3 happy, 4 sad, 5 surprise, 6 neutral)"),
    ("emotion,pixels,Usage", "happy,0 0,Training", "line 2 (row 0): column 'emotion' is 'happy'"),
    ("emotion,pixels,Usage", "3,0 0,Validation",
     "line 2 (row 0): column 'Usage' is 'Validation'; expected one of ['Training', "
     "'PublicTest', 'PrivateTest']"),
    ("emotion,pixels", "3,0 0", "missing column(s) ['Usage']; found ['emotion', 'pixels']"),
    ("emotion,Usage", "3,Training", "missing column(s) ['pixels']"),
])
def test_bad_csv_values_and_missing_columns_are_named(tmp_path, header, row, message):
    source = tmp_path / "fer2013.csv"
    source.write_text(f"{header}\n{row}\n")
    with pytest.raises(DataError) as err:
        fetch_raw(str(source), tmp_path / "none.zip", tmp_path / "raw")
    assert f"{source}: {message}" in str(err.value)
    assert_nothing_written(tmp_path, ["fer2013.csv"])


def test_an_error_deep_in_the_csv_names_its_line_and_row(tmp_path):
    rows = csv_rows()[:3] + [(9, face_like(0, np.random.default_rng(0)), "Training")]
    source = write_fer2013_csv(tmp_path / "fer2013.csv", rows)
    with pytest.raises(DataError, match=r"line 5 \(row 3\): column 'emotion' is '9'"):
        fetch_raw(str(source), tmp_path / "none.zip", tmp_path / "raw")


def test_a_csv_without_training_or_private_test_rows_is_refused(tmp_path):
    rows = [row for row in csv_rows() if row[2] != "PrivateTest"]
    source = write_fer2013_csv(tmp_path / "fer2013.csv", rows)
    with pytest.raises(DataError) as err:
        fetch_raw(str(source), tmp_path / "none.zip", tmp_path / "raw")
    assert (f"{source}: no row with Usage 'PrivateTest' (the test split); found ['PublicTest', "
            f"'Training']" in str(err.value))
    assert_nothing_written(tmp_path, ["fer2013.csv"])


def test_two_fer2013_csv_files_are_refused(tmp_path):
    for folder in ("a", "b"):
        write_fer2013_csv(tmp_path / "src" / folder / "fer2013.csv", csv_rows())
    with pytest.raises(DataError, match=r"more than one fer2013.csv: \['a/fer2013.csv', "
                                        r"'b/fer2013.csv'\]"):
        fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw")


def test_csv_column_names_with_spaces_are_accepted(tmp_path):
    pixels = face_like(6, np.random.default_rng(0))
    text = " ".join(map(str, pixels.ravel()))
    source = tmp_path / "fer2013.csv"
    rows = "".join(f"{emotion},Training,{text}\n" for emotion in range(7))
    source.write_text(f"emotion, Usage, pixels\n{rows}6,PrivateTest,{text}\n")
    counts = fetch_raw(str(source), tmp_path / "none.zip", tmp_path / "raw")
    assert "test/neutral/00007.png" in members(tmp_path / "raw")
    assert "train/neutral/00006.png" in members(tmp_path / "raw")
    assert counts["train"] == per_class(1) and counts["test"] == per_class(0, neutral=1)


# --------------------------------------------------------------------------- 3. unsafe sources


def tar_with(src: Path, tar_path: Path, extra: tarfile.TarInfo) -> Path:
    """A .tar.gz of `src` with one more member, `extra` (no data)."""
    with tarfile.open(tar_path, "w:gz") as tf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                tf.add(f, f.relative_to(src).as_posix())
        tf.addfile(extra)
    return tar_path


@pytest.mark.parametrize("typeflag,kind", [
    (tarfile.CHRTYPE, "a character device"), (tarfile.BLKTYPE, "a block device"),
    (tarfile.FIFOTYPE, "a FIFO"), (tarfile.SYMTYPE, "a symlink"), (tarfile.LNKTYPE, "a hardlink"),
])
def test_special_tar_members_are_refused_and_nothing_is_written(tmp_path, typeflag, kind):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    member = tarfile.TarInfo("train/happy/special.jpg")
    member.type = typeflag
    member.linkname = "train/happy/train_happy_0.jpg"
    archive = tar_with(tmp_path / "src", tmp_path / "fer.tar.gz", member)
    with pytest.raises(DataError) as err:
        fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw")
    assert f"{archive}: member 'train/happy/special.jpg' is {kind}" in str(err.value)
    assert_nothing_written(tmp_path, ["fer.tar.gz", "src"])


@pytest.mark.parametrize("mode,kind", [
    (stat.S_IFCHR, "a character device"), (stat.S_IFBLK, "a block device"),
    (stat.S_IFIFO, "a FIFO"), (stat.S_IFSOCK, "a socket"), (stat.S_IFLNK, "a symlink"),
])
def test_special_zip_members_are_refused_and_nothing_is_written(tmp_path, mode, kind):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip")
    member = zipfile.ZipInfo("train/happy/special.jpg")
    member.external_attr = (mode | 0o644) << 16
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(member, b"")
    with pytest.raises(DataError) as err:
        fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw")
    assert f"{archive}: member 'train/happy/special.jpg' is {kind}" in str(err.value)
    assert_nothing_written(tmp_path, ["fer.zip", "src"])


def test_a_zip_from_windows_without_file_types_is_read(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    archive = tmp_path / "fer.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "src").rglob("*.jpg")):
            member = zipfile.ZipInfo(f.relative_to(tmp_path / "src").as_posix())
            member.create_system, member.external_attr = 0, 0x20  # MS-DOS "archive" bit only
            zf.writestr(member, f.read_bytes())
    assert fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw") == {
        "test": per_class(1), "train": per_class(1)}


@pytest.mark.parametrize("make,name,kind", [
    (lambda src: os.symlink(src / "train/happy/train_happy_0.jpg", src / "train/happy/l.jpg"),
     "train/happy/l.jpg", "a symlink"),
    (lambda src: os.symlink(src / "train/happy", src / "train/sad/more"),
     "train/sad/more", "a symlink"),
    (lambda src: os.mkfifo(src / "train/happy/pipe.jpg"), "train/happy/pipe.jpg", "a FIFO"),
])
def test_links_and_fifos_in_a_folder_source_are_refused(tmp_path, make, name, kind):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    make(tmp_path / "src")
    with pytest.raises(DataError) as err:
        fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw")
    assert f"{tmp_path / 'src'}: '{name}' is {kind}" in str(err.value)
    assert_nothing_written(tmp_path, ["src"])


def zip_with_a_corrupt_member(tmp_path: Path) -> tuple[Path, int, int]:
    """A zip of 14 images whose first member's data is damaged (reading it fails its CRC).

    Returns the zip, its member count and the sum of its members' sizes."""
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip")
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
    first = infos[0]
    data = bytearray(archive.read_bytes())
    data[first.header_offset + 30 + len(first.filename.encode()) + 10] ^= 0xFF
    archive.write_bytes(bytes(data))
    return archive, len(infos), sum(info.file_size for info in infos)


def test_zip_caps_are_checked_before_any_member_is_read(tmp_path):
    archive, n, size = zip_with_a_corrupt_member(tmp_path)
    assert n == 14
    with pytest.raises(DataError) as err:
        fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw", max_members=n - 1)
    assert f"{archive}: {n} members, more than download.max_members = {n - 1}" in str(err.value)
    with pytest.raises(DataError) as err:
        fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw",
                  max_unpacked_bytes=size - 1)
    assert (f"{archive}: {size} bytes ({size / 2**20:.1f} MiB) unpacked, more than "
            f"download.max_unpacked_mb = {(size - 1) / 2**20:g} ({size - 1} bytes)"
            in str(err.value))
    # At the caps the members are read, and the damaged one is found only then.
    with pytest.raises(DataError, match="cannot be read: the data are corrupted \\(Bad CRC-32"):
        fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw",
                  max_unpacked_bytes=size, max_members=n)
    assert_nothing_written(tmp_path, ["fer.zip", "src"])


def test_a_tar_bomb_is_refused_from_its_header_without_unpacking(tmp_path):
    # An empty member, then one that claims 1 TiB and has no data (reading it would fail).
    archive = tmp_path / "bomb.tar.gz"
    header = tarfile.TarInfo("train/happy/huge.jpg")
    header.size = 2**40
    with gzip.open(archive, "wb") as gz:
        gz.write(tarfile.TarInfo("train/happy/a.jpg").tobuf() + header.tobuf())
    with pytest.raises(DataError) as err:
        fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw")
    assert (f"{archive}: at least {2**40} bytes (1048576.0 MiB) unpacked, more than "
            f"download.max_unpacked_mb = 2048" in str(err.value))
    assert_nothing_written(tmp_path, ["bomb.tar.gz"])


def test_tar_and_folder_member_caps(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)  # 14 files in 16 folders
    archive = make_tar(tmp_path / "src", tmp_path / "fer.tar.gz")
    with pytest.raises(DataError) as err:
        fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw", max_members=5)
    assert f"{archive}: at least 6 members, more than download.max_members = 5" in str(err.value)
    with pytest.raises(DataError) as err:
        fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw", max_members=29)
    assert "at least 30 members, more than download.max_members = 29" in str(err.value)
    size = sum(f.stat().st_size for f in (tmp_path / "src").rglob("*.jpg"))
    with pytest.raises(DataError, match="download.max_unpacked_mb"):
        fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw",
                  max_unpacked_bytes=size - 1)
    assert_nothing_written(tmp_path, ["fer.tar.gz", "src"])
    assert fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw",
                     max_unpacked_bytes=size, max_members=30)["train"] == per_class(1)


def test_the_download_stage_passes_the_caps_from_params(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"].update(source=str(archive), local_archive=str(tmp_path / "none.zip"),
                              out=str(tmp_path / "raw"), max_members=13, max_unpacked_mb=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage = [sys.executable, str(ROOT / "stages/download.py"), "--params", "params.yaml"]
    proc = subprocess.run(stage, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "14 members, more than download.max_members = 13" in proc.stderr
    assert sum(f.stat().st_size for f in (tmp_path / "src").rglob("*.jpg")) > 2**13
    params["download"].update(max_members=14, max_unpacked_mb=2**13 / 2**20)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(stage, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert "download.max_unpacked_mb = 0.0078125 (8192 bytes)" in proc.stderr
    params["download"].update(max_unpacked_mb=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(stage, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(members(tmp_path / "raw")) == 14


@pytest.mark.parametrize("factor", [1.5, 3])  # Pillow warns above MAX_IMAGE_PIXELS, errs above 2x
def test_decompression_bombs_are_bad_images(factor):
    assert Image.MAX_IMAGE_PIXELS is not None
    side = isqrt(int(Image.MAX_IMAGE_PIXELS * factor))
    with pytest.raises(BadImage, match="^decompression bomb$"):
        decode_image(png_claiming(side, side))
    assert Image.MAX_IMAGE_PIXELS is not None


# --------------------------------------------------------------------------- 4. bad images


def test_bad_files_are_copied_then_listed_and_skipped_when_decoding(tmp_path):
    src = tmp_path / "src"
    make_image_folders(src, n_train=2, n_test=1)
    jpeg = (src / "train/happy/train_happy_0.jpg").read_bytes()
    (src / "train/happy/zero.jpg").write_bytes(b"")
    (src / "train/happy/truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (src / "train/angry/notes.txt").write_text("not an image")
    (src / "train/sad/bomb.png").write_bytes(png_claiming(20_000, 20_000))
    (src / "test/fear/corrupt.jpg").write_bytes(jpeg[:300] + bytes(300) + jpeg[600:])
    counts = fetch_raw(str(src), tmp_path / "none.zip", tmp_path / "raw")
    assert counts == {"test": per_class(1, fear=2), "train": per_class(2, angry=3, happy=4, sad=3)}
    decoded = decode_archive(tmp_path / "raw" / RAW_ARCHIVE, workers=2)
    arrays, info = decoded["train"]
    assert info == {"converted": 0, "bad": [("angry/notes.txt", "cannot identify image file"),
                                            ("happy/truncated.jpg", "truncated"),
                                            ("happy/zero.jpg", "empty file"),
                                            ("sad/bomb.png", "decompression bomb")]}
    test_arrays, test_info = decoded["test"]
    assert [file for file, _ in test_info["bad"]] == ["fear/corrupt.jpg"]
    assert test_info["bad"][0][1].startswith("corrupt: ")
    # The good images are those of the same data without the bad files, in the same order.
    make_image_folders(tmp_path / "clean", n_train=2, n_test=1)
    fetch_raw(str(tmp_path / "clean"), tmp_path / "none.zip", tmp_path / "clean_raw")
    clean = decode_archive(tmp_path / "clean_raw" / RAW_ARCHIVE, workers=1)
    for split in ("train", "test"):
        for key in ("images", "labels", "files"):
            assert np.array_equal(decoded[split][0][key], clean[split][0][key])
    one_worker = decode_archive(tmp_path / "raw" / RAW_ARCHIVE, workers=1)["train"]
    assert one_worker[1] == info and np.array_equal(one_worker[0]["images"], arrays["images"])


def test_a_split_with_no_decodable_file_is_an_error(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    for f in (tmp_path / "src/test").rglob("*.jpg"):
        f.write_bytes(b"")
    fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw")
    with pytest.raises(DataError, match=r"no images in split 'test' \(7 files could not be "
                                        r"decoded\)"):
        decode_archive(tmp_path / "raw" / RAW_ARCHIVE, workers=1)


# --------------------------------------------------------------------------- 5. odd image modes

R, G, B = 10, 200, 30
LUMA = round(0.299 * R + 0.587 * G + 0.114 * B)  # ITU-R 601-2 luma of (R, G, B): 123.81


def palette_image(transparency: bool) -> Image.Image:
    img = Image.new("P", (48, 48), 1)
    img.putpalette([0, 0, 0, R, G, B])
    if transparency:
        img.info["transparency"] = 1
    return img


#: Samples across the 16-bit range and their value / 257, rounded (not clipped at 255).
WIDE = np.resize(np.array([0, 128, 129, 257, 1000, 32896, 65407, 65535]), (48, 48))
WIDE_8BIT = np.rint(WIDE / 257).astype(np.uint8)

#: file name: (image, its format, the mode Pillow opens it in, expected 48x48 pixels)
ODD_IMAGES = {
    "rgb.png": (Image.new("RGB", (48, 48), (R, G, B)), "PNG", "RGB", LUMA),
    "rgba.png": (Image.new("RGBA", (48, 48), (R, G, B, 0)), "PNG", "RGBA", LUMA),
    "la.png": (Image.new("LA", (48, 48), (77, 0)), "PNG", "LA", 77),
    "p.png": (palette_image(False), "PNG", "P", LUMA),
    "p_transparent.png": (palette_image(True), "PNG", "P", LUMA),
    "p_transparent.gif": (palette_image(True), "GIF", "P", LUMA),
    "i16.png": (Image.fromarray(WIDE.astype(np.uint16)), "PNG", "I;16", WIDE_8BIT),
    "i32.tif": (Image.fromarray(WIDE.astype(np.int32)), "TIFF", "I", WIDE_8BIT),
    "large.png": (Image.new("L", (96, 96), 77), "PNG", "L", 77),
    "small_wide.png": (Image.new("L", (30, 20), 200), "PNG", "L", 200),
}


def encoded(name: str) -> bytes:
    img, fmt, _, _ = ODD_IMAGES[name]
    buffer = BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(ODD_IMAGES))
def test_odd_modes_and_sizes_become_48x48_grayscale(name):
    _, _, mode, expected = ODD_IMAGES[name]
    data = encoded(name)
    with Image.open(BytesIO(data)) as img:
        assert img.mode == mode
    pixels, converted = decode_image(data)
    assert pixels.dtype == np.uint8 and converted
    assert np.array_equal(pixels, np.broadcast_to(expected, (48, 48)))


def test_16_bit_samples_are_scaled_not_clipped():
    pixels, _ = decode_image(encoded("i16.png"))
    assert pixels[0, :8].tolist() == [0, 0, 1, 1, 4, 128, 255, 255]


def test_decode_archive_counts_conversions(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    for name in ODD_IMAGES:
        (tmp_path / "src/train/happy" / name).write_bytes(encoded(name))
    fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw")
    decoded = decode_archive(tmp_path / "raw" / RAW_ARCHIVE, workers=2)
    arrays, info = decoded["train"]
    assert info == {"converted": len(ODD_IMAGES), "bad": []}
    assert decoded["test"][1] == {"converted": 0, "bad": []}
    for name, (_, _, _, expected) in ODD_IMAGES.items():
        at = arrays["files"].tolist().index(f"happy/{name}")
        assert np.array_equal(arrays["images"][at], np.broadcast_to(expected, (48, 48)))


# --------------------------------------------------------------------------- 6. downloads, sha256


@pytest.fixture
def server(tmp_path_factory):
    """A local HTTP server: /fer.zip serves a small image zip; /cut.zip announces the same
    Content-Length, sends half the bytes and closes the connection."""
    served = tmp_path_factory.mktemp("served")
    make_image_folders(served / "src", n_train=1, n_test=1)
    body = make_zip(served / "src", served / "fer.zip").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/page.zip":  # a login or error page instead of the archive
                page = b"<!DOCTYPE html><html><body>Please sign in</body></html>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            if self.path == "/nolength.zip":  # no Content-Length, cut short, closed
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[:len(body) // 2])
                self.close_connection = True
                return
            if self.path not in ("/fer.zip", "/cut.zip"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if self.path == "/fer.zip" else body[:len(body) // 2])

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", body
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_http_download_is_checked_then_renamed(tmp_path, server):
    url, body = server
    dest = tmp_path / "data/fer2013.zip"
    counts = fetch_raw(f"{url}/fer.zip", dest, tmp_path / "raw",
                       sha256=hashlib.sha256(body).hexdigest().upper())
    assert counts["train"] == per_class(1)
    assert os.listdir(tmp_path / "data") == ["fer2013.zip"] and dest.read_bytes() == body


def test_http_download_with_a_wrong_sha256_removes_the_part_file(tmp_path, server):
    url, body = server
    with pytest.raises(DataError) as err:
        fetch_raw(f"{url}/fer.zip", tmp_path / "data/fer2013.zip", tmp_path / "raw",
                  sha256="0" * 64)
    text = str(err.value)
    assert f"expected {'0' * 64}, got {hashlib.sha256(body).hexdigest()}" in text
    assert "the download was removed" in text
    assert os.listdir(tmp_path / "data") == []
    assert_nothing_written(tmp_path, ["data"])


def test_an_http_download_cut_short_leaves_only_the_part_file(tmp_path, server):
    url, body = server
    with pytest.raises(DataError) as err:
        fetch_raw(f"{url}/cut.zip", tmp_path / "data/fer2013.zip", tmp_path / "raw")
    assert (f"could not download {url}/cut.zip: the connection closed after {len(body) // 2} "
            f"of {len(body)} bytes" in str(err.value))
    assert str(tmp_path / "data/fer2013.zip") in str(err.value)  # where to put it offline
    assert os.listdir(tmp_path / "data") == ["fer2013.zip.part"]
    assert (tmp_path / "data/fer2013.zip.part").read_bytes() == body[:len(body) // 2]
    assert_nothing_written(tmp_path, ["data"])


@pytest.mark.parametrize("path, reason", [
    ("page.zip", "not a zip or tar archive; it starts with b'<!DOCTYPE html>"),
    ("nolength.zip", "not a zip or tar archive"),  # the zip's directory is at its end: missing
])
def test_a_download_that_is_not_a_readable_archive_is_never_used(tmp_path, server, path, reason):
    url, _ = server
    dest = tmp_path / "data/fer2013.zip"
    with pytest.raises(DataError) as err:
        fetch_raw(f"{url}/{path}", dest, tmp_path / "raw")
    text = str(err.value)
    assert text.startswith(f"could not download {url}/{path}: what it sent is not a readable zip "
                           f"or tar archive")
    assert reason in text and f"the file is kept as {dest}.part" in text
    assert os.listdir(tmp_path / "data") == ["fer2013.zip.part"]
    assert_nothing_written(tmp_path, ["data"])


def test_an_http_error_leaves_nothing(tmp_path, server):
    url, _ = server
    with pytest.raises(DataError, match="could not download .*/missing.zip: HTTP Error 404"):
        fetch_raw(f"{url}/missing.zip", tmp_path / "data/fer2013.zip", tmp_path / "raw")
    assert os.listdir(tmp_path / "data") == []


@pytest.mark.parametrize("given_as", ["local_archive", "source"])
def test_a_local_archive_with_a_wrong_sha256_is_kept(tmp_path, given_as):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip")
    before = archive.read_bytes()
    source, local = ("kaggle:x/y", archive) if given_as == "local_archive" else (
        str(archive), tmp_path / "none.zip")
    with pytest.raises(DataError) as err:
        fetch_raw(source, local, tmp_path / "raw", sha256="f" * 64)
    text = str(err.value)
    assert f"{archive}: sha256 mismatch: expected {'f' * 64}, got " \
           f"{hashlib.sha256(before).hexdigest()}" in text
    assert "the file was not deleted" in text
    assert archive.read_bytes() == before
    assert_nothing_written(tmp_path, ["fer.zip", "src"])


@pytest.mark.parametrize("kagglehub,reason", [
    (None, "the kaggle: source needs kagglehub"),
    ("offline", "could not download kaggle:msambare/fer2013: network is unreachable"),
])
def test_an_offline_kaggle_source_says_where_to_put_the_archive(tmp_path, monkeypatch,
                                                               kagglehub, reason):
    def offline(handle):
        raise ConnectionError("network is unreachable")
    module = None if kagglehub is None else types.SimpleNamespace(dataset_download=offline)
    monkeypatch.setitem(sys.modules, "kagglehub", module)
    with pytest.raises(DataError) as err:
        fetch_raw("kaggle:msambare/fer2013", tmp_path / "data/fer2013.zip", tmp_path / "raw")
    assert reason in str(err.value)
    assert f"put the FER2013 archive (the Kaggle zip) at {tmp_path / 'data/fer2013.zip'}" in str(
        err.value)
    assert_nothing_written(tmp_path, [])


# --------------------------------------------------------------------------- 7. broken data


def tar_members(n_train: int = 1, n_test: int = 1, folder: Path | None = None) -> bytes:
    """An uncompressed tar of a tiny Kaggle-layout dataset."""
    buffer = BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tf.add(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def test_a_tar_with_a_zeroed_member_header_is_refused_naming_the_byte(tmp_path):
    make_image_folders(tmp_path / "src", n_train=2, n_test=1)
    body = bytearray(tar_members(folder=tmp_path / "src"))
    with tarfile.open(fileobj=BytesIO(bytes(body))) as tf:
        third = tf.getmembers()[2]
    body[third.offset:third.offset + 512] = bytes(512)  # tarfile reads it as the archive's end
    archive = tmp_path / "fer.tar"
    archive.write_bytes(bytes(body))
    with pytest.raises(DataError) as err:
        fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw")
    assert str(err.value).startswith(f"{archive}: damaged at byte ")
    assert f"the archive's listing ends at byte {third.offset}" in str(err.value)
    assert_nothing_written(tmp_path, ["fer.tar", "src"])


def test_a_corrupted_or_truncated_tar_gz_is_refused(tmp_path):
    make_image_folders(tmp_path / "src", n_train=2, n_test=1)
    packed = gzip.compress(tar_members(folder=tmp_path / "src"), mtime=0)
    corrupt = bytearray(packed)
    for i in range(len(corrupt) // 2, len(corrupt) // 2 + 50):
        corrupt[i] ^= 0x55
    (tmp_path / "corrupt.tar.gz").write_bytes(bytes(corrupt))
    (tmp_path / "cut.tar.gz").write_bytes(packed[:len(packed) // 2])
    for name, reason in (("corrupt.tar.gz", "cannot read: "), ("cut.tar.gz",
                         "cannot read: the archive is truncated")):
        with pytest.raises(DataError) as err:
            fetch_raw(str(tmp_path / name), tmp_path / "none.zip", tmp_path / "raw")
        assert str(err.value).startswith(f"{tmp_path / name}: ")
        assert reason in str(err.value) or "damaged at byte" in str(err.value)
    assert_nothing_written(tmp_path, ["corrupt.tar.gz", "cut.tar.gz", "src"])


def test_password_protected_and_bad_crc_zip_members_are_named(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip")
    body = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        first = zf.infolist()[0]
    body[first.header_offset + 6] |= 0x1  # the local header's "encrypted" flag ...
    central = body.rfind(b"PK\x01\x02", 0, len(body))
    central = body.find(b"PK\x01\x02")
    body[central + 8] |= 0x1  # ... and the central directory's
    (tmp_path / "locked.zip").write_bytes(bytes(body))
    with pytest.raises(DataError) as err:
        fetch_raw(str(tmp_path / "locked.zip"), tmp_path / "none.zip", tmp_path / "raw")
    assert str(err.value) == (f"{tmp_path / 'locked.zip'}: member '{first.filename}' is "
                              f"encrypted (password-protected); expected an archive without a "
                              f"password")
    with zipfile.ZipFile(tmp_path / "stored.zip", "w", zipfile.ZIP_STORED) as zf:
        for path in sorted((tmp_path / "src").rglob("*.jpg")):
            zf.write(path, path.relative_to(tmp_path / "src").as_posix())
        target = zf.infolist()[3]
    body = bytearray((tmp_path / "stored.zip").read_bytes())
    data_at = target.header_offset + 30 + len(target.filename.encode())
    body[data_at + 100] ^= 0xFF
    (tmp_path / "crc.zip").write_bytes(bytes(body))
    with pytest.raises(DataError) as err:
        fetch_raw(str(tmp_path / "crc.zip"), tmp_path / "none.zip", tmp_path / "raw")
    assert str(err.value).startswith(f"{tmp_path / 'crc.zip'}: member '{target.filename}' cannot "
                                     f"be read: the data are corrupted (Bad CRC-32")


def test_a_bad_crc_in_images_zip_is_named_by_prepare(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw")
    archive = tmp_path / "raw" / RAW_ARCHIVE
    with zipfile.ZipFile(archive) as zf:
        target = zf.infolist()[2]
    body = bytearray(archive.read_bytes())
    body[target.header_offset + 30 + len(target.filename.encode()) + 50] ^= 0xFF
    archive.write_bytes(bytes(body))
    with pytest.raises(DataError) as err:
        decode_archive(archive, workers=2)  # raised in a worker process, re-raised here
    assert str(err.value).startswith(f"{archive}: member '{target.filename}' cannot be read: "
                                     f"Bad CRC-32")


def test_missing_class_folders_are_listed(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    shutil.rmtree(tmp_path / "src/train/disgust")
    shutil.rmtree(tmp_path / "src/train/fear")
    with pytest.raises(DataError) as err:
        fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw")
    assert str(err.value) == (f"{tmp_path / 'src'}: the train split has no disgust, no fear "
                              f"images; expected all 7 classes {list(CLASS_NAMES)}")
    assert_nothing_written(tmp_path, ["src"])


@pytest.mark.parametrize("stray, message", [
    ("train/happy/more/extra.jpg", "an image in a subfolder of a class folder"),
    ("test/sad/2020/b/extra.jpg", "an image in a subfolder of a class folder"),
])
def test_images_in_subfolders_of_class_folders_are_refused(tmp_path, stray, message):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    (tmp_path / "src" / stray).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "src/train/happy/train_happy_0.jpg", tmp_path / "src" / stray)
    for source in (tmp_path / "src", make_zip(tmp_path / "src", tmp_path / "fer.zip")):
        with pytest.raises(DataError) as err:
            fetch_raw(str(source), tmp_path / "none.zip", tmp_path / "raw")
        assert str(err.value).startswith(f"{source / stray}: {message}")


def test_a_file_name_that_is_not_utf8_is_named(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    bad = os.fsencode(tmp_path / "src/train/happy") + b"/caf\xe9.jpg"
    with open(bad, "wb") as fh:
        fh.write((tmp_path / "src/train/happy/train_happy_0.jpg").read_bytes())
    with pytest.raises(DataError) as err:
        fetch_raw(str(tmp_path / "src"), tmp_path / "none.zip", tmp_path / "raw")
    assert str(err.value) == (f"{tmp_path / 'src'}: file name 'train/happy/caf\ufffd.jpg' is not "
                              f"valid UTF-8; rename it")


def test_the_download_stage_prints_one_line_and_no_traceback(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    shutil.rmtree(tmp_path / "src/train/angry")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"].update(source=str(tmp_path / "src"), local_archive="none.zip")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(ROOT / "stages/download.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: {tmp_path / 'src'}: the train split has no angry images; "
                           f"expected all 7 classes {list(CLASS_NAMES)}\n")
