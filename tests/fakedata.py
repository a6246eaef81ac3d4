"""Generate a tiny FER2013-like dataset (48x48 grayscale JPEGs, Kaggle layout) for tests."""

from __future__ import annotations

import csv
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ferpipe.core.params import Params, validate_params
from ferpipe.data.splits import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[1]


def face_like(label: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A uint8 (size, size) image whose bright horizontal band sits at a class-dependent row."""
    img = rng.normal(90, 20, (size, size))
    row = 4 + label * 6
    img[row:row + 5, 6:-6] += 120
    return np.clip(img, 0, 255).astype(np.uint8)


def learnable_face(label: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A uint8 (size, size) image whose overall brightness (30 + 30 x label) and a bright band's
    row both depend on the class: a signal that survives the training crops, flips and jitter, so
    a model learns it in a few epochs (the end-to-end tests check it scores far above chance)."""
    img = rng.normal(30 + 30 * label, 8, (size, size))
    row = 4 + label * 6
    img[row:row + 5, 6:-6] += 60
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folders(root: Path, n_train: int = 24, n_test: int = 8, seed: int = 0,
                       class_dirs: dict[str, str] | None = None,
                       image: Callable[[int, np.random.Generator], np.ndarray] = face_like
                       ) -> dict[str, int]:
    """Write `root/{train,test}/<class>/*.jpg`, each made by `image(label, rng)`; `class_dirs`
    renames class folders (e.g. Angry).

    Returns the image count per split.
    """
    rng = np.random.default_rng(seed)
    counts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        counts[split] = 0
        for label, cls in enumerate(CLASS_NAMES):
            folder = root / split / (class_dirs or {}).get(cls, cls)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(image(label, rng)).save(folder / f"{split}_{cls}_{i}.jpg")
                counts[split] += 1
    return counts


def make_zip(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    """Zip every file under `folder` into `zip_path` (member names prefixed with `prefix`)."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + f.relative_to(folder).as_posix())
    return zip_path


def make_tar(folder: Path, tar_path: Path, prefix: str = "") -> Path:
    """Tar (gzip-compressed when the name ends in .gz) every file under `folder` into `tar_path`."""
    with tarfile.open(tar_path, "w:gz" if tar_path.suffix == ".gz" else "w") as tf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                tf.add(f, prefix + f.relative_to(folder).as_posix())
    return tar_path


def stage_folder(folder: Path, n_train: int, n_test: int) -> dict[str, str]:
    """A folder to run the stage scripts in: a tiny archive at data/fer2013.zip (made from
    `folder/images`) and the project's params.yaml (distillation off); returns the environment that runs them
    (`PYTHONPATH` at this checkout, no MLFLOW_TRACKING_URI: the stages log to the folder's own
    default store, whatever an earlier test left in the environment)."""
    import os

    make_image_folders(folder / "images", n_train=n_train, n_test=n_test)
    (folder / "data").mkdir()
    make_zip(folder / "images", folder / "data" / "fer2013.zip")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # the committed teacher targets belong to the real FER2013 train split, not this one
    params["train"].update({"teacher": None, "distill_weight": 0.0})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": str(ROOT)}


def write_fer2013_csv(path: Path, rows: list[tuple[int | str, np.ndarray | str, str]]) -> Path:
    """Write a challenge-style CSV (`emotion,pixels,Usage`) with one line per (emotion, pixels,
    usage) row; `pixels` is a uint8 (48, 48) array (written as 2304 space-separated ints) or the
    raw text to write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["emotion", "pixels", "Usage"])
        for emotion, pixels, usage in rows:
            text = pixels if isinstance(pixels, str) else " ".join(map(str, pixels.ravel()))
            writer.writerow([emotion, text, usage])
    return path


def default_params(**sections: dict) -> Params:
    """The project's params.yaml, validated, with `section={"key": value}` updates applied first
    (e.g. `default_params(augment={"erasing": 0.5}).augment`)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in sections.items():
        raw[section].update(values)
    return validate_params(raw)


#: Training images per class (CLASS_NAMES order) written into the test checkpoints: FER2013's
#: train split's imbalance, so the logit adjustment (its prior) changes their probabilities.
TRAIN_COUNTS = [3995, 436, 4097, 7215, 4965, 4830, 3171]


def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-weight ResNet18 checkpoint (standard stem, 48-pixel images, mean 0.5, std 0.25,
    class counts `TRAIN_COUNTS`) at `path`: what the predict and serving tests classify with."""
    import torch

    from ferpipe.model.checkpoint import save_checkpoint
    from ferpipe.model.network import build_model

    torch.manual_seed(seed)
    arch = default_params(model={"stem": "standard"}).model
    save_checkpoint(path, build_model(arch), class_names=list(CLASS_NAMES),
                    mean=0.5, std=0.25, image_size=48, params={"model": arch.model_dump()},
                    extra={"class_counts": TRAIN_COUNTS})
    return path


def help_blocks(module: str) -> dict[str, str]:
    """{option as `python -m module --help` lists it (e.g. `--every N`): its help text}, from
    the options section, -h/--help left out."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    blocks: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        if line.startswith("  -"):
            name, _, text = line.strip().partition("  ")
            name = name.split(", ")[-1]
            blocks[name] = text.strip()
        elif name:
            blocks[name] += " " + line.strip()
    blocks.pop("--help", None)
    return blocks
