"""A team's setup, as docs/team.md gives it, run block by block with real parts: a PostgreSQL
server (Debian's `postgresql` package) and an `mlflow server` on it with proxied artifacts, the
tiny pipeline as two queued experiments at once pointing at it, a DVC remote, and `mlflow models
serve` of the registered alias through the server; the same on an `mlflow server` on SQLite; and
the failures a team meets (server down at the start, gone mid-run, wrong database password).

Without PostgreSQL's binaries the PostgreSQL tests skip, unless FERPIPE_REQUIRE_POSTGRES is set
(CI sets it, and installs the package), when they fail instead."""

from __future__ import annotations

import base64
import glob
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from PIL import Image
from skimage import data as skdata

from tests.fakedata import make_image_folders, make_zip
from tests.fakerepo import ROOT, make_repo, sh
from tests.servers import free_port, server_on

# End to end: each test starts real DVC, MLflow or server processes; longer than the default limit
pytestmark = pytest.mark.timeout(1800)

DOC = ROOT / "docs" / "team.md"
PASSWORD = "team-secret-7"
EXPERIMENT = "fer2013-resnet18"


def doc_blocks() -> dict[str, str]:
    """docs/team.md's shell blocks by name: a fence opened with "```bash <name>"."""
    text = DOC.read_text()
    return {m.group(1): m.group(2) for m in
            re.finditer(r"^```bash (\S+)\n(.*?)^```$", text, flags=re.M | re.S)}


def run_block(name: str, env: dict, cwd: Path, timeout_s: float = 300) -> str:
    """Run docs/team.md's block `name` with bash (errexit, pipefail); its stdout."""
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", doc_blocks()[name]], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
    return proc.stdout


def block_env(name: str, env: dict) -> dict:
    """The environment after docs/team.md's block `name` ran in bash (for its exports)."""
    script = doc_blocks()[name] + "\nenv -0"
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, check=True,
                         capture_output=True, timeout=60).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL server binary: Debian's /usr/lib/postgresql/<version>/bin, else PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@contextmanager
