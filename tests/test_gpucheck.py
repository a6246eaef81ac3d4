"""The GPU check runs end to end on the CPU in its smoke mode, with tiny generated data, so it
cannot rot before a GPU runs it; a missing package or a failing part is one line."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.fakedata import make_image_folders, make_zip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpucheck")
    make_image_folders(tmp / "images", n_train=12, n_test=4)
    return make_zip(tmp / "images", tmp / "fer2013.zip")


def check(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferpipe.tools.gpucheck", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_smoke_runs_every_part_and_writes_its_figures(archive, tmp_path):
    proc = check(tmp_path, "--archive", str(archive), "--smoke", "--wheels",
                 str(tmp_path / "none"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert report["failed"] == [] and set(parts) == {"env", "data", "bench", "baseline",
                                                      "syncs", "train"}
    assert parts["env"]["device"] == "cpu" and parts["env"]["compile_auto"] is None
    assert set(parts["data"]["stage_seconds"]) == {"download", "prepare", "stats", "total"}
    bench = parts["bench"]
    assert bench["ceiling_tflops"] > 0
    old, new = bench["variants"]
    assert old["fused"] is False and new["fused"] is True
    for row in (old, new):
        assert row["pipeline_images_per_s"] > 0 and row["epoch_seconds_estimate"] > 0
    assert parts["baseline"]["baseline_images_per_s"] > 0
    assert "not CUDA" in parts["syncs"]["skipped"]
    train = parts["train"]
    assert train["epochs"] == len(train["history"]) >= 1
    # one epoch of a smoke run need not learn; its accuracy is a count over the 28 test images
    assert train["test_images"] == 7 * 4
    correct = train["test_accuracy"] * train["test_images"]
    assert 0 <= correct <= 28 and correct == pytest.approx(round(correct), abs=1e-6)
    assert 1 <= train["best_epoch"] <= train["epochs"]
    log = (tmp_path / "gpu_check.log").read_text()
    assert "--- train" in log and "all parts ran" in log


def test_wheels_are_unpacked_first_on_the_path(tmp_path):
    """A wheel is a zip of importable files: the check unpacks it and imports from it, ahead of
    anything else of that name (here a package that refuses to import)."""
    from ferpipe.tools.gpucheck import use_wheels

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "ferpipe_probe-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("ferpipe_probe/__init__.py", "VALUE = 42\n")
    saved_path, saved_env = list(sys.path), os.environ.get("PYTHONPATH")
    try:
        assert use_wheels(wheels, tmp_path / "site") == ["ferpipe_probe-1.0-py3-none-any.whl"]
        import ferpipe_probe

        assert ferpipe_probe.VALUE == 42 and sys.path[0] == str(tmp_path / "site")
        assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "site")
    finally:
        sys.path[:] = saved_path
        sys.modules.pop("ferpipe_probe", None)
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env


def test_a_missing_package_is_one_line_naming_it(archive, tmp_path):
    blocker = tmp_path / "blocker" / "pydantic"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not on this machine')\n")
    proc = check(tmp_path / "out", "--archive", str(archive), "--smoke", "--wheels",
                 str(tmp_path / "none"), env={"PYTHONPATH": str(blocker.parent)})
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "package pydantic" in lines[0]
    assert "scripts/gpu_wheels.sh" in lines[0]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["missing_packages"][0].startswith("pydantic")


def test_a_failing_part_is_one_line_and_recorded(tmp_path):
    proc = check(tmp_path, "--archive", str(tmp_path / "missing.zip"), "--smoke", "--wheels",
                 str(tmp_path / "none"))
    assert proc.returncode == 1
    assert ("error: gpucheck data: FileNotFoundError: " + str(tmp_path / "missing.zip")
            ) in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failed"] == ["data"] and "error" in report["parts"]["data"]
    assert report["parts"]["env"]["device"] == "cpu"  # the parts before it kept their figures
    assert "Traceback" in (tmp_path / "gpu_check.log").read_text()  # the log has the detail


def test_the_check_and_every_module_it_imports_load_without_mlflow_dvc_onnx_or_opencv(tmp_path):
    """The GPU machine has only torch, torchvision, numpy and a few more: every package module the
    check reaches (its imports inside functions included) must import with MLflow, DVC, ONNX and
    OpenCV absent. (lint-imports checks the same statically; this runs the imports.)"""
    from ferpipe.core.codedeps import package_modules

    root = Path(__file__).resolve().parents[1]
    check_file = root / "ferpipe" / "tools" / "gpucheck.py"
    modules = [".".join(p.relative_to(root).with_suffix("").parts)
               for p in [check_file, *package_modules(check_file)]]
    assert "ferpipe.tools.bench.step" in modules and "ferpipe.train.fit" in modules
    blockers = tmp_path / "blockers"
    for name in ("mlflow", "dvc", "onnx", "onnxruntime", "onnxscript", "cv2"):
        (blockers / name).mkdir(parents=True)
        (blockers / name / "__init__.py").write_text(f"raise ImportError('{name} is absent')\n")
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    proc = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(blockers)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
