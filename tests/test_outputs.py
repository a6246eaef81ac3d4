"""Nothing the user has is ever deleted: stages write only where params allow, replace only
their own folders, and write all their outputs or none."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferpipe.core.errors import OutputError, ParamsError
from ferpipe.core.outputs import MANIFEST, check_replaceable, output_conflicts, stage_outputs
from ferpipe.core.params import validate_params
from tests.fakedata import make_image_folders, make_zip
from tests.fakerepo import make_repo, sh

ROOT = Path(__file__).resolve().parents[1]


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def project(tmp_path):
    """A folder laid out as the project: params.yaml, data/fer2013.zip (a tiny archive) and a
    file of the user's in data/."""
    make_image_folders(tmp_path / "images", n_train=10, n_test=1)
    (tmp_path / "data").mkdir()
    make_zip(tmp_path / "images", tmp_path / "data/fer2013.zip")
    (tmp_path / "data/notes.txt").write_text("the user's own file")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path, params


def run_stage(folder: Path, stage: str, params: dict) -> subprocess.CompletedProcess:
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run([sys.executable, str(ROOT / f"stages/{stage}.py")], cwd=folder,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("key, value, message", [
    ("out", "data", "params.yaml: download.out: data holds download.local_archive "
                    "(data/fer2013.zip), which must never be written; expected a folder of its own"),
    ("out", ".", "params.yaml: download.out: . is the project folder or above it"),
    ("out", "..", "params.yaml: download.out: .. is the project folder or above it"),
    ("out", "data/fer2013.zip", "params.yaml: download.out: data/fer2013.zip is "
                                "download.local_archive (data/fer2013.zip)"),
    ("out", "data/prepared", "params.yaml: download.out: data/prepared overlaps prepare.out "
                             "(data/prepared)"),
])
def test_a_misdirected_download_output_is_refused_before_anything_happens(project, key, value,
                                                                           message):
    folder, params = project
    before = tree(folder)
    params["download"][key] = value
    proc = run_stage(folder, "download", params)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree(folder) == {**before, "params.yaml": tree(folder)["params.yaml"]}


def test_the_source_folder_as_output_is_refused(project):
    folder, params = project
    params["download"].update(source="data/raw", local_archive="none.zip")
    make_image_folders(folder / "data/raw", n_train=1, n_test=1)
    before = tree(folder / "data/raw")
    proc = run_stage(folder, "download", params)
    assert proc.returncode == 1
    assert "download.out: data/raw is download.source (data/raw)" in proc.stderr
    assert tree(folder / "data/raw") == before


def test_a_folder_with_the_users_files_is_never_replaced(project):
    folder, params = project
    (folder / "mine").mkdir()
    (folder / "mine/thesis.tex").write_text("two years of work")
    params["download"]["out"] = "mine"
    proc = run_stage(folder, "download", params)
    assert proc.returncode == 1
    assert proc.stderr == ("error: mine: holds files the download stage did not write (thesis.tex);"
                           " it is never replaced: move them away or choose another output "
                           "path\n")
    assert (folder / "mine/thesis.tex").read_text() == "two years of work"
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_a_stage_replaces_its_own_folder_and_says_so_in_a_manifest(project):
    folder, params = project
    for _ in range(2):  # the second run replaces the first run's folder
        proc = run_stage(folder, "download", params)
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in (folder / "data/raw").iterdir()) == [MANIFEST, "images.zip"]
    assert yaml.safe_load((folder / "data/raw" / MANIFEST).read_text()) == {
        "stage": "download", "files": ["images.zip"]}
    assert (folder / "data/notes.txt").exists()
    assert [p.name for p in (folder / "data").iterdir() if p.name.startswith(".")] == []
    # A folder written before manifests existed (only images.zip) is recognised too.
    (folder / "data/raw" / MANIFEST).unlink()
    assert run_stage(folder, "download", params).returncode == 0
    # Another stage's manifest does not make the folder the download stage's.
    (folder / "data/raw" / MANIFEST).write_text('{"stage": "plot", "files": ["images.zip"]}')
    with pytest.raises(OutputError, match="holds files the download stage did not write"):
        check_replaceable(folder / "data/raw", "download", {"images.zip"})


def test_every_folder_output_is_checked_for_overlaps():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, key, value, expected in [
            ("plot", "out", "metrics", "plot.out: metrics overlaps"),
            ("prepare", "out", "data/raw", "download.out: data/raw overlaps prepare.out"),
            ("prepare", "out", "data", "download.out: data/raw overlaps prepare.out (data)"),
            ("stats", "out", "data/prepared/stats.json", "prepare.out: data/prepared overlaps "
                                                         "stats.out"),
            ("train", "out", "data/raw", "download.out: data/raw overlaps train.out (model.pt)"),
            ("plot", "grid", "data/fer2013.zip", "plot.grid: data/fer2013.zip is "
                                                 "download.local_archive")]:
        changed = {**params, section: {**params[section], key: value}}
        with pytest.raises(ParamsError) as err:
            validate_params(changed, "params.yaml")
        assert f"params.yaml: {expected}" in str(err.value), str(err.value)


