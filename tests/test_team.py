"""A team's setup, as docs/team.md gives it, run block by block with real parts: a PostgreSQL
server (Debian's `postgresql` package) and an `mlflow server` on it with MLflow's basic-auth app
and proxied artifacts, behind nginx (Debian's `nginx`) with TLS on a self-signed certificate; its
users (an EDIT worker, a READ user, a revoked one) checked through the REST API; the tiny
pipeline as two queued experiments at once over HTTPS as the worker, a DVC remote, and `mlflow
models serve` of the registered alias behind the proxy's login; the same on an `mlflow server` on
SQLite; the refusals (401, 403, an untrusted certificate) as one line each; and the failures a
team meets (server down at the start, gone mid-run, wrong database password). No password
appears in any output, run, `dvc.lock` or `params.yaml`.

Without PostgreSQL's or nginx's binaries those tests skip, unless FERPIPE_REQUIRE_POSTGRES or
FERPIPE_REQUIRE_NGINX is set (CI sets both, and installs the packages), when they fail instead."""

from __future__ import annotations

import base64
import glob
import io
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
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
from tests.servers import free_port, nginx_binary, nginx_on, server_on

# End to end: each test starts real DVC, MLflow or server processes; longer than the default limit
pytestmark = pytest.mark.timeout(1800)

DOC = ROOT / "docs" / "team.md"
PASSWORD = "team-secret-7"  # the database user's
ADMIN_PASSWORD = "admin-secret-0173"
SECRET_KEY = "flask-secret-key-5c1e9a"
WORKER, WORKER_PASSWORD = "worker1", "worker-secret-0291"
READER, READER_PASSWORD = "reader1", "reader-secret-0457"
MODEL_USER, MODEL_PASSWORD = "app", "model-secret-0613"
#: Every secret of the setup: none may appear in any output, run or committed file.
SECRETS = (PASSWORD, ADMIN_PASSWORD, SECRET_KEY, WORKER_PASSWORD, READER_PASSWORD, MODEL_PASSWORD)
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


#: How the tests' REST calls reach the server: (user, password) for basic auth, the
#: certificate to trust for https. Set by `check_team_flow`; admin by default.
ACCESS: dict = {"auth": ("admin", ADMIN_PASSWORD), "cafile": None}


def request(url: str, path: str, body: dict | None = None, auth: tuple[str, str] | None = None,
            cafile: str | None = None) -> tuple[int, bytes]:
    """(status, body) of GET (or POST `body` to) `url + path`, with basic `auth` (None: no
    credentials) and `cafile` trusted for https; an HTTP error status is returned, not raised."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    data = json.dumps(body).encode() if body is not None else None
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data=data,
                                                           headers=headers),
                                    timeout=60, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def api(url: str, endpoint: str, body: dict | None = None, *, auth=..., **query) -> dict:
    """GET (or POST `body` to) the tracking server's REST API `endpoint` with `query`, as
    ACCESS says (or as `auth`); fails the test on an error status."""
    path = f"/api/2.0/mlflow/{endpoint}" + ("?" + urllib.parse.urlencode(query) if query else "")
    status, data = request(url, path, body, ACCESS["auth"] if auth is ... else auth,
                           ACCESS["cafile"])
    assert status == 200, (endpoint, status, data[:500])
    return json.loads(data)


def api_status(url: str, endpoint: str, body: dict | None = None, auth=None, **query) -> int:
    """The HTTP status of one REST API call as `auth` (None: no credentials)."""
    path = f"/api/2.0/mlflow/{endpoint}" + ("?" + urllib.parse.urlencode(query) if query else "")
    return request(url, path, body, auth, ACCESS["cafile"])[0]


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
    proxy_dir, home = tmp_path / "proxy", tmp_path / "home"
    proxy_dir.mkdir()
    home.mkdir()
    env.update(SERVER_PORT=str(free_port()),
               SERVER_DIR=str(server_dir), ARTIFACTS=str(server_dir / "artifacts"),
               DVC_REMOTE=str(tmp_path / "remote"), SERVE_PORT=str(free_port()),
               MLFLOW_DB_PASSWORD=PASSWORD, MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
               MLFLOW_FLASK_SERVER_SECRET_KEY=SECRET_KEY,
               AUTH_DB=f"sqlite:///{server_dir / 'basic_auth.db'}",
               PROXY_NAME="localhost", PROXY_PORT=str(free_port()),
               TLS_CERT=str(proxy_dir / "cert.pem"), TLS_KEY=str(proxy_dir / "key.pem"),
               NGINX_SITE=str(proxy_dir / "mlflow.conf"), HTPASSWD=str(proxy_dir / "htpasswd"),
               MODEL_USER=MODEL_USER, MODEL_PASSWORD=MODEL_PASSWORD,
               WORKER_USER=WORKER, WORKER_PASSWORD=WORKER_PASSWORD,
               HOME=str(home))  # the clients' ~/.mlflow/credentials
    return {"repo": repo, "env": env, "tmp": tmp_path, "server_dir": server_dir,
            "proxy_dir": proxy_dir}


def require_nginx() -> None:
    """Skip (or, with FERPIPE_REQUIRE_NGINX set, fail) when nginx is not installed."""
    if nginx_binary() is None:
        message = "nginx not found (apt-get install nginx)"
        if os.environ.get("FERPIPE_REQUIRE_NGINX"):
            pytest.fail(message)
        pytest.skip(message)


def add_user(team: dict, user: str, password: str, permission: str) -> str:
    """docs/team.md's `user` block as the admin: `user` with `permission` (EDIT or READ)."""
    return run_block("user", {**team["env"], "NEW_USER": user, "NEW_PASSWORD": password,
                              "NEW_PERMISSION": permission}, team["tmp"])


