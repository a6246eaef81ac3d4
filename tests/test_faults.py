"""Faults a team meets: a killed training run, parallel queued experiments, sharing through a remote."""

import contextlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from tests.fakedata import make_image_folders, make_zip
from tests.fakerepo import make_repo, read_csv, sh, store_runs

# End to end: each test starts real DVC, MLflow or server processes; longer than the default limit
pytestmark = pytest.mark.timeout(1800)

EPOCHS = 6


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A repo with data prepared (download, prepare, stats), set for a 6-epoch training run of a
    few seconds per epoch; never trained in. Each test gets its own copy (`repo`)."""
    tmp = tmp_path_factory.mktemp("faults")
    make_image_folders(tmp / "images", n_train=40, n_test=6)
    archive = make_zip(tmp / "images", tmp / "fer_tiny.zip")
    path = tmp / "template"
    env = make_repo(path, archive, model={"stem": "standard"},
                    train={"epochs": EPOCHS, "batch_size": 16}, plot={"grid_images": 4})
    sh(["dvc", "repro", "stats"], path, env)
    return {"path": path, "env": env}


@pytest.fixture()
def repo(prepared, tmp_path):
    """A copy of the prepared repo (git, DVC cache and outputs) for this test alone, so that every
    test starts from data prepared and nothing trained, whatever ran before it."""
    path = tmp_path / "repo"
    shutil.copytree(prepared["path"], path, symlinks=True)
    return {"path": path, "env": prepared["env"], "tmp": tmp_path}


def train_processes(parent: psutil.Process, timeout: float = 120) -> list[psutil.Process]:
    """The processes running the train stage (`-m stages.train`) under `parent`: the Python
    process, and the shell DVC starts it with where that shell forks rather than execs (dash as
    /bin/sh does)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found, python = [], False
        for child in parent.children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if any("stages.train" in part for part in cmdline):
                found.append(child)
                python = python or "python" in Path(cmdline[0]).name
        if python:
            return found
        time.sleep(0.1)
    raise AssertionError("the train stage did not start")


def kill_training_mid_run(r: Path, env: dict) -> tuple[int, str]:
    """Run `dvc repro` in `r` until the train stage has written a resume checkpoint after epoch 2
    or later, then kill the train processes. Returns (the last completed epoch, DVC's output);
    DVC has exited with an error by then. Nothing stays stopped or running, pass or fail."""
    resume_file = r / "models/resume.pt"
    dvc = subprocess.Popen(["dvc", "repro"], cwd=r, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    train: list[psutil.Process] = []
    try:
        train = train_processes(psutil.Process(dvc.pid))
        deadline = time.time() + 300
        seen = None
        while time.time() < deadline:  # wait for a checkpoint after epoch 2 or later
            try:
                stat = resume_file.stat()
            except FileNotFoundError:
                stat = None
            if stat is not None and (stat.st_ino, stat.st_mtime_ns) != seen:
                seen = (stat.st_ino, stat.st_mtime_ns)
                if torch.load(resume_file, weights_only=True)["epoch"] >= 2:
                    break
            time.sleep(0.01)
        else:
            raise AssertionError("no checkpoint after epoch 2")
        # Freeze the run where it is (on a fast machine an epoch takes well under a second), read
        # the last completed epoch, then kill it: the kill lands mid-run, whatever the speed.
        for process in train:
            process.send_signal(signal.SIGSTOP)
        assert resume_file.exists(), "training finished before it could be stopped"
        done = torch.load(resume_file, weights_only=True)["epoch"]
        assert 2 <= done < EPOCHS
        for process in train:
            process.send_signal(signal.SIGKILL)
        out = dvc.communicate(timeout=120)[0]
    finally:  # pass or fail, nothing stays stopped or running: the train processes, then DVC
        for process in train:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        dvc.kill()
        dvc.wait(timeout=60)
    assert dvc.returncode != 0, out
    return done, out


def test_killed_training_resumes_from_the_last_completed_epoch(repo):
    r, env = repo["path"], repo["env"]
    resume_file = r / "models/resume.pt"
    done, out = kill_training_mid_run(r, env)
    state = torch.load(resume_file, weights_only=True)
    assert state["epoch"] == done
    run_id = state["extra"]["run_id"]
    # All outputs or none: the killed stage left its earlier outputs, not half of new ones.
    assert not (r / "models/mlflow_run.json").exists() and not (r / "models/model.pt").exists()

    out = sh(["dvc", "repro"], r, env)
    assert f"resuming after epoch {done}/{EPOCHS}" in out
    assert "epoch 1:" not in out and f"epoch {done + 1}:" in out
    history = read_csv(r / "metrics/history.csv")
    assert [int(row["epoch"]) for row in history] == list(range(1, EPOCHS + 1))
    train_json = json.loads((r / "metrics/train.json").read_text())
    assert train_json["epochs"] == EPOCHS and train_json["resumed_after_epoch"] == done
    steps_per_epoch = len(read_csv(r / "metrics/lr.csv")) // EPOCHS
    assert len(read_csv(r / "metrics/lr.csv")) == EPOCHS * steps_per_epoch
    assert not resume_file.exists()  # removed once training finished
    ckpt = torch.load(r / "models/model.pt", weights_only=True)
    assert ckpt["epoch"] == train_json["best_epoch"]

    client, runs = store_runs(r)
    assert [run.info.run_id for run in runs] == [run_id]  # the same MLflow run, continued
    assert runs[0].info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run_id, "epoch/val_accuracy")})
    assert steps == list(range(1, EPOCHS + 1))
    assert "summary/test_accuracy" in runs[0].data.metrics
    assert "up to date" in sh(["dvc", "status"], r, env)


