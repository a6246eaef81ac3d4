"""The package as users install it: a wheel built from the repo holds every sub-package and the
released model, and its `ferpipe-predict` labels a photo with that model, outside the repo."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


#: What building the wheel reads from the repo.
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "ferpipe"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the repo's sources (setuptools writes build/ and
    *.egg-info/ beside the sources: not into the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (ROOT / name).is_dir() else {}))
    # --no-build-isolation: the build uses this environment's setuptools, so no network is needed
    subprocess.run([PYTHON, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(source)], check=True, timeout=300, cwd=tmp)
    (found,) = (tmp / "dist").glob("ferpipe-*.whl")
    return found


def test_the_wheel_holds_every_module_and_the_released_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ferpipe").rglob("*.py")}
    assert len(modules) > 40 and modules <= names, sorted(modules - names)
    for sub in ("core", "data", "model", "train", "evaluate", "predict", "serve", "tools",
                "tools/bench"):
        assert f"ferpipe/{sub}/__init__.py" in names
    released = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ferpipe/released").iterdir()}
    assert {"ferpipe/released/model.onnx", "ferpipe/released/model.json"} <= released <= names


def test_the_installed_wheel_predicts_a_photo_with_the_released_model(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, timeout=300)
    work = tmp_path / "work"  # no models/model.pt here: the released model must be used
    work.mkdir()
    Image.fromarray(skdata.astronaut()).save(work / "astronaut.png")
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel's copy before the editable install
    proc = subprocess.run([PYTHON, str(site / "bin" / "ferpipe-predict"), "astronaut.png", "--json"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    model = site / "ferpipe" / "released" / "model.onnx"
    assert f"model: the released model {model}" in proc.stderr
    faces = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(faces) == 1 and faces[0]["expression"] == "happy", faces