@contextmanager
def secured_server(team: dict, server_block: str):
    """docs/team.md's server with users behind its TLS proxy: the auth settings, the server,
    the worker (EDIT) and the reader (READ), a self-signed certificate, the proxy's site with
    the model's user, nginx. Yields the proxy's https URL and the server's own URL."""
    require_nginx()
    env = team["env"]
    fresh_ports(env)
    run_block("auth-config", env, team["server_dir"])
    assert not any(secret in (team["server_dir"] / "basic_auth.ini").read_text()
                   for secret in SECRETS)
    port = int(env["SERVER_PORT"])
    with server_on(["bash", "-euo", "pipefail", "-c", doc_blocks()[server_block]], port,
                   "/health", team["server_dir"], env) as url:
        assert "EDIT on experiment" in add_user(team, WORKER, WORKER_PASSWORD, "EDIT")
        add_user(team, READER, READER_PASSWORD, "READ")
        for block in ("certificate", "proxy", "model-user"):
            run_block(block, env, team["proxy_dir"])
        ACCESS.update(auth=("admin", ADMIN_PASSWORD), cafile=env["TLS_CERT"])
        with nginx_on(Path(env["NGINX_SITE"]), team["proxy_dir"] / "nginx",
                      int(env["PROXY_PORT"])):
            yield f"https://localhost:{env['PROXY_PORT']}", url


def fresh_ports(env: dict) -> None:
    """Free loopback ports for docs/team.md's tracking server and served model, picked just
    before a test starts them (a port picked minutes earlier may have been taken meanwhile)."""
    env.update(SERVER_PORT=str(free_port()), SERVE_PORT=str(free_port()),
               PROXY_PORT=str(free_port()))