def test_a_checkpoint_from_other_params_is_not_resumed(repo):
    r, env = repo["path"], repo["env"]
    params = (r / "params.yaml").read_text()
    # Leave a checkpoint of the current params behind, then change a param.
    resume_file = r / "models/resume.pt"
    resume_file.parent.mkdir(exist_ok=True)
    torch.save({"fingerprint": "something else", "epoch": 3}, resume_file)
    out = sh(["dvc", "repro", "-f", "train"], r, env)
    assert "not resumed, starting over" in out and "resuming" not in out
    assert "epoch 1:" in out
    assert (r / "params.yaml").read_text() == params
    assert not resume_file.exists()


def test_two_queued_experiments_run_at_once_and_both_reach_mlflow(repo):
    r, env = repo["path"], repo["env"]
    sh(["git", "add", "-A"], r, env)
    sh(["git", "commit", "-qm", "baseline"], r, env)
    _, before = store_runs(r)
    for lr in ("0.001", "0.002"):
        sh(["dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}", "-S", "train.epochs=2"], r, env)
    # `dvc queue start` leaves a daemon that waits for its workers; with the output captured,
    # a worker that never exits (dvc-task's monitor can shut one down mid-task, then it hangs
    # after the task) would hold the pipe and hang the test, so the daemon gets no pipe.
    try:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=r, env=env, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=300)
        deadline = time.time() + 900
        while time.time() < deadline:
            status = sh(["dvc", "queue", "status"], r, env)
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(3)
        else:
            raise AssertionError(f"queue did not finish:\n{status}")
    finally:  # pass or fail, no queue worker outlives the test
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=r, env=env, capture_output=True,
                       timeout=120)
    assert status.count("Success") == 2, status
    for line in status.splitlines():
        if "Success" in line:
            logs = sh(["dvc", "queue", "logs", line.split()[0]], r, env)
            assert "database is locked" not in logs and "Traceback" not in logs

    client, runs = store_runs(r)
    new = [run for run in runs if run.info.run_id not in {b.info.run_id for b in before}]
    assert sorted(run.data.params["train.lr"] for run in new) == ["0.001", "0.002"]
    for run in new:
        assert run.info.status == "FINISHED" and "summary/test_accuracy" in run.data.metrics
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_accuracy")]
        assert steps == [1, 2]
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], r, env, stdout_only=True))
    lrs = {rev["data"]["params"]["params.yaml"]["data"]["train"]["lr"]
           for baseline in shown for exp in baseline.get("experiments") or []
           for rev in exp["revs"] if rev["data"].get("metrics")}
    assert {0.001, 0.002} <= lrs


