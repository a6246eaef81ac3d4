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

from ferpipe.core.errors import DataError
from ferpipe.core.handoffs import check_data_counts, check_eval, check_run_record, check_train_summary
from ferpipe.data.splits import load_split, read_stats, read_table, save_split

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


TRAIN_SUMMARY = {"best_val_accuracy": 0.66, "best_epoch": 49, "epochs": 50, "train_minutes": 93.7,
                 "images_per_s": 222.2, "peak_rss_mb": 1821.0}
COUNTS = {split: {"images": n, "angry": n} for split, n in
          (("train", 100), ("val", 10), ("test", 20))}


@pytest.mark.parametrize("check, raw, line", [
    (check_train_summary, {**TRAIN_SUMMARY, "best_val_accuracy": 66.4},
     "best_val_accuracy: got 66.4; expected a finite number from 0 to 1 (written by the train "
     "stage: dvc repro train)"),
    (check_train_summary, {**TRAIN_SUMMARY, "images_per_s": float("inf")},
     "images_per_s: got inf; expected a finite number > 0"),
    (check_train_summary, {k: v for k, v in TRAIN_SUMMARY.items() if k != "epochs"},
     "epochs: got nothing (missing); expected a whole number >= 1"),
    (check_data_counts, {**COUNTS, "test": {"images": 0}},
     "test.images: got 0; expected a whole number of images >= 1 (written by the prepare "
     "stage: dvc repro prepare)"),
    (check_data_counts, {"train": COUNTS["train"], "val": COUNTS["val"]},
     "test: got nothing (missing); expected an object with the split's images"),
    (check_eval, {"test": {"per_class": {"angry": {"f1": 1.5}}}},
     "test.per_class.angry.f1: got 1.5; expected a finite number from 0 to 1 (written by the "
     "evaluate stage: dvc repro evaluate)"),
    (check_eval, {"test": {"per_class": {}}},
     "test.per_class: got {}; expected an object with one entry per class"),
])
def test_bad_stage_summaries_are_one_line(tmp_path, check, raw, line):
    path = tmp_path / "summary.json"
    with pytest.raises(DataError) as err:
        check(raw, path)
    assert str(err.value).startswith(f"{path}: {line}")


def test_good_stage_summaries_keep_every_field(tmp_path):
    assert check_train_summary(TRAIN_SUMMARY, tmp_path) == TRAIN_SUMMARY
    assert check_data_counts(COUNTS, tmp_path) == COUNTS
    scores = {"test": {"per_class": {"angry": {"f1": 0.5, "support": 3}}, "accuracy": 0.5}}
    assert check_eval(scores, tmp_path) == scores


@pytest.mark.parametrize("kind, text, line", [
    ("history", "epoch,train_loss,train_accuracy,val_loss\n1,1.0,0.5,1.0\n",
     "val_accuracy: got nothing (missing column); expected the columns epoch, train_loss, "
     "train_accuracy, val_loss, val_accuracy (written by the train stage: dvc repro train)"),
    ("history", "epoch,train_loss,train_accuracy,val_loss,val_accuracy\n",
     "(rows): got no rows; expected at least one row"),
    ("history", "epoch,train_loss,train_accuracy,val_loss,val_accuracy\n1,1.0,0.5,nan,0.4\n",
     "val_loss: got nan in row 1; expected finite numbers"),
    ("lr", "step,lr\n1,0.001\n2,fast\n", "lr: got 'fast' in row 2; expected finite numbers"),
    ("confusion", "actual,predicted\nangry,happy\nangry,joy\n",
     "predicted: got 'joy'; expected a class name (angry, happy) (written by the evaluate "
     "stage: dvc repro evaluate)"),
])
def test_bad_tables_are_one_line(tmp_path, kind, text, line):
    path = tmp_path / f"{kind}.csv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_table(kind, path, classes=["angry", "happy"])
    assert str(err.value).startswith(f"{path}: {line}")


def test_missing_or_binary_table_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"lr.csv: not found$"):
        read_table("lr", tmp_path / "lr.csv")
    path = tmp_path / "history.csv"
    path.write_bytes(b"\x00\xff\xfe" * 10)
    with pytest.raises(DataError, match=r"history.csv: "):
        read_table("history", path)
    path.write_text("step,lr\n1,0.1\n2,0.05\n")
    assert read_table("lr", path)["lr"].tolist() == [0.1, 0.05]


def run_stage(name: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py")], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "MLFLOW_TRACKING_URI": (cwd / "mlruns").as_uri()})


def test_evaluate_refuses_a_bad_train_summary_before_scoring(tmp_path):
    """No model, no test split: the stage stops at the first file it reads, so nothing was
    loaded or scored, and it writes nothing."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "train.json").write_text(
        json.dumps({**TRAIN_SUMMARY, "best_val_accuracy": float("nan")}))
    (tmp_path / "metrics" / "data.json").write_text(json.dumps(COUNTS))
    proc = run_stage("evaluate", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: metrics/train.json: best_val_accuracy: got nan; "
                                   "expected a finite number from 0 to 1 (written by the train "
                                   "stage: dvc repro train)")
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["data.json", "train.json"]
    assert not (tmp_path / "mlruns").exists()


def test_plot_refuses_a_bad_history_before_drawing(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "history.csv").write_text("epoch,train_loss,train_accuracy,val_loss,val_accuracy\n"
                                         "1,1.2,0.5,1.1,0.5\n2,inf,0.6,1.0,0.55\n")
    proc = run_stage("plot", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: metrics/history.csv: train_loss: got inf in row 2; "
                                   "expected finite numbers (written by the train stage: dvc "
                                   "repro train)")
    assert sorted(p.name for p in metrics.iterdir()) == ["history.csv"]
