import hashlib
import shutil
import sys
import tarfile
import types
import zipfile

import numpy as np
import pytest

from ferpipe.core.errors import DataError
from ferpipe.core.outputs import MANIFEST
from ferpipe.data.classes import canonical_class, map_class_folders
from ferpipe.data.decode import decode_archive
from ferpipe.data.fetch import fetch_raw
from ferpipe.data.splits import (
    CLASS_NAMES,
    RAW_ARCHIVE,
    load_split,
    pixel_stats,
    save_split,
    stratified_split,
)
from tests.fakedata import make_image_folders, make_zip


@pytest.mark.parametrize("name,expected", [
    ("angry", "angry"), ("Angry", "angry"), ("ANGER", "angry"), ("happiness", "happy"),
    ("Sadness", "sad"), ("surprised", "surprise"), ("3_fear", "fear"), ("Neutral", "neutral"),
    ("disgust", "disgust"), ("contempt", None), ("", None)])
def test_canonical_class(name, expected):
    assert canonical_class(name) == expected


def test_unknown_class_folder_lists_found_and_expected():
    with pytest.raises(DataError) as err:
        map_class_folders(["Angry", "contempt"], "train")
    text = str(err.value)
    assert "contempt" in text and "Angry" in text and "surprise" in text
    with pytest.raises(DataError, match="two folders"):
        map_class_folders(["anger", "angry"], "train")