def test_push_then_pull_into_a_fresh_clone_restores_data_and_model_byte_for_byte(repo):
    r, env, tmp = repo["path"], repo["env"], repo["tmp"]
    sh(["dvc", "repro"], r, env)
    assert "up to date" in sh(["dvc", "status"], r, env)
    sh(["dvc", "remote", "add", "-d", "shared", str(tmp / "remote")], r, env)
    sh(["git", "add", "-A"], r, env)
    sh(["git", "commit", "-qm", "remote"], r, env)
    sh(["dvc", "push"], r, env)
    clone = tmp / "clone"
    sh(["git", "clone", "-q", str(r), str(clone)], tmp, env)
    outputs = ["data/raw/images.zip", "data/prepared/train.npz", "data/prepared/val.npz",
               "data/prepared/test.npz", "data/stats.json", "models/model.pt",
               "models/mlflow_run.json", "metrics/predictions.png"]
    assert not any((clone / path).exists() for path in outputs)
    sh(["dvc", "pull"], clone, env)
    for path in outputs:
        assert (clone / path).read_bytes() == (r / path).read_bytes(), path
    assert "up to date" in sh(["dvc", "status"], clone, env)


def test_a_killed_prepare_leaves_no_decoding_worker_running(tmp_path):
    """SIGKILL of the prepare stage (the OOM killer, a CI timeout, kill -9 of dvc repro) used to
    leave its decoding workers running, idle, for hours; they now end with it."""
    import sys

    from tests.fakedata import ROOT as root
    from tests.fakedata import stage_folder

    env = stage_folder(tmp_path, n_train=300, n_test=10)
    subprocess.run([sys.executable, str(root / "stages" / "download.py")], cwd=tmp_path,
                   env=env, check=True, capture_output=True, timeout=600)
    stage = subprocess.Popen([sys.executable, str(root / "stages" / "prepare.py")],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    parent = psutil.Process(stage.pid)
    workers: list[psutil.Process] = []
    deadline = time.time() + 120
    while not workers and time.time() < deadline and stage.poll() is None:
        workers = parent.children(recursive=True)
        time.sleep(0.02)
    assert workers, "the prepare stage finished before its workers could be seen"
    stage.send_signal(signal.SIGKILL)
    stage.wait(timeout=60)
    survivors = workers
    deadline = time.time() + 10
    while survivors and time.time() < deadline:
        time.sleep(0.2)
        survivors = [w for w in workers if w.is_running()
                     and w.status() != psutil.STATUS_ZOMBIE]
    assert not survivors, [w.pid for w in survivors]


def test_with_resume_off_training_starts_over_and_writes_no_checkpoint(repo):
    """`train.resume: false`: the checkpoint a killed run of the same params and data left is
    not resumed from (training starts at epoch 1) and no checkpoint is written or removed."""
    r, env = repo["path"], repo["env"]
    resume_file = r / "models/resume.pt"
    done, _ = kill_training_mid_run(r, env)
    left = resume_file.read_bytes()
    params = yaml.safe_load((r / "params.yaml").read_text())
    params["train"]["resume"] = False
    (r / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro", "train"], r, env)
    assert "resuming" not in out and "epoch 1:" in out and f"epoch {EPOCHS}:" in out
    train_json = json.loads((r / "metrics/train.json").read_text())
    assert train_json["epochs"] == EPOCHS and train_json["resumed_after_epoch"] == 0
    assert len(read_csv(r / "metrics/history.csv")) == EPOCHS
    assert resume_file.read_bytes() == left  # the killed run's, untouched: none written
    assert torch.load(resume_file, weights_only=True)["epoch"] == done
