"""Files one stage hands the next are checked when read: a bad one is one line naming the file,
the field, what was expected and the stage that writes it, before any compute is spent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ferpipe.data import load_split, read_stats, save_split
from ferpipe.errors import DataError
from ferpipe.handoffs import check_run_record

ROOT = Path(__file__).resolve().parents[1]


def write_stats(path: Path, **values) -> Path:
    path.write_text(json.dumps({"mean": 0.5, "std": 0.25, "pixels": 100, **values}))
    return path


@pytest.mark.parametrize("values, line", [
    ({"std": 0}, "std: got 0; expected a finite number > 0 and <= 0.5"),
    ({"std": -0.1}, "std: got -0.1; expected a finite number > 0 and <= 0.5"),
    ({"mean": float("nan")}, "mean: got nan; expected a finite number > 0 and < 1"),
    ({"mean": 255.0}, "mean: got 255.0; expected a finite number > 0 and < 1"),
    ({"std": "0.25"}, "std: got '0.25'; expected a finite number > 0 and <= 0.5"),
])
def test_bad_stats_are_one_line_naming_file_field_and_stage(tmp_path, values, line):
    path = write_stats(tmp_path / "stats.json", **values)
    with pytest.raises(DataError) as err:
        read_stats(path)
    assert str(err.value) == (f"{path}: {line} (written by the stats stage: dvc repro stats)")


def test_missing_stats_field_and_good_stats(tmp_path):
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"mean": 0.5}))
    with pytest.raises(DataError, match=r"stats.json: std: got nothing \(missing\); expected"):
        read_stats(path)
    good = read_stats(write_stats(tmp_path / "good.json"))
    assert good == {"mean": 0.5, "std": 0.25, "pixels": 100}


def split(n=6, **arrays):
    base = {"images": np.zeros((n, 48, 48), np.uint8), "labels": np.arange(n) % 7,
            "files": np.array([f"{i}.jpg" for i in range(n)])}
    return {**base, **arrays}


@pytest.mark.parametrize("arrays, line", [
    ({"labels": np.array([0, 1, 2, 3, 4, 9])}, "labels: got values 0..9; expected class indices 0..6"),
    ({"labels": np.array([0, 1, 2, -1, 4, 5])}, "labels: got values -1..5; expected class indices 0..6"),
    ({"labels": np.zeros(5, np.int64)}, "labels: got shape (5,); expected (6,): one label per image"),
    ({"labels": np.zeros(6, np.float32)}, "labels: got dtype float32; expected integer class indices"),
    ({"images": np.zeros((6, 48, 48), np.float32)}, "images: got dtype float32; expected uint8"),
    ({"images": np.zeros((6, 48, 40), np.uint8)}, "images: got shape (6, 48, 40); expected (N, S, S)"),
    ({"files": np.array(["a.jpg"])}, "files: got shape (1,); expected (6,): one file name per image"),
])
def test_bad_prepared_arrays_are_one_line(tmp_path, arrays, line):
    path = tmp_path / "train.npz"
    save_split(split(**arrays), path)
    with pytest.raises(DataError) as err:
        load_split(path)
    assert str(err.value).startswith(f"{path}: {line}")
    assert str(err.value).endswith("(written by the prepare stage: dvc repro prepare)")


def test_good_prepared_arrays_load_with_int64_labels(tmp_path):
    path = tmp_path / "val.npz"
    save_split(split(labels=np.arange(6, dtype=np.int32)), path)
    arrays = load_split(path)
    assert arrays["labels"].dtype == np.int64 and arrays["images"].shape == (6, 48, 48)


def test_bad_run_record_is_one_line(tmp_path):
    path = tmp_path / "mlflow_run.json"
    with pytest.raises(DataError, match=r"mlflow_run.json: run_id: got nothing \(missing\); "
                                        r"expected an MLflow run id \(32 hex digits\) \(written "
                                        r"by the train stage: dvc repro train\)"):
        check_run_record({"experiment": "x"}, path)
    with pytest.raises(DataError, match="run_id: got 'abc'; expected an MLflow run id"):
        check_run_record({"run_id": "abc", "experiment": "x"}, path)
    with pytest.raises(DataError, match="got list; expected a JSON object"):
        check_run_record([], path)
    ok = check_run_record({"run_id": "0" * 32, "experiment": "x", "tracking_uri": "sqlite://"},
                          path)
    assert ok["run_id"] == "0" * 32 and ok["tracking_uri"] == "sqlite://"


def test_train_stage_refuses_zero_std_stats_before_training(tmp_path):
    """The fault as a user meets it: std 0 in data/stats.json stops the train stage at once with
    the file's line, not after an epoch with advice about the learning rate."""
    prepared = tmp_path / "data" / "prepared"
    for name in ("train", "val"):
        save_split(split(n=14), prepared / f"{name}.npz")
    write_stats(tmp_path / "data" / "stats.json", std=0.0)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(epochs=1, batch_size=4, device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri()})
    assert proc.returncode != 0
    assert proc.stderr.strip() == ("error: data/stats.json: std: got 0.0; expected a finite "
                                   "number > 0 and <= 0.5 (written by the stats stage: dvc "
                                   "repro stats)")
    assert "epoch" not in proc.stdout and not (tmp_path / "models").exists()
    assert not (tmp_path / "mlruns").exists()  # no MLflow run was opened either
