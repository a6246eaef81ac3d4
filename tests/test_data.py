import hashlib
import shutil
import sys
import types

import numpy as np
import pytest

from ferpipe.data import (CLASS_NAMES, DataError, load_split, pixel_stats, save_split,
                          stratified_split)
from ferpipe.raw import canonical_class, decode_split, fetch_raw, map_class_folders
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


def test_fetch_zip_with_wrapper_and_odd_class_names(tmp_path):
    rename = {"angry": "Angry", "happy": "happiness", "sad": "Sadness"}
    make_image_folders(tmp_path / "src", n_train=3, n_test=2, class_dirs=rename)
    archive = make_zip(tmp_path / "src", tmp_path / "fer.zip", prefix="archive/")
    counts = fetch_raw("kaggle:nobody/nothing", archive, tmp_path / "raw",
                       sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    assert counts["train"] == {c: 3 for c in CLASS_NAMES}
    assert sorted(p.name for p in (tmp_path / "raw/train").iterdir()) == list(CLASS_NAMES)
    assert len(list((tmp_path / "raw/test/happy").iterdir())) == 2
    assert archive.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".unpack")] == []


def test_fetch_from_folder_copies_and_keeps_the_source(tmp_path):
    make_image_folders(tmp_path / "src", n_train=2, n_test=1)
    fetch_raw(str(tmp_path / "src"), tmp_path / "missing.zip", tmp_path / "raw")
    assert len(list((tmp_path / "raw/train/fear").iterdir())) == 2
    assert len(list((tmp_path / "src/train/fear").iterdir())) == 2


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


def test_decode_converts_rgb_and_resizes(tmp_path):
    from PIL import Image
    (tmp_path / "happy").mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "happy/a.png")
    Image.new("L", (48, 48), 7).save(tmp_path / "happy/b.png")
    arrays, converted = decode_split(tmp_path)
    assert arrays["images"].shape == (2, 48, 48) and arrays["images"].dtype == np.uint8
    assert converted == 1
    assert arrays["labels"].tolist() == [3, 3] and arrays["files"].tolist() == ["happy/a.png",
                                                                               "happy/b.png"]
    assert arrays["images"][1].max() == 7
    save_split(arrays, tmp_path / "out/test.npz")
    loaded = load_split(tmp_path / "out/test.npz")
    assert np.array_equal(loaded["images"], arrays["images"])
    assert loaded["labels"].dtype == np.int64
