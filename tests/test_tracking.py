"""The MLflow store set-up the stages share (`ferpipe.core.store.setup`)."""

import http.server
import os
import threading

import mlflow

from ferpipe.core import store, tracking


def test_setup_takes_the_experiment_another_process_created_meanwhile(tmp_path, monkeypatch):
    """Two queued experiments starting at once on a fresh tracking server both find no
    experiment and both create it; the second create fails with RESOURCE_ALREADY_EXISTS (seen
    with PostgreSQL: a unique-constraint violation), and that stage must use the experiment
    the other made instead of stopping. Here the other process's create happens between this
    process's lookup and its create."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        other = mlflow.create_experiment("fer-race", artifact_location=(tmp_path / "a").as_uri())
        lookup = mlflow.get_experiment_by_name
        calls = []

        def late(name):  # the first lookup ran before the other process's create
            calls.append(name)
            return None if len(calls) == 1 else lookup(name)

        monkeypatch.setattr(mlflow, "get_experiment_by_name", late)
        assert store.setup("fer-race") == other
        assert calls == ["fer-race", "fer-race"]
        tags = mlflow.MlflowClient().get_experiment(other).tags
        assert {k: tags.get(k) for k in store.EXPERIMENT_KIND} == store.EXPERIMENT_KIND
        assert len(mlflow.search_experiments(filter_string="name = 'fer-race'")) == 1
    finally:
        mlflow.set_tracking_uri(None)


class _FailingServer(http.server.BaseHTTPRequestHandler):
    """A tracking server that answers its health check and fails every API call with 503, a
    status MLflow's client retries; it counts the API calls it gets."""
    calls: list[str] = []

    def _answer(self):
        if self.path.startswith("/health"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
            return
        type(self).calls.append(self.path)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args):  # quiet
        pass


def test_epoch_log_tries_a_failing_server_twice_and_goes_on(monkeypatch, capsys):
    """A server that passes the health probe but fails the metrics call (it died in between):
    the per-epoch row is tried once more, not MLflow's 7 retries with minutes of backoff; the
    epoch is noted as missed, one warning is printed, and the user's retry settings come back
    after the call."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    mlflow.set_tracking_uri(uri)
    _FailingServer.calls = []
    try:
        log = tracking.EpochLog()
        log({"epoch": 3, "val_accuracy": 0.5})
        log({"epoch": 4, "val_accuracy": 0.6})  # failing: not tried again
    finally:
        mlflow.set_tracking_uri(None)
        server.shutdown()
    assert len(_FailingServer.calls) == 2, _FailingServer.calls  # one call + one retry
    assert log.missed == [3, 4] and log.failing
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "per-epoch metrics not logged from epoch 3 on" in warnings[0]
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_an_authenticating_servers_refusals_name_the_user_and_permission_never_the_password(
        monkeypatch, tmp_path):
    """How `store_errors` words MLflow's client errors for 401 and 403 (the messages as MLflow's
    REST client raises them); the full lines against a real server: tests/test_team.py."""
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader1")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-secret-0457")

    def raised(endpoint: str, code: int) -> MlflowException:
        return MlflowException(f"API request to endpoint {endpoint} failed with error code "
                               f"{code} != 200. Response body: 'Permission denied'")

    phrase = store.refusal(raised("/api/2.0/mlflow/model-versions/create", 403),
                           "fer2013-resnet18", "fer-model")
    assert phrase == ("MLFLOW_TRACKING_USERNAME=reader1 may not do this: it needs EDIT on "
                      "registered model fer-model (403 on /api/2.0/mlflow/model-versions/create); "
                      "ask an admin")
    phrase = store.refusal(raised("/api/2.0/mlflow/runs/create", 403), "fer2013-resnet18")
    assert "it needs EDIT on experiment fer2013-resnet18 (403 on /api/2.0/mlflow/runs/create)" \
        in phrase
    phrase = store.refusal(raised("/api/2.0/mlflow/runs/create", 401))
    assert phrase.startswith("the server does not accept the credentials of "
                             "MLFLOW_TRACKING_USERNAME=reader1 (401 on /api/2.0/mlflow/runs/create)")
    assert store.refusal(raised("/api/2.0/mlflow/runs/create", 500)) is None
    assert store.refusal(OSError("disk full")) is None
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    assert "MLFLOW_TRACKING_USERNAME (not set)" in store.refusal(
        raised("/api/2.0/mlflow/runs/create", 401))
    # Inside store_errors: one TrackingError line with the store, the action and the phrase.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    try:
        with store.store_errors("cannot start the run", "nothing was trained", "fer"):
            raise raised("/api/2.0/mlflow/experiments/set-experiment-tag", 403)
    except Exception as err:  # noqa: BLE001 (the line is what is checked)
        line = str(err)
    assert line.endswith("cannot start the run: MLFLOW_TRACKING_USERNAME (not set) may not do "
                         "this: it needs EDIT on experiment fer (403 on /api/2.0/mlflow/"
                         "experiments/set-experiment-tag); ask an admin; nothing was trained")
    assert "reader-secret-0457" not in line