def postgres_server():
    """A throwaway PostgreSQL cluster on a loopback port: local (socket) connections trusted
    for the superuser `postgres`, TCP connections by password (scram-sha-256). Run as the
    `postgres` system user when the tests run as root (the server refuses root). Yields the
    libpq environment of a superuser session (PGHOST = the socket folder, PGPORT, PGUSER)."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("FERPIPE_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    folder = Path(tempfile.mkdtemp(prefix="ferpipe-pg-"))  # /tmp: reachable by that user
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data, log = folder / "data", folder / "server.log"
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256"], check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield {"PGHOST": str(folder), "PGPORT": str(port), "PGUSER": "postgres"}
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def api(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """GET (or POST `body` to) the tracking server's REST API `endpoint` with `query`."""
    address = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        address += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(address, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture()
def team(tmp_path):
    """A tiny-pipeline repo with its data prepared, folders for a server and a DVC remote, and
    the variables docs/team.md's blocks read."""
    make_image_folders(tmp_path / "images", n_train=40, n_test=6)
    archive = make_zip(tmp_path / "images", tmp_path / "fer_tiny.zip")
    repo = tmp_path / "repo"
    env = make_repo(repo, archive, model={"arch": "small_cnn"},  # the quickest model to train
                    train={"epochs": 2, "batch_size": 16}, plot={"grid_images": 4})
    sh(["dvc", "repro", "stats"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "data"], repo, env)
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    env.update(SERVER_HOST="127.0.0.1", SERVER_PORT=str(free_port()),
               SERVER_DIR=str(server_dir), ARTIFACTS=str(server_dir / "artifacts"),
               DVC_REMOTE=str(tmp_path / "remote"), SERVE_PORT=str(free_port()),
               MLFLOW_DB_PASSWORD=PASSWORD)
    return {"repo": repo, "env": env, "tmp": tmp_path, "server_dir": server_dir}


def fresh_ports(env: dict) -> None:
    """Free loopback ports for docs/team.md's tracking server and served model, picked just
    before a test starts them (a port picked minutes earlier may have been taken meanwhile)."""
    env.update(SERVER_PORT=str(free_port()), SERVE_PORT=str(free_port()))


def wait_for_queue(repo: Path, env: dict, timeout_s: float = 900) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = sh(["dvc", "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(3)
    raise AssertionError(f"queue did not finish:\n{status}")


def check_team_flow(team: dict, server_block: str, serve: bool = True) -> None:
    """docs/team.md from the server on: start it, point the clients at it, push to the remote,
    run two queued experiments at once, check both runs through the REST API, serve the alias
    (when `serve`)."""
    repo, env = team["repo"], team["env"]
    fresh_ports(env)
    port = int(env["SERVER_PORT"])
    artifacts = Path(env["ARTIFACTS"])
    with server_on(["bash", "-euo", "pipefail", "-c", doc_blocks()[server_block]], port,
                   "/health", team["server_dir"], env) as url:
        client = block_env("client", env)
        assert client["MLFLOW_TRACKING_URI"] == url
        run_block("remote", client, repo)
        assert list(Path(env["DVC_REMOTE"]).rglob("*"))  # the prepared data went up
        # `dvc queue start` leaves a daemon: it gets no pipe (see test_faults), so the block
        # runs with its output in a file
        try:
            with open(team["tmp"] / "queue.log", "w") as log:
                subprocess.run(["bash", "-euo", "pipefail", "-c", doc_blocks()["experiments"]],
                               cwd=repo, env=client, check=True, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT, timeout=300)
            status = wait_for_queue(repo, client)
        finally:  # pass or fail, no queue worker outlives the test
            subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=client,
                           capture_output=True, timeout=120)
        assert status.count("Success") == 2, status

        experiment = api(url, "experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
        assert experiment["artifact_location"].startswith("mlflow-artifacts:")
        runs = api(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert len(runs) == 2
        lrs = []
        for run in runs:
            info, data = run["info"], run["data"]
            params = {p["key"]: p["value"] for p in data["params"]}
            metrics = {m["key"]: m["value"] for m in data["metrics"]}
            lrs.append(params["train.lr"])
            assert info["status"] == "FINISHED"
            assert info["artifact_uri"].startswith("mlflow-artifacts:")
            assert {"summary/test_accuracy", "summary/best_val_accuracy",
                    "summary/test_accuracy_ci_low", "summary/train_minutes"} <= set(metrics)
            history = api(url, "metrics/get-history", run_id=info["run_id"],
                          metric_key="epoch/val_accuracy")["metrics"]
            assert sorted(m["step"] for m in history) == [1, 2]
            listed = {}
            for folder in ("", "eval", "plots"):
                files = api(url, "artifacts/list", run_id=info["run_id"], path=folder)
                listed.update({f["path"]: f for f in files.get("files", [])})
            assert {"history.csv", "eval/eval.json", "plots/accuracy.png",
                    "plots/confusion.png"} <= set(listed)
        assert sorted(lrs) == ["0.001", "0.002"]
        # the registry: both runs registered a version; the alias names one of them
        for name in (EXPERIMENT, f"{EXPERIMENT}-onnx"):
            version = api(url, "registered-models/alias", name=name,
                          alias="candidate")["model_version"]
            assert version["run_id"] in {run["info"]["run_id"] for run in runs}
        # the artifacts went through the server: its destination holds them, the clients none
        stored = {p.name for p in artifacts.rglob("*") if p.is_file()}
        assert {"eval.json", "accuracy.png", "history.csv", "MLmodel", "model.onnx"} <= stored
        assert len(list(artifacts.rglob("eval.json"))) == 2
        assert not (repo / "mlartifacts").exists() and not (repo / "mlflow.db").exists()
        if not serve:
            return

        buffer = io.BytesIO()
        Image.fromarray(skdata.astronaut()).save(buffer, format="PNG")
        photo = base64.b64encode(buffer.getvalue()).decode()
        env["SERVE_PORT"] = client["SERVE_PORT"] = str(free_port())  # chosen just before use
        serve_port = int(env["SERVE_PORT"])
        with server_on(["bash", "-euo", "pipefail", "-c", doc_blocks()["serve"]], serve_port,
                       "/ping", repo, client) as served:
            request = urllib.request.Request(
                f"{served}/invocations", data=json.dumps({"inputs": {"image": [photo]}}).encode(),
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                (face, *_) = json.loads(response.read())["predictions"]
        assert face["image"] == 0 and face["whole_image"] is False
        assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_the_doc_has_every_block_the_tests_run():
    assert set(doc_blocks()) == {"install", "database", "server", "server-sqlite", "client",
                                 "remote", "experiments", "serve"}
    # the install block is CI's: .ci/run installs the same extra
    assert '-e ".[server]"' in doc_blocks()["install"]
    assert '".[server]"' in (ROOT / ".ci" / "run").read_text()
    import psycopg  # noqa: F401  (the server extra is installed where the tests run)


def test_team_setup_on_postgresql(team):
    with postgres_server() as superuser:
        run_block("database", {**team["env"], **superuser}, team["tmp"])
        team["env"].update(DB_HOST="127.0.0.1", DB_PORT=superuser["PGPORT"])
        check_team_flow(team, "server")


def test_team_setup_on_a_sqlite_server(team):
    check_team_flow(team, "server-sqlite", serve=False)  # serving: the PostgreSQL test
    assert (team["server_dir"] / "mlflow.db").is_file()


def train_stage(repo: Path, env: dict, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.train"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def test_train_stops_in_one_line_when_the_server_is_down(team):
    repo = team["repo"]
    env = {**team["env"], "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    proc = train_stage(repo, env, timeout_s=300)  # no training: the probe comes first
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI']}: the tracking server does not "
        f"answer ([Errno 111] Connection refused); start it, or unset MLFLOW_TRACKING_URI to "
        f"use the local mlflow.db")
    assert "epoch" not in proc.stdout
    assert not (repo / "models").exists()


def test_wrong_database_password_is_one_line_without_the_password(team):
    with postgres_server() as superuser:
        run_block("database", {**team["env"], **superuser}, team["tmp"])
        uri = f"postgresql://mlflow:wrong-{PASSWORD}@127.0.0.1:{superuser['PGPORT']}/mlflow"
        proc = train_stage(team["repo"], {**team["env"], "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: MLFLOW_TRACKING_URI=postgresql://mlflow:***@127.0.0.1:"
                           f"{superuser['PGPORT']}/mlflow: the database refuses the connection (")
    assert 'password authentication failed for user "mlflow"' in last
    assert last.endswith("); check the user, password, host and database name in "
                         "MLFLOW_TRACKING_URI")
    assert len(proc.stderr.strip().splitlines()) == 1  # no retries, no warnings before it
    assert PASSWORD not in proc.stdout + proc.stderr
    assert "epoch" not in proc.stdout


def test_server_gone_mid_run_keeps_the_outputs_and_logs_them_after(team):
    """The server is killed as epoch 2 of 5 ends (before its metrics are logged): training goes
    on and writes its outputs, the stage says what was not logged and how to log it; with the
    server back, `dvc repro train` resumes after the last epoch without training and the run
    gets everything."""
    repo, env = team["repo"], team["env"]
    fresh_ports(env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 5
    params["model"]["arch"] = "resnet18"  # epochs of seconds: the kill lands mid-run
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    port = int(env["SERVER_PORT"])
    client = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    args = ["bash", "-euo", "pipefail", "-c", doc_blocks()["server-sqlite"]]
    server = subprocess.Popen(args, cwd=team["server_dir"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None
                time.sleep(1)
        errors = team["tmp"] / "train.stderr"  # a file: progress bars must not fill a pipe
        with open(errors, "w") as err_file:
            stage = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=repo,
                                     env=client, stdout=subprocess.PIPE, stderr=err_file,
                                     text=True)
            try:
                for line in stage.stdout:
                    if line.startswith("epoch 2:"):
                        os.killpg(server.pid, signal.SIGKILL)
                        server.wait()
                        break
                # 3 more epochs of seconds, then out: the per-epoch calls try twice
                # (tests/test_tracking.py), not MLflow's 7 retries with minutes of backoff
                try:
                    out, _ = stage.communicate(timeout=600)
                except subprocess.TimeoutExpired:
                    raise AssertionError("the train stage still runs 600 s after the server went: "
                                         + errors.read_text()[-3000:]) from None
            finally:
                if stage.poll() is None:
                    stage.kill()
                    stage.wait()
        err = errors.read_text()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert stage.returncode == 1
    assert "warning: MLFLOW_TRACKING_URI=http://127.0.0.1:" in err
    # epoch 2's line is printed before its metrics are logged: the first one missed is 2 or 3
    assert re.search(r"per-epoch metrics not logged from epoch [23] on", err), err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: MLFLOW_TRACKING_URI=http://127.0.0.1:{port}: cannot end the "
                           f"run: the tracking server does not answer (")
    assert last.endswith("the outputs are written and models/resume.pt is kept: run `dvc repro "
                         "train` again to log them (it resumes after the last epoch, without "
                         "training)")
    assert "epoch 5:" in out
    assert len((repo / "metrics/history.csv").read_text().splitlines()) == 1 + 5
    assert (repo / "models/model.pt").is_file() and (repo / "models/resume.pt").is_file()

    with server_on(args, port, "/health", team["server_dir"], env) as url:
        out = sh(["dvc", "repro", "train"], repo, client)
        assert "resuming after epoch 5/5" in out and "epoch 1/5" not in out
        run_id = json.loads((repo / "models/mlflow_run.json").read_text())["run_id"]
        run = api(url, "runs/get", run_id=run_id)["run"]
        assert run["info"]["status"] == "FINISHED"
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"summary/best_val_accuracy", "summary/train_minutes"} <= metrics
        history = api(url, "metrics/get-history", run_id=run_id,
                      metric_key="epoch/val_accuracy")["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2, 3, 4, 5]
        files = {f["path"] for f in api(url, "artifacts/list", run_id=run_id).get("files", [])}
        assert "history.csv" in files
    assert not (repo / "models/resume.pt").exists()