def wait_for_queue(repo: Path, env: dict, timeout_s: float = 900) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = sh(["dvc", "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(3)
    raise AssertionError(f"queue did not finish:\n{status}")


def check_access(https: str, run_id: str) -> None:
    """What each user gets through the proxy: 401 without credentials, with a wrong password and
    with MLflow's former default admin password; the reader reads runs and metrics and gets 403
    for every write; after the doc's `revoke`, nothing."""
    assert api_status(https, "experiments/search", max_results=5) == 401
    assert request(https, "/", cafile=ACCESS["cafile"])[0] == 401  # the UI's page
    assert api_status(https, "experiments/search", auth=(WORKER, "wrong-password-123"),
                      max_results=5) == 401
    assert api_status(https, "experiments/search", auth=("admin", "password1234"),
                      max_results=5) == 401
    reader = (READER, READER_PASSWORD)
    experiment = api(https, "experiments/get-by-name", auth=reader,
                     experiment_name=EXPERIMENT)["experiment"]["experiment_id"]
    runs = api(https, "runs/search", {"experiment_ids": [experiment]}, auth=reader)["runs"]
    assert run_id in {r["info"]["run_id"] for r in runs}
    history = api(https, "metrics/get-history", auth=reader, run_id=run_id,
                  metric_key="epoch/val_accuracy")["metrics"]
    assert history
    writes = {
        "create a run": ("runs/create", {"experiment_id": experiment}),
        "log a metric": ("runs/log-metric", {"run_id": run_id, "key": "x", "value": 1.0,
                                             "timestamp": 0, "step": 0}),
        "delete a run": ("runs/delete", {"run_id": run_id}),
        "move the alias": ("registered-models/alias", {"name": EXPERIMENT, "alias": "candidate",
                                                       "version": "1"}),
    }
    refused = {what: api_status(https, endpoint, body, auth=reader)
               for what, (endpoint, body) in writes.items()}
    assert refused == dict.fromkeys(writes, 403), refused
    print("REST API as", READER, refused)


def check_team_flow(team: dict, server_block: str, serve: bool = True) -> None:
    """docs/team.md from the server on: start it with users behind the TLS proxy, point the
    clients at the proxy as the worker, push to the remote, run two queued experiments at
    once, check both runs and every user's access through the REST API, revoke the reader, serve
    the alias behind the proxy's login (when `serve`), and search every output for a secret."""
    repo, env = team["repo"], team["env"]
    artifacts = Path(env["ARTIFACTS"])
    with secured_server(team, server_block) as (https, _):
        client = block_env("client", env)
        assert client["MLFLOW_TRACKING_URI"] == https
        assert "MLFLOW_TRACKING_PASSWORD" not in client  # the credentials file has it
        credentials = Path(env["HOME"]) / ".mlflow" / "credentials"
        assert credentials.stat().st_mode & 0o077 == 0
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
        logs = "".join(sh(["dvc", "queue", "logs", name], repo, client)
                       for name in ("team-lr-1e-3", "team-lr-2e-3"))
        # the lines that say why, first: pytest cuts a long assertion message short
        why = [line[:300] for line in logs.splitlines()
               if re.search(r"error|exception|traceback|refused|denied", line, re.I)]
        assert status.count("Success") == 2, "\n".join([status, *why[:40], logs[-2000:]])

        experiment = api(https, "experiments/get-by-name",
                         experiment_name=EXPERIMENT)["experiment"]
        assert experiment["artifact_location"].startswith("mlflow-artifacts:")
        runs = api(https, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert len(runs) == 2
        lrs = []
        for run in runs:
            info, data = run["info"], run["data"]
            params = {p["key"]: p["value"] for p in data["params"]}
            metrics = {m["key"]: m["value"] for m in data["metrics"]}
            tags = {t["key"]: t["value"] for t in data["tags"]}
            lrs.append(params["train.lr"])
            assert info["status"] == "FINISHED"
            assert info["artifact_uri"].startswith("mlflow-artifacts:")
            assert not any(secret in json.dumps([params, tags]) for secret in SECRETS)
            assert {"summary/test_accuracy", "summary/best_val_accuracy",
                    "summary/test_accuracy_ci_low", "summary/train_minutes"} <= set(metrics)
            history = api(https, "metrics/get-history", run_id=info["run_id"],
                          metric_key="epoch/val_accuracy")["metrics"]
            assert sorted(m["step"] for m in history) == [1, 2]
            listed = {}
            for folder in ("", "eval", "plots"):
                files = api(https, "artifacts/list", run_id=info["run_id"], path=folder)
                listed.update({f["path"]: f for f in files.get("files", [])})
            assert {"history.csv", "eval/eval.json", "plots/accuracy.png",
                    "plots/confusion.png"} <= set(listed)
        assert sorted(lrs) == ["0.001", "0.002"]
        # the registry: both runs registered a version; the alias names one of them
        for name in (EXPERIMENT, f"{EXPERIMENT}-onnx"):
            version = api(https, "registered-models/alias", name=name,
                          alias="candidate")["model_version"]
            assert version["run_id"] in {run["info"]["run_id"] for run in runs}
        # the artifacts went through the server: its destination holds them, the clients none
        stored = {p.name for p in artifacts.rglob("*") if p.is_file()}
        assert {"eval.json", "accuracy.png", "history.csv", "MLmodel", "model.onnx"} <= stored
        assert len(list(artifacts.rglob("eval.json"))) == 2
        assert not (repo / "mlartifacts").exists() and not (repo / "mlflow.db").exists()
        committed = (repo / "params.yaml").read_text() + (repo / "dvc.yaml").read_text() + \
            "".join(p.read_text() for p in repo.rglob("dvc.lock"))
        outputs = logs + (team["tmp"] / "queue.log").read_text()
        for secret in SECRETS:
            assert secret not in committed and secret not in outputs

        check_access(https, runs[0]["info"]["run_id"])
        run_block("revoke", {**env, "OLD_USER": READER}, team["tmp"])
        assert api_status(https, "experiments/get-by-name", auth=(READER, READER_PASSWORD),
                          experiment_name=EXPERIMENT) == 403
        if not serve:
            return

        buffer = io.BytesIO()
        Image.fromarray(skdata.astronaut()).save(buffer, format="PNG")
        photo = base64.b64encode(buffer.getvalue()).decode()
        body = {"inputs": {"image": [photo]}}
        serve_port = int(env["SERVE_PORT"])  # the proxy's site points at it
        with server_on(["bash", "-euo", "pipefail", "-c", doc_blocks()["serve"]], serve_port,
                       "/ping", repo, client):
            assert request(https, "/model/invocations", body, cafile=ACCESS["cafile"])[0] == 401
            status, answer = request(https, "/model/invocations", body,
                                     (MODEL_USER, MODEL_PASSWORD), ACCESS["cafile"])
            assert status == 200, answer[:500]
            (face, *_) = json.loads(answer)["predictions"]
        assert face["image"] == 0 and face["whole_image"] is False
        assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_the_doc_has_every_block_the_tests_run():
    assert set(doc_blocks()) == {"install", "database", "auth-config", "server", "server-sqlite",
                                 "user", "revoke", "certificate", "proxy", "model-user",
                                 "client", "remote", "experiments", "serve"}
    # the install block is CI's: .ci/run installs the same extra
    assert '-e ".[server]"' in doc_blocks()["install"]
    assert '".[server]"' in (ROOT / ".ci" / "run").read_text()
    import flask_wtf  # noqa: F401  (MLflow's auth app: the server extra is installed here)
    import psycopg  # noqa: F401


def test_team_setup_on_postgresql(team):
    with postgres_server() as superuser:
        run_block("database", {**team["env"], **superuser}, team["tmp"])
        team["env"].update(DB_HOST="127.0.0.1", DB_PORT=superuser["PGPORT"],
                           AUTH_DB=f"postgresql://mlflow@127.0.0.1:{superuser['PGPORT']}"
                                   f"/mlflow_auth")
        check_team_flow(team, "server")


def test_two_runs_pointing_a_new_alias_at_once_both_succeed_on_postgresql(tmp_path):
    """MLflow's SQL store writes an alias as a read then an insert: two runs setting a new alias
    at the same moment collide on PostgreSQL (400 UniqueViolation, not retried by the client;
    without `registry.set_alias`'s retry about 4 races in 10 failed here). 12 such races, each
    a new alias set to a different version by two threads: every call returns, and the alias
    points at one of the two versions."""
    import threading

    import mlflow

    from ferpipe.model import registry

    with postgres_server() as superuser:
        subprocess.run([*(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []),
                        postgres_bin("createdb"), "mlflow"], env={**os.environ, **superuser},
                       check=True, capture_output=True, timeout=60)
        port = free_port()
        backend = (f"postgresql+psycopg://postgres@/mlflow?host={superuser['PGHOST']}"
                   f"&port={superuser['PGPORT']}")
        with server_on([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                        "--default-artifact-root", str(tmp_path / "artifacts"),
                        "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                       port, "/health", tmp_path, os.environ) as url:
            previous = mlflow.get_tracking_uri()
            mlflow.set_tracking_uri(url)
            try:
                client = mlflow.MlflowClient()
                client.create_registered_model("race")
                for source in ("s3://bucket/a", "s3://bucket/b"):
                    client.create_model_version("race", source)
                errors: list[Exception] = []

                def point(alias: str, version: str) -> None:
                    try:
                        registry.set_alias("race", alias, version)
                    except Exception as err:  # collected: a thread's exception is otherwise lost
                        errors.append(err)

                for race in range(12):
                    threads = [threading.Thread(target=point, args=(f"a{race}", version))
                               for version in ("1", "2")]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join(timeout=60)
                    assert client.get_model_version_by_alias("race", f"a{race}").version in {
                        "1", "2"}
                assert errors == []
            finally:
                mlflow.set_tracking_uri(previous)


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
    assert sorted(p.name for p in (repo / "models").iterdir()) == ["teachers"]  # nothing written


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
    run_block("auth-config", env, team["server_dir"])
    client = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
              "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
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

    ACCESS.update(auth=("admin", ADMIN_PASSWORD), cafile=None)
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


def set_model_permission(team: dict, url: str, user: str, permission: str) -> None:
    """As the admin, give `user` `permission` on the pipeline's two registered models."""
    code = ("import os\nfrom mlflow.server import get_app_client\n"
            "auth = get_app_client('basic-auth', tracking_uri=os.environ['MLFLOW_TRACKING_URI'])\n"
            f"for name in ('{EXPERIMENT}', '{EXPERIMENT}-onnx'):\n"
            f"    auth.revoke_user_permission('{user}', 'registered_model', name)\n"
            f"    auth.grant_user_permission('{user}', 'registered_model', name, '{permission}')\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120,
                   env={**team["env"], "MLFLOW_TRACKING_URI": url,
                        "MLFLOW_TRACKING_USERNAME": "admin",
                        "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD})


def test_refusals_are_one_line_each_naming_the_user_never_the_password(team):
    """Through the TLS proxy: a wrong password (401) and a READ user (403) stop the train stage
    before any training; a client that does not trust the certificate is told which variable
    sets it; a user with EDIT on the experiment but READ on the registered model trains, and the
    evaluate stage's registration is refused in one line."""
    repo = team["repo"]
    with secured_server(team, "server-sqlite") as (https, url):
        client = block_env("client", team["env"])  # the worker's credentials file
        store = f"error: MLFLOW_TRACKING_URI={https}: "
        lines = {}

        def last_line(env: dict, args: list[str] | None = None) -> str:
            proc = subprocess.run(args or [sys.executable, "-m", "stages.train"], cwd=repo,
                                  env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode != 0, proc.stdout[-2000:]
            for secret in SECRETS:
                assert secret not in proc.stdout + proc.stderr
            # the stage's own line (under `dvc repro`, DVC's "ERROR: failed to reproduce" follows)
            return [line for line in proc.stderr.splitlines() if line.startswith("error: ")][-1]

        wrong = {**client, "MLFLOW_TRACKING_USERNAME": WORKER,
                 "MLFLOW_TRACKING_PASSWORD": "wrong-password-123"}
        lines["401"] = last_line(wrong)
        assert lines["401"] == (
            f"{store}the server does not accept the credentials of MLFLOW_TRACKING_USERNAME="
            f"{WORKER} (401 on /api/2.0/mlflow/experiments/search); check "
            f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or ~/.mlflow/credentials")

        reader = {**client, "MLFLOW_TRACKING_USERNAME": READER,
                  "MLFLOW_TRACKING_PASSWORD": READER_PASSWORD}
        lines["403"] = last_line(reader)
        assert re.fullmatch(
            re.escape(f"{store}cannot start the run: MLFLOW_TRACKING_USERNAME={READER} may not do "
                      f"this: it needs EDIT on experiment {EXPERIMENT} (403 on ")
            + r"/api/2\.0/mlflow/\S+" + re.escape("); ask an admin; nothing was trained"),
            lines["403"]), lines["403"]
        assert not (repo / "models" / "model.pt").exists()

        untrusting = {k: v for k, v in client.items() if k != "MLFLOW_TRACKING_SERVER_CERT_PATH"}
        lines["certificate"] = last_line(untrusting)
        assert lines["certificate"].startswith(
            f"{store}its TLS certificate is not trusted here: [SSL: CERTIFICATE_VERIFY_FAILED] "
            f"certificate verify failed")
        assert lines["certificate"].endswith(
            "; set MLFLOW_TRACKING_SERVER_CERT_PATH to the server's certificate or its CA's")

        add_user(team, "trainer1", "trainer-secret-0831", "EDIT")
        set_model_permission(team, url, "trainer1", "READ")
        trainer = {**client, "MLFLOW_TRACKING_USERNAME": "trainer1",
                   "MLFLOW_TRACKING_PASSWORD": "trainer-secret-0831"}
        lines["registry"] = last_line(trainer, ["dvc", "repro", "evaluate"])
        assert re.fullmatch(
            re.escape(f"{store}the evaluation was not logged into the run: "
                      f"MLFLOW_TRACKING_USERNAME=trainer1 may not do this: it needs EDIT on "
                      f"registered model {EXPERIMENT} (403 on ")
            + r"/api/2\.0/mlflow/(registered-models|model-versions)/\S+"
            + re.escape("); ask an admin; the outputs are written; run `dvc repro evaluate` "
                        "again to log them"), lines["registry"]), lines["registry"]
        assert (repo / "models" / "model.pt").is_file()  # it trained: only the registry refused
    print("\n".join(f"{k}: {v}" for k, v in lines.items()))