def test_output_conflicts_on_absolute_paths(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    assert output_conflicts([("a", str(root / "x"), True)], [], root) == []
    assert output_conflicts([("a", str(tmp_path), True)], [], root) == [
        f"a: {tmp_path} is the project folder or above it; expected a path inside it, such as "
        f"data/raw"]
    assert output_conflicts([("a", "out", True)], [("src", str(root / "out/in.zip"))], root) == [
        f"a: out holds src ({root / 'out/in.zip'}), which must never be written; expected a "
        f"folder of its own"]


def test_all_outputs_or_none(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/a.npz").write_text("old")
    (tmp_path / "metrics.json").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with stage_outputs() as outs:
            folder = outs.folder(tmp_path / "out", "prepare", {"a.npz"})
            (folder / "a.npz").write_text("new")
            outs.file(tmp_path / "metrics.json").write_text("new")
            raise RuntimeError("boom")
    assert (tmp_path / "out/a.npz").read_text() == "old"
    assert (tmp_path / "metrics.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.npz", "metrics.json", "out"]
    with stage_outputs() as outs:
        (outs.folder(tmp_path / "out", "prepare", {"a.npz"}) / "a.npz").write_text("new")
        outs.file(tmp_path / "metrics.json").write_text("new")
    assert (tmp_path / "out/a.npz").read_text() == "new"
    assert (tmp_path / "metrics.json").read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
    assert sorted(p.name for p in tmp_path.rglob("*")) == [MANIFEST, "a.npz", "metrics.json",
                                                          "out"]


def test_prepare_writes_nothing_when_its_metrics_cannot_be_written(project):
    folder, params = project
    assert run_stage(folder, "download", params).returncode == 0
    assert run_stage(folder, "prepare", params).returncode == 0
    before = tree(folder / "data/prepared")
    (folder / "metrics/data.json").unlink()
    (folder / "metrics/data.json").mkdir()  # the metrics file cannot be replaced
    params["prepare"]["seed"] = 7  # another val carve-out: new arrays
    proc = run_stage(folder, "prepare", params)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: metrics/data.json: ")
    assert tree(folder / "data/prepared") == before
    assert not [p for p in folder.rglob(".*tmp*")]


def test_dvc_repro_keeps_the_users_files_in_a_misdirected_output(tmp_path):
    """DVC deletes a stage's outputs before running it, unless they persist: the folder outputs
    persist, so the stage itself decides, and refuses."""
    make_image_folders(tmp_path / "images", n_train=2, n_test=1)
    archive = make_zip(tmp_path / "images", tmp_path / "fer.zip")
    repo = tmp_path / "repo"
    env = make_repo(repo, archive, download={"out": "data/mine"}, prepare={"raw": "data/mine"})
    (repo / "data/mine").mkdir(parents=True)
    (repo / "data/mine/thesis.tex").write_text("two years of work")
    proc = subprocess.run(["dvc", "repro", "download"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0
    assert "error: data/mine: holds files the download stage did not write (thesis.tex)" in (
        proc.stdout + proc.stderr)
    assert (repo / "data/mine/thesis.tex").read_text() == "two years of work"
    sh(["dvc", "status"], repo, env)


def test_a_failed_rename_at_the_end_leaves_no_temp_files(tmp_path):
    (tmp_path / "metrics.json").mkdir()  # appears after the stage checked it: the rename fails
    with pytest.raises(OutputError, match="metrics.json: cannot write"):
        with stage_outputs() as outs:
            (outs.folder(tmp_path / "out", "prepare", {"a.npz"}) / "a.npz").write_text("new")
            outs.file(tmp_path / "ok.json").write_text("new")
            target = outs.file(tmp_path / "other.json")
            target.write_text("new")
            outs._files[-1] = (target, tmp_path / "metrics.json")
    # the folder was swapped in before the failure and stays; nothing temporary is left
    assert (tmp_path / "out/a.npz").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "ok.json", "out"]


def test_a_full_disk_or_file_size_limit_is_one_line_and_the_old_outputs_stay(tmp_path):
    """Each data stage run under RLIMIT_FSIZE (Python ignores SIGXFSZ, so writes fail with
    EFBIG, as on a full disk): one error line naming the output and the reason, no temp file
    left, and the outputs of the run before byte for byte as they were."""
    import resource

    from tests.fakedata import ROOT as root
    from tests.fakedata import stage_folder

    env = stage_folder(tmp_path, n_train=14, n_test=4)

    def stage(name, limit=None):
        def cap():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return subprocess.run([sys.executable, str(root / "stages" / f"{name}.py")],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              preexec_fn=cap if limit else None, timeout=300)

    def snapshot():
        return {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*")
                if p.is_file() and "images" not in p.parts}

    for name in ("download", "prepare", "stats"):
        assert stage(name).returncode == 0
    before = snapshot()
    for name, output in (("download", "data/raw"), ("prepare", "data/prepared"),
                         ("stats", "data/stats.json")):
        proc = stage(name, limit=40 if name == "stats" else 60_000)
        assert proc.returncode == 1, (name, proc.stderr)
        assert proc.stderr.strip() == (
            f"error: {output}: cannot write: File too large (errno EFBIG); nothing was "
            f"replaced, the previous outputs are as they were"), (name, proc.stderr)
        assert snapshot() == before, name  # old outputs whole, no temp file left


def test_a_full_disk_in_the_model_stages_is_one_line_and_keeps_what_it_should(tmp_path):
    """train, evaluate and plot under RLIMIT_FSIZE: a limit below the size of the SQLite MLflow
    store fails its first write, one below a checkpoint's size fails that file. Each case is one
    line; where an output failed, nothing was replaced; where only the MLflow logging failed at
    the end, the line says the outputs are written and how to log them."""
    import resource

    from tests.fakedata import ROOT as root
    from tests.fakedata import stage_folder

    env = stage_folder(tmp_path, n_train=14, n_test=4)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"].update(epochs=1, batch_size=4, device="cpu")
    params["model"].update(stem="standard")  # 45 MB checkpoint, 20x the MLflow store; quick
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def stage(name, limit=None):
        def cap():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        proc = subprocess.run([sys.executable, str(root / "stages" / f"{name}.py")],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              preexec_fn=cap if limit else None, timeout=600)
        return proc.returncode, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""

    def snapshot():  # every file but the images and the SQLite store (and its journal)
        return {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*")
                if p.is_file() and "images" not in p.parts and not p.name.startswith("mlflow.db")}

    for name in ("download", "prepare", "stats", "train", "evaluate", "plot"):
        assert stage(name)[0] == 0, name
    db = (tmp_path / "mlflow.db").stat().st_size
    model = (tmp_path / "models/model.pt").stat().st_size
    biggest = max((tmp_path / "metrics/astronaut.png").stat().st_size,
                  (tmp_path / "metrics/predictions.png").stat().st_size)
    assert biggest + 50_000 < db < model - 100_000  # the limits below fall between them
    store = f"MLflow store {tmp_path / 'mlflow.db'} (MLFLOW_TRACKING_URI not set)"
    kept = "nothing was replaced, the previous outputs are as they were"
    before = snapshot()
    for name, limit, line in (
            ("train", db // 2, f"error: {store}: cannot start the run: disk I/O error; nothing "
                               f"was trained"),
            ("train", model - 1, f"error: models/model.pt: cannot write: File too large (errno "
                                 f"EFBIG); {kept}"),
            ("train", model * 3 // 2, f"error: models/resume.pt: cannot write: File too large "
                                      f"(errno EFBIG); training stopped after epoch 1, {kept}"),
            ("evaluate", 50_000, f"error: metrics/astronaut.png: cannot write: File too large "
                                 f"(errno EFBIG); {kept}"),
            ("plot", 50_000, f"error: metrics/plots: cannot write: File too large "
                             f"(errno EFBIG); {kept}")):
        assert stage(name, limit) == (1, line), (name, limit)
        assert snapshot() == before, (name, limit)  # old outputs whole, no temp file left
    # Outputs written, the MLflow store full: the line says so and how to log them again
    for name, what in (("evaluate", "the evaluation was"), ("plot", "the plots were")):
        code, line = stage(name, (biggest + db) // 2)
        assert (code, line) == (1, f"error: {store}: {what} not logged into the run: disk I/O "
                                   f"error; the outputs are written; run `dvc repro {name}` "
                                   f"again to log them"), name
    # ... and running them again logs them: the store is whole after the failed writes
    import mlflow

    run_id = json.loads((tmp_path / "models/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ("evaluate", "plot"):
        assert stage(name)[0] == 0, name
    for folder, expected in (("eval", "eval/eval.json"), ("plots", "plots/accuracy.png")):
        assert expected in {a.path for a in client.list_artifacts(run_id, folder)}
    assert client.get_run(run_id).data.metrics["summary/test_accuracy"] >= 0
