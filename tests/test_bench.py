"""The benchmark runs end to end on tiny generated data and reports consistent figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fakedata import make_image_folders, make_zip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with params.yaml, a tiny local archive, and the data stages already run."""
    tmp = tmp_path_factory.mktemp("bench")
    make_image_folders(tmp / "images", n_train=10, n_test=3)
    (tmp / "data").mkdir()
    make_zip(tmp / "images", tmp / "data" / "fer2013.zip")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["stem"] = "standard"
    params["train"]["batch_size"] = 8
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for stage in ("download", "prepare", "stats"):
        subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=tmp,
                       env=env, check=True, capture_output=True, timeout=600)
    return tmp, env


def test_bench_reports_every_figure(project):
    tmp, env = project
    proc = subprocess.run([sys.executable, "-m", "ferpipe.tools.bench.cli", "--batches", "2", "--rounds",
                           "2", "--workers", "1", "--json", "bench.json"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp / "bench.json").read_text())
    assert result["stem"] == "standard" and result["batch_size"] == 8
    assert result["device"] == "cpu" and result["rounds"] == 2
    for key in ("bare", "pipeline", "baseline", "baseline_loader_only", "augment_only"):
        assert result[f"{key}_images_per_s"] > 0
    assert result["pipeline_over_bare"] == pytest.approx(
        result["pipeline_images_per_s"] / result["bare_images_per_s"])
    assert result["pipeline_over_baseline"] == pytest.approx(
        result["pipeline_images_per_s"] / result["baseline_images_per_s"])
    assert result["train_loop_peak_rss_mb"] > 100  # torch + arrays + model, in MiB
    stages = result["data_stage_seconds"]
    assert set(stages) == {"download", "prepare", "stats", "total"}
    assert stages["total"] == pytest.approx(stages["download"] + stages["prepare"]
                                            + stages["stats"])
    assert "pipeline" in proc.stdout and "round 2" in proc.stdout
    # The data stages ran in a temp folder: the project's own outputs are untouched.
    assert sorted(p.name for p in (tmp / "data").iterdir()) == ["fer2013.zip", "prepared",
                                                                 "raw", "stats.json"]


def test_bench_overrides_precision_and_stem(project):
    tmp, env = project
    proc = subprocess.run([sys.executable, "-m", "ferpipe.tools.bench.cli", "--batches", "1", "--rounds",
                           "1", "--skip-baseline", "--skip-data", "--no-ceiling", "--amp", "bf16",
                           "--stem", "3x3", "--channels-last", "false", "--json", "b.json"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp / "b.json").read_text())
    assert result["precision"] == "bfloat16" and result["stem"] == "3x3"
    assert result["channels_last"] is False
    assert "baseline_images_per_s" not in result and "data_stage_seconds" not in result


def test_bench_compare_measures_settings_side_by_side(project):
    tmp, env = project
    proc = subprocess.run([sys.executable, "-m", "ferpipe.tools.bench.cli", "--compare",
                           "train.fused=false,train.compile=false", "default",
                           "train.batch_size=12,train.lr=0.006", "--batches", "2", "--rounds",
                           "2", "--json", "c.json"], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp / "c.json").read_text())
    old, new, big = result["variants"]
    assert (old["fused"], new["fused"]) == (False, True)
    assert old["compile"] is None and new["compile"] is None  # auto: eager on a CPU
    assert (big["batch_size"], big["lr"]) == (12, 0.006) and new["batch_size"] == 8
    assert result["ceiling_tflops"] > 0.001 and result["rounds"] == 2
    for row in result["variants"]:
        assert row["pipeline_images_per_s"] > 0 and row["bare_images_per_s"] > 0
        # ResNet18 with the standard stem on 40-pixel crops: ~0.3 GFLOP a train step per image
        assert 0.1 < row["gflop_per_image"] < 1.0
        assert row["step_tflops"] == pytest.approx(row["pipeline_images_per_s"]
                                                   * row["gflop_per_image"] / 1000)
        assert row["share_of_ceiling"] == pytest.approx(row["step_tflops"]
                                                        / result["ceiling_tflops"])
    assert old["speedup"] == 1.0
    assert new["speedup"] == pytest.approx(new["pipeline_images_per_s"]
                                           / old["pipeline_images_per_s"])
    assert "round 2" in proc.stdout and "speed-up" in proc.stdout


