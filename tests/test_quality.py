"""Duplicates, test leakage, blank and bad images: found by pixel hash, dropped from train/val only."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ferpipe.core.errors import DataError
from ferpipe.data.quality import check_bad_fraction, clean_splits, pixel_hashes, uniform_mask
from ferpipe.data.splits import load_split
from tests.fakedata import face_like, make_image_folders, make_zip

ROOT = Path(__file__).resolve().parents[1]


def split_of(images, labels):
    images = np.asarray(images, np.uint8)
    return {"images": images, "labels": np.asarray(labels, np.int64),
            "files": np.asarray([f"f{i}.png" for i in range(len(images))])}


def img(seed):
    return face_like(seed % 7, np.random.default_rng(seed))


BLACK = np.zeros((48, 48), np.uint8)
FLAT = np.full((48, 48), 100, np.uint8)
FLAT[0, 0] = 103  # std ~0.06: near-uniform, not black


@pytest.fixture
def splits():
    """train: A, A (copy), B (in test), C, black, flat, D, D' (a copy of D with another label);
    test: B, E, E (copy), black."""
    a, b, c, d, e = img(1), img(2), img(3), img(4), img(5)
    train = split_of([a, a, b, c, BLACK, FLAT, d, d], [0, 0, 1, 2, 3, 4, 5, 6])
    test = split_of([b, e, e, BLACK], [1, 2, 2, 3])
    return {"train": train, "test": test}


def test_hashes_and_uniform_masks():
    h = pixel_hashes(np.stack([img(1), img(1), img(2)]))
    assert h[0] == h[1] != h[2] and len(h[0]) == 16
    black, near = uniform_mask(np.stack([BLACK, FLAT, img(1)]), 2.0)
    assert black.tolist() == [True, False, False] and near.tolist() == [False, True, False]


def test_counts_and_drops_with_the_defaults(splits):
    cleaned, report = clean_splits(splits)
    assert report["groups"] == {"duplicate_groups": 5,  # A, B (train+test), D, E, black
                                "duplicate_copies": 5, "test_overlap_groups": 2,
                                "test_images_in_train": 2, "conflicting_groups": 1,
                                "all_black": 2, "near_uniform": 1}
    train = report["train"]
    # B and the black image are in test; the flat one is uniform; the second A and D copies.
    assert (train["test_overlap"], train["uniform"], train["duplicate"]) == (2, 1, 2)
    assert (train["images"], train["dropped"], train["kept"]) == (8, 5, 3)
    assert cleaned["train"]["files"].tolist() == ["f0.png", "f3.png", "f6.png"]
    assert cleaned["train"]["labels"].tolist() == [0, 2, 5]
    assert train["per_class"]["happy"] == {"images": 1, "test_overlap": 1, "uniform": 0,
                                           "duplicate": 0, "dropped": 1, "kept": 0}
    assert train["per_class"]["surprise"]["duplicate"] == 1
    test = report["test"]
    assert (test["images"], test["in_train"], test["duplicate"], test["uniform"]) == (4, 2, 1, 1)
    assert test["dropped"] == 0 and test["per_class"]["fear"]["duplicate"] == 1
    for key in ("images", "labels", "files"):  # the test split is never altered
        np.testing.assert_array_equal(cleaned["test"][key], splits["test"][key])


def test_each_switch_turns_its_reason_off(splits):
    _, report = clean_splits(splits, drop_test_overlap=False)
    # The black train image now falls to "uniform"; B stays (it is not a train duplicate).
    assert (report["train"]["test_overlap"], report["train"]["uniform"]) == (0, 2)
    assert report["train"]["kept"] == 4
    _, report = clean_splits(splits, drop_uniform=False, drop_duplicates=False)
    assert (report["train"]["uniform"], report["train"]["duplicate"]) == (0, 0)
    assert report["train"]["kept"] == 6
    cleaned, report = clean_splits(splits, drop_test_overlap=False, drop_uniform=False,
                                   drop_duplicates=False)
    assert report["train"]["kept"] == 8 and report["groups"]["duplicate_groups"] == 5
    _, report = clean_splits(splits, uniform_std=0.0)
    assert report["groups"]["near_uniform"] == 0 and report["train"]["uniform"] == 0


def test_a_source_val_split_is_cleaned_and_train_copies_of_val_dropped():
    a, b, c = img(1), img(2), img(3)
    splits = {"train": split_of([a, b], [0, 1]), "val": split_of([b, c, c], [1, 2, 2]),
              "test": split_of([c], [2])}
    cleaned, report = clean_splits(splits)
    assert report["val"]["test_overlap"] == 2 and report["val"]["kept"] == 1
    assert report["train"]["duplicate"] == 1  # b is in val
    assert cleaned["train"]["labels"].tolist() == [0]


def test_bad_fraction_threshold():
    splits = {"train": split_of([img(i) for i in range(98)], [0] * 98)}
    info = {"train": {"bad": [("angry/x.jpg", "truncated"), ("angry/y.txt", "cannot identify "
                                                                           "image file")]}}
    check_bad_fraction(splits, info, 0.02)  # 2 of 100: allowed
    with pytest.raises(DataError) as err:
        check_bad_fraction(splits, info, 0.01)
    assert str(err.value) == (
        "prepare: train: 2 of 100 files (2.0%) could not be decoded, more than "
        "prepare.max_bad_fraction = 0.01: angry/x.jpg (truncated); angry/y.txt (cannot "
        "identify image file)")


def run_prepare(tmp, **prepare):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"].update(source=str(tmp / "fer.zip"), local_archive=str(tmp / "none.zip"))
    params["prepare"].update(prepare)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("download", "prepare"):
        proc = subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=tmp,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode:
            return proc
    return proc


def test_prepare_stage_reports_quality_and_bad_files(tmp_path):
    make_image_folders(tmp_path / "images", n_train=10, n_test=3)
    train, test = tmp_path / "images/train", tmp_path / "images/test"
    # A leak: a test image copied into train (another name and format, same pixels).
    leaked = np.asarray(Image.open(test / "happy/test_happy_0.jpg"))
    Image.fromarray(leaked).save(train / "happy/leak.png")
    Image.fromarray(BLACK).save(train / "sad/black.png")
    (train / "fear/empty.jpg").write_bytes(b"")
    (train / "fear/notes.txt").write_text("not an image")
    make_zip(tmp_path / "images", tmp_path / "fer.zip")
    proc = run_prepare(tmp_path, max_bad_fraction=0.05)
    assert proc.returncode == 0, proc.stderr
    quality = json.loads((tmp_path / "metrics/quality.json").read_text())
    assert quality["groups"]["test_overlap_groups"] == 1 and quality["groups"]["all_black"] == 1
    assert quality["train"]["images"] == 72 and quality["train"]["bad"] == 2
    assert (quality["train"]["test_overlap"], quality["train"]["uniform"]) == (1, 1)
    assert quality["train"]["kept"] == 70 and quality["test"]["in_train"] == 1
    assert quality["train"]["per_class"]["happy"]["test_overlap"] == 1
    with open(tmp_path / "metrics/bad_files.csv", newline="") as fh:
        bad = list(csv.DictReader(fh))
    assert [(b["split"], b["file"], b["reason"]) for b in bad] == [
        ("train", "fear/empty.jpg", "empty file"),
        ("train", "fear/notes.txt", "cannot identify image file")]
    data = json.loads((tmp_path / "metrics/data.json").read_text())
    assert data["train"]["images"] + data["val"]["images"] == 70 and data["test"]["images"] == 21
    kept = np.concatenate([load_split(tmp_path / f"data/prepared/{s}.npz")["files"]
                           for s in ("train", "val")])
    assert "happy/leak.png" not in kept and "sad/black.png" not in kept


def test_prepare_stage_fails_above_max_bad_fraction_and_writes_nothing(tmp_path):
    make_image_folders(tmp_path / "images", n_train=4, n_test=2)
    for i in range(3):
        (tmp_path / f"images/train/angry/bad{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    make_zip(tmp_path / "images", tmp_path / "fer.zip")
    proc = run_prepare(tmp_path, max_bad_fraction=0.05)
    assert proc.returncode != 0
    assert ("prepare: train: 3 of 31 files (9.7%) could not be decoded, more than "
            "prepare.max_bad_fraction = 0.05: angry/bad0.jpg") in proc.stderr
    assert not (tmp_path / "data/prepared").exists()
    assert not (tmp_path / "metrics/quality.json").exists()