def test_stratified_split_keeps_class_shares_and_is_seeded():
    counts = np.array([50, 10, 40, 100, 60, 60, 30])
    labels = np.repeat(np.arange(7), counts).astype(np.int64)
    arrays = {"images": np.zeros((len(labels), 48, 48), np.uint8), "labels": labels,
              "files": np.array([f"f{i}" for i in range(len(labels))])}
    train, val = stratified_split(arrays, 0.1, seed=3)
    assert np.array_equal(np.bincount(val["labels"], minlength=7), counts // 10)
    assert len(train["labels"]) + len(val["labels"]) == len(labels)
    assert not set(train["files"]) & set(val["files"])
    again, _ = stratified_split(arrays, 0.1, seed=3)
    other, _ = stratified_split(arrays, 0.1, seed=4)
    assert np.array_equal(again["files"], train["files"])
    assert not np.array_equal(other["files"], train["files"])


def test_pixel_stats_match_numpy():
    images = np.random.default_rng(0).integers(0, 256, (20, 48, 48), dtype=np.uint8)
    stats = pixel_stats(images)
    assert stats["mean"] == pytest.approx(images.mean() / 255, rel=1e-12)
    assert stats["std"] == pytest.approx((images / 255).std(), rel=1e-9)
    assert stats["pixels"] == images.size


def members(raw_dir):
    with zipfile.ZipFile(raw_dir / RAW_ARCHIVE) as zf:
        return zf.namelist()


def test_fetch_zip_with_wrapper_and_odd_class_names(tmp_path):
    rename = {"angry": "Angry", "happy": "happiness", "sad": "Sadness"}
    make_image_folders(tmp_path / "src", n_train=3, n_test=2, class_dirs=rename)
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip", prefix="archive/")
    counts = fetch_raw("kaggle:nobody/nothing", archive, tmp_path / "raw",
                       sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    assert counts["train"] == {c: 3 for c in CLASS_NAMES}
    assert counts["test"] == {c: 2 for c in CLASS_NAMES}
    names = members(tmp_path / "raw")
    assert names == sorted(names) and len(names) == 7 * 5
    assert "train/angry/train_angry_0.jpg" in names and "test/happy/test_happy_1.jpg" in names
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [MANIFEST, RAW_ARCHIVE]
    assert archive.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_same_images_give_the_same_raw_archive_from_zip_tar_or_folder(tmp_path):
    make_image_folders(tmp_path / "src", n_train=2, n_test=1)
    zipped = make_zip(tmp_path / "src", tmp_path / "fer.zip", prefix="fer2013/")
    tarred = tmp_path / "fer.tar.gz"
    with tarfile.open(tarred, "w:gz") as tf:
        tf.add(tmp_path / "src", arcname="Dataset/archive")
    digests = set()
    for i, source in enumerate((zipped, tarred, tmp_path / "src")):
        fetch_raw(str(source), tmp_path / "none.zip", tmp_path / f"raw{i}")
        digests.add(hashlib.sha256((tmp_path / f"raw{i}" / RAW_ARCHIVE).read_bytes()).hexdigest())
    assert len(digests) == 1
    assert len(list((tmp_path / "src/train/fear").iterdir())) == 2  # the source is kept


@pytest.mark.parametrize("bad", ["../evil.jpg", "/abs/evil.jpg"])
def test_unsafe_member_paths_are_refused_and_nothing_is_written(tmp_path, bad):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(bad, b"x")
    with pytest.raises(DataError, match=f"unsafe member path '{bad}'"):
        fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fer.zip", "src"]


def test_symlink_members_are_refused(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip")
    link = zipfile.ZipInfo("train/happy/link.jpg")
    link.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="'train/happy/link.jpg' is a symlink"):
        fetch_raw(str(archive), tmp_path / "none.zip", tmp_path / "raw")


def test_sha256_mismatch_shows_both_hashes(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip")
    with pytest.raises(DataError) as err:
        fetch_raw("kaggle:x/y", archive, tmp_path / "raw", sha256="0" * 64)
    assert "0" * 64 in str(err.value)
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in str(err.value)
    assert not (tmp_path / "raw").exists()


def test_offline_kaggle_says_where_to_put_the_archive(tmp_path, monkeypatch):
    def fail(handle):
        raise ConnectionError("network is unreachable")
    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=fail))
    with pytest.raises(DataError) as err:
        fetch_raw("kaggle:msambare/fer2013", tmp_path / "data/fer2013.zip", tmp_path / "raw")
    assert "kaggle:msambare/fer2013" in str(err.value)
    assert str(tmp_path / "data/fer2013.zip") in str(err.value)


def test_failed_http_download_leaves_no_archive(tmp_path):
    dest = tmp_path / "fer2013.zip"
    with pytest.raises(DataError, match="could not download"):
        fetch_raw("http://127.0.0.1:9/fer2013.zip", dest, tmp_path / "raw")
    assert not dest.exists() and not (tmp_path / "raw").exists()


def test_missing_test_split_is_named(tmp_path):
    make_image_folders(tmp_path / "src", n_train=1, n_test=1)
    shutil.rmtree(tmp_path / "src/test")
    with pytest.raises(DataError, match="no test/ split"):
        fetch_raw(str(tmp_path / "src"), tmp_path / "x.zip", tmp_path / "raw")


def test_decode_archive_converts_rgb_resizes_and_orders_by_class_then_name(tmp_path):
    from PIL import Image
    src = tmp_path / "src"
    make_image_folders(src, n_train=1, n_test=1)
    Image.new("RGB", (64, 64), (255, 0, 0)).save(src / "train/happy/b.png")
    Image.new("L", (48, 48), 7).save(src / "train/happy/a.png")
    fetch_raw(str(src), tmp_path / "none.zip", tmp_path / "raw")
    decoded = decode_archive(tmp_path / "raw" / RAW_ARCHIVE, workers=2)
    assert sorted(decoded) == ["test", "train"]
    arrays, converted = decoded["train"]
    assert arrays["images"].shape == (9, 48, 48) and arrays["images"].dtype == np.uint8
    assert converted == {"converted": 1, "bad": []}
    assert arrays["labels"].tolist() == [0, 1, 2, 3, 3, 3, 4, 5, 6]
    assert arrays["files"][3:6].tolist() == ["happy/a.png", "happy/b.png", "happy/train_happy_0.jpg"]
    assert arrays["images"][3].max() == 7
    red = np.asarray(Image.new("RGB", (48, 48), (255, 0, 0)).convert("L"))
    assert abs(int(arrays["images"][4].mean()) - int(red.mean())) <= 1
    single, _ = decode_archive(tmp_path / "raw" / RAW_ARCHIVE, workers=1)["train"]
    assert np.array_equal(single["images"], arrays["images"])
    save_split(arrays, tmp_path / "out/train.npz")
    loaded = load_split(tmp_path / "out/train.npz")
    assert np.array_equal(loaded["images"], arrays["images"])
    assert loaded["labels"].dtype == np.int64


def test_a_split_too_small_for_the_val_carve_out_names_the_param_and_the_class():
    labels = np.repeat(np.arange(7), [5, 1, 5, 5, 5, 5, 5]).astype(np.int64)
    arrays = {"images": np.zeros((len(labels), 48, 48), np.uint8), "labels": labels}
    with pytest.raises(DataError) as err:
        stratified_split(arrays, 0.1, seed=0)
    assert str(err.value) == ("prepare.val_fraction: class 'disgust' has 1 training image; a "
                              "stratified val split needs at least 2 of each class")
    labels = np.repeat(np.arange(7), 3).astype(np.int64)
    arrays = {"images": np.zeros((21, 48, 48), np.uint8), "labels": labels}
    with pytest.raises(DataError) as err:
        stratified_split(arrays, 0.1, seed=0)
    assert str(err.value) == ("prepare.val_fraction: 0.1 of 21 training images leaves 3 for val "
                              "and 18 for train; each needs at least one image of each of the 7 "
                              "classes")