def test_bench_compare_refuses_a_bad_override_in_one_line(project):
    tmp, env = project
    for spec, expected in (("train.lrr=1", "train.lrr: unknown key"),
                           ("lr=1", "expected section.key=value"),
                           ("train.batch_size=5000", "is more than the")):
        proc = subprocess.run([sys.executable, "-m", "ferpipe.tools.bench.cli", "--compare", spec,
                               "--batches", "1", "--rounds", "1"], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode != 0 and expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_bench_profile_splits_the_step_time_by_kind_of_op(project):
    tmp, env = project
    proc = subprocess.run([sys.executable, "-m", "ferpipe.tools.bench.cli", "--profile", "2", "--json",
                           "p.json"], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp / "p.json").read_text())
    shares = result["categories"]
    assert sum(shares.values()) == pytest.approx(1.0)
    # A ResNet18 step: convolutions, batch norm and the optimizer all show up.
    for kind in ("convolution backward", "convolution forward", "batch norm", "optimizer"):
        assert shares[kind] > 0, kind
    assert result["ms_per_batch"] > 0 and len(result["top_ops"]) >= 5
    assert set(result["validation_seconds_by_batch"]) == {"256", "512", "1024"}
    assert result["validation_seconds"] == result["validation_seconds_by_batch"]["512"]
    assert "convolution backward" in proc.stdout and "validation of" in proc.stdout


def test_step_flops_counts_the_model_and_the_ceiling_is_a_rate():
    import numpy as np
    import torch

    from ferpipe.tools.bench.setup import Setup, matmul_tflops, step_flops
    from tests.fakedata import default_params

    labels = np.arange(16, dtype=np.int64) % 7
    s = Setup(default_params(train={"device": "cpu", "batch_size": 4}), labels, 0.5, 0.25)
    x = torch.randint(0, 256, (4, 48, 48), dtype=torch.uint8)
    # The default: 3x3 stem, 40-pixel crops; forward ~0.48 GFLOP, backward twice that.
    assert step_flops(s, x, torch.from_numpy(labels[:4])) == pytest.approx(1.44e9, rel=0.02)
    assert 0.001 < matmul_tflops(torch.device("cpu"), n=256, repeats=3) < 1000  # best of 3


def test_predict_latency_figures(tmp_path):
    from ferpipe.data.splits import CLASS_NAMES
    from ferpipe.model.checkpoint import save_checkpoint
    from ferpipe.model.network import build_model
    from ferpipe.tools.bench.cli import run
    from tests.fakedata import default_params

    checkpoint = tmp_path / "model.pt"
    arch = default_params(model={"stem": "standard"}).model
    save_checkpoint(checkpoint, build_model(arch), class_names=list(CLASS_NAMES),
                    mean=0.5, std=0.25, image_size=48, params={"model": arch.model_dump()})
    out = tmp_path / "latency.json"
    both = run(["--predict", "--model", str(checkpoint), "--repeats", "3", "--json", str(out)])
    assert json.loads(out.read_text()) == both
    assert sorted(both) == ["haar", "yunet"]  # the two detectors side by side by default
    for name, result in both.items():
        assert result["detector"] == name
        assert result["faces"] == 1 and result["photo"] == "640x480 JPEG"
        assert result["repeats"] == 3 and result["batch_faces"] == 8
        parts = sum(result[f"{k}_ms_median"] for k in ("decode", "detect", "classify"))
        assert 0 < result["detect_ms_median"] < result["total_ms_median"]
        assert abs(parts - result["total_ms_median"]) <= 0.5 * result["total_ms_median"]
    one = run(["--predict", "--model", str(checkpoint), "--repeats", "2", "--detector", "haar"])
    assert one["detector"] == "haar" and one["repeats"] == 2


def test_bench_builds_the_recipe_as_the_train_stage_does():
    """Model, optimizer and loss (class weights included) come from the train stage's builders."""
    import numpy as np
    import torch

    from ferpipe.tools.bench.setup import Setup
    from tests.fakedata import default_params

    params = default_params(model={"stem": "standard"},
                            train={"class_weights": "inverse_frequency", "optimizer": "sgd",
                                   "label_smoothing": 0.2, "device": "cpu"})
    labels = np.array([0, 0, 0, 1, 2, 3, 4, 5, 6], dtype=np.int64)
    s = Setup(params, labels, 0.5, 0.25)
    assert isinstance(s.optimizer, torch.optim.SGD) and s.optimizer.defaults["nesterov"]
    assert s.loss_fn.label_smoothing == 0.2
    torch.testing.assert_close(s.loss_fn.weight[:2], torch.tensor([9 / 21, 9 / 7]))


def test_console_entry_points_are_installed():
    bindir = Path(sys.executable).parent
    for command in ("ferpipe-bench", "ferpipe-predict"):
        proc = subprocess.run([str(bindir / command), "--help"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert f"usage: {command}" in proc.stdout
