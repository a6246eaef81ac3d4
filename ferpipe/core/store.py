"""The MLflow store: the one that `mlflow ui` at the repo root reads, shared by every run.

The store is `MLFLOW_TRACKING_URI` when set, otherwise `sqlite:///<root>/mlflow.db` with artifacts
under `<root>/mlartifacts/`, where `<root>` is the main repository: `DVC_ROOT` when DVC runs the stage
in a temporary copy (`dvc exp run --temp` / `--queue` run under `.dvc/tmp/exps/` and set it),
otherwise the working directory. The train stage starts the run and writes its id to a small JSON
file; evaluate and plot reopen the run from that file.

When the store cannot be reached or written (a tracking server that is down, a full disk under
the SQLite file, wrong database credentials), the stages say so in one line that names the store
(`store_name`, with any password masked), the reason, what was kept and how to log it again
(`store_errors`); a tracking server is probed (`check_store`) before the train stage spends any
time training.

Parallel runs (`dvc queue start -j 2`) share that SQLite file. SQLite allows one writer at a time:
the store is opened with a 60 s busy timeout (writers wait instead of failing with "database is
locked"), and creating the database and the experiment, which MLflow does in several
transactions, is serialized across processes by a lock file beside it (`mlflow.db.lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from filelock import FileLock

from ferpipe.core.errors import TrackingError


def repo_root() -> Path:
    """The main repository root: `DVC_ROOT` when set (temp experiment copies), else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


#: SQLite busy timeout, seconds: how long a writer waits for another process's transaction.
SQLITE_TIMEOUT_S = 60


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, or the SQLite store `mlflow.db` at the main repo root (with a
    busy timeout of SQLITE_TIMEOUT_S seconds)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or _default_uri()


def _default_uri() -> str:
    """The SQLite store at the main repo root, with the busy timeout."""
    return f"sqlite:///{repo_root() / 'mlflow.db'}?timeout={SQLITE_TIMEOUT_S}"


def is_server(uri: str) -> bool:
    """Whether a tracking URI is a tracking server (http or https)."""
    return uri.startswith(("http://", "https://"))


def redact(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` in it replaced by ***."""
    return re.sub(r"(://[^/:@\s]*:)[^@/\s]*@", r"\1***@", text)


def store_name() -> str:
    """The tracking store as an error line names it: `MLFLOW_TRACKING_URI=<uri>` (password
    masked), or the default SQLite file when the variable is not set."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri != _default_uri():  # (`mlflow.set_tracking_uri` sets the variable to the default)
        return f"MLFLOW_TRACKING_URI={redact(uri)}"
    return f"MLflow store {repo_root() / 'mlflow.db'} (MLFLOW_TRACKING_URI not set)"


def failure_reason(err: BaseException) -> str:
    """The first line of what went wrong, password masked, at most 200 characters."""
    inner = getattr(err, "orig", None) or err.__cause__ or err  # SQLAlchemy's wrapped DB error
    text = getattr(err, "message", None) if inner is err else None
    text = str(text or inner or type(inner).__name__).strip().splitlines()
    line = redact(text[0] if text else type(inner).__name__)
    line = re.sub(r"^\((?:sqlite3|psycopg2?)\.[\w.]+\)\s*", "", line)  # SQLAlchemy's prefix
    return _clip(line)


def _clip(line: str) -> str:
    """At most 200 characters of one line."""
    return line if len(line) <= 200 else line[:195] + " ..."


def store_exceptions() -> tuple[type[BaseException], ...]:
    """What a failing store raises through MLflow: its own exception, a database error through
    SQLAlchemy, a connection error through requests, or an OSError (a full disk)."""
    from mlflow.exceptions import MlflowException

    found: list[type[BaseException]] = [MlflowException, OSError]
    with contextlib.suppress(ImportError):
        import sqlalchemy.exc
        found.append(sqlalchemy.exc.SQLAlchemyError)
    with contextlib.suppress(ImportError):
        import requests
        found.append(requests.exceptions.RequestException)
    return tuple(found)


@contextmanager
def store_errors(action: str, consequence: str, experiment: str | None = None,
                 registered_model: str | None = None) -> Iterator[None]:
    """Report a failure of the tracking store inside the block as one line:
    `<store_name()>: <action>: <reason>; <consequence>` (a TrackingError, password masked).

    Args:
        action: what could not be done, e.g. "cannot start the run".
        consequence: what was kept and what to do, e.g. "nothing was trained".
        experiment, registered_model: what the block acts on; an authenticating server's 401
            or 403 names the user and the permission it lacks (`refusal`).

    A tracking server is probed (`/health`, HEALTH_TIMEOUT_S) before the block runs: MLflow's
    client retries a refused connection for minutes before it gives up.

    Raises:
        TrackingError: the server does not answer, or the store raised MlflowException, a
            SQLAlchemy or requests error, or OSError.
    """
    why = server_unreachable(HEALTH_TIMEOUT_S)  # MLflow's client retries for minutes
    if why is not None:
        quick_exit_hook()
        raise TrackingError(f"{store_name()}: {action}: the tracking server does not answer "
                            f"({why}); {consequence}")
    try:
        yield
    except store_exceptions() as err:
        quick_exit_hook()
        reason = refusal(err, experiment, registered_model) or failure_reason(err)
        raise TrackingError(f"{store_name()}: {action}: {reason}; {consequence}") from None


def quick_exit_hook() -> None:
    """Make MLflow's exit hook, which ends a run left active, try once: against a server that
    does not answer, its client otherwise retries for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    7 with exponential backoff) after the stage has printed its error line. The run stays as
    the store has it (RUNNING), for the stage's next run to finish."""
    if mlflow.active_run() is not None:
        os.environ.update(_retry_settings(retries=0, timeout_s=5))


def _retry_settings(retries: int, timeout_s: int) -> dict[str, str]:
    """MLflow's HTTP client settings for `1 + retries` tries of `timeout_s` seconds each."""
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}


@contextmanager
def few_retries(retries: int = 1, timeout_s: int = 10) -> Iterator[None]:
    """Make MLflow's HTTP client try a tracking server's requests inside the block at most
    `1 + retries` times, each waiting at most `timeout_s` seconds for an answer, instead of its
    default of 7 retries with exponential backoff (minutes against a server that died).
    For calls whose failure costs nothing lasting (a per-epoch metric row is logged later).
    The variables are set back as they were (unset, or the user's values) after the block."""
    values = _retry_settings(retries, timeout_s)
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


#: How long `check_store` waits for a tracking server's health endpoint, seconds.
HEALTH_TIMEOUT_S = 10


def server_unreachable(timeout_s: float) -> str | None:
    """Why the tracking server does not answer `/health` (None: it answers, or the store is
    not a server). The server's certificate is checked as MLflow's client checks it
    (`MLFLOW_TRACKING_SERVER_CERT_PATH`, `MLFLOW_TRACKING_INSECURE_TLS`)."""
    import requests

    uri = tracking_uri()
    if not is_server(uri):
        return None
    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s,
                                verify=_tls_verify())
    except requests.exceptions.SSLError as err:
        why = _first_line(err)
        if "CERTIFICATE_VERIFY_FAILED" not in why:
            return f"the TLS handshake failed: {why}"
        return f"its TLS certificate is not trusted here: {why}; set {CERT_VARIABLE} to the " \
               f"server's certificate or its CA's"
    except (requests.exceptions.RequestException, OSError) as err:
        return _first_line(err)
    if response.status_code != 200:
        return f"it answered {response.status_code} {response.reason} at /health"
    return None


#: How `server_unreachable`'s reasons about TLS begin (a server that answers, but not securely).
_TLS_REASONS = ("its TLS certificate", "the TLS handshake")

#: The variable that names the certificate (or CA bundle) a client trusts for the server.
CERT_VARIABLE = "MLFLOW_TRACKING_SERVER_CERT_PATH"


def _tls_verify() -> bool | str:
    """`requests`' `verify` as MLflow's client sets it: the certificate file in
    MLFLOW_TRACKING_SERVER_CERT_PATH, False under MLFLOW_TRACKING_INSECURE_TLS, else the
    system's trust store."""
    from mlflow.environment_variables import MLFLOW_TRACKING_INSECURE_TLS

    if MLFLOW_TRACKING_INSECURE_TLS.get():
        return False
    return os.environ.get(CERT_VARIABLE) or True


def _first_line(err: BaseException) -> str:
    """The innermost reason of a requests error, one line, password masked: the system's
    (`[Errno 111] Connection refused`) or the TLS library's (`[SSL: CERTIFICATE_VERIFY_FAILED]
    ...`) words when the message holds them."""
    line = redact(" ".join(str(err).split()))
    for pattern in (r"\[Errno -?\d+\][^'\")]*", r"\[SSL: [^\]]+\][^'\")]*"):
        match = re.search(pattern, line)
        if match:
            return re.sub(r"\s*\(_ssl\.c:\d+$", "", match.group(0).strip())
    return _clip(line)


def username() -> str:
    """The MLflow user a client sends (MLFLOW_TRACKING_USERNAME, or the credentials file
    ~/.mlflow/credentials): `MLFLOW_TRACKING_USERNAME=<name>`, or a note that none is set."""
    from mlflow.utils.credentials import read_mlflow_creds

    name = read_mlflow_creds().username
    return f"MLFLOW_TRACKING_USERNAME={name}" if name else "MLFLOW_TRACKING_USERNAME (not set)"


def _unauthorized(endpoint: str) -> str:
    return (f"the server does not accept the credentials of {username()} (401 on {endpoint}); "
            f"check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
            f"~/.mlflow/credentials")


def server_refuses(timeout_s: float) -> str | None:
    """Why an authenticating tracking server refuses this client's credentials (a 401 on one
    read of the REST API, `experiments/search`); None: it accepts them, needs none, or the
    store is not a server."""
    import requests
    from mlflow.utils.credentials import read_mlflow_creds

    uri = tracking_uri()
    if not is_server(uri):
        return None
    creds = read_mlflow_creds()
    endpoint = "/api/2.0/mlflow/experiments/search"
    try:
        response = requests.get(uri.rstrip("/") + endpoint, params={"max_results": 1},
                                auth=(creds.username, creds.password or "")
                                if creds.username else None,
                                timeout=timeout_s, verify=_tls_verify())
    except (requests.exceptions.RequestException, OSError):
        return None  # the health check passed: MLflow's own calls report what follows
    return _unauthorized(endpoint) if response.status_code == 401 else None


def refusal(err: BaseException, experiment: str | None = None,
            registered_model: str | None = None) -> str | None:
    """What an authenticating tracking server (`mlflow server --app-name basic-auth`) refused,
    as one phrase naming the user and the permission it lacks; None when `err` is not a 401 or
    403 from the server. The password is never part of it.

    Args:
        err: an exception raised through MLflow's client (its message carries the endpoint and
            the status code: `API request to endpoint /api/2.0/mlflow/runs/create failed with
            error code 403 != 200`).
        experiment, registered_model: the names the refused calls act on, for the phrase.
    """
    text = str(getattr(err, "message", None) or err)
    code = getattr(err, "get_http_status_code", lambda: None)()
    found = re.search(r"endpoint (\S+) failed with error code (\d{3})", text)
    if found:
        code = int(found.group(2))
    if code not in (401, 403):
        return None
    endpoint = found.group(1) if found else "the server"
    if code == 401:
        return _unauthorized(endpoint)
    if re.search(r"registered-models|model-versions", endpoint):
        needed = f"EDIT on registered model {registered_model or '(the registry name)'}"
    else:
        needed = f"EDIT on experiment {experiment or '(the experiment)'}"
    return f"{username()} may not do this: it needs {needed} (403 on {endpoint}); ask an admin"


def _database_refuses(timeout_s: float) -> str | None:
    """Why a database tracking URI (postgresql://, mysql:// ...; not SQLite, not a server) does
    not take a connection, from one attempt (None: it does, or the store is not one). MLflow's
    own store retries for about 100 s, printing a warning each time, before it gives up."""
    uri = tracking_uri()
    if is_server(uri) or uri.startswith(("sqlite:", "file:", "databricks")) or "://" not in uri:
        return None
    import sqlalchemy

    connect_args = {"connect_timeout": int(timeout_s)} if uri.startswith(("postgres", "mysql")) \
        else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except ImportError as err:  # no driver for the URI's database
        return f"its driver is not installed here: {err}"
    except Exception as err:  # a driver's or SQLAlchemy's error
        return failure_reason(err)
    return None


def check_store(timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """Fail fast when `MLFLOW_TRACKING_URI` is a tracking server that does not answer: GET
    `<uri>/health` (the endpoint `mlflow server` serves) within `timeout_s` seconds. MLflow's
    own client would retry a refused connection for minutes first. A database URI
    (postgresql://user:password@host/db) is tried once, with a connection timeout of
    `timeout_s`. A SQLite file is checked by opening it (`setup`). A server that authenticates
    (`mlflow server --app-name basic-auth`) is asked once with the client's credentials.

    Raises:
        TrackingError: no answer, or an HTTP error status, from the server's health endpoint;
            a certificate the client does not trust (naming MLFLOW_TRACKING_SERVER_CERT_PATH);
            credentials the server refuses (401, naming MLFLOW_TRACKING_USERNAME);
            a database that refuses the connection (the password masked in the line).
    """
    why = server_unreachable(timeout_s)
    if why is not None and why.startswith(_TLS_REASONS):
        raise TrackingError(f"{store_name()}: {why}")
    if why is not None:
        raise TrackingError(f"{store_name()}: the tracking server does not answer ({why}); "
                            f"start it, or unset MLFLOW_TRACKING_URI to use the local "
                            f"mlflow.db")
    why = server_refuses(timeout_s)
    if why is not None:
        raise TrackingError(f"{store_name()}: {why}")
    why = _database_refuses(timeout_s)
    if why is not None:
        raise TrackingError(f"{store_name()}: the database refuses the connection ({why}); "
                            f"check the user, password, host and database name in "
                            f"MLFLOW_TRACKING_URI")


def _store_lock() -> contextlib.AbstractContextManager:
    """A cross-process lock (`<db>.lock`) for creating a SQLite store's tables and experiments;
    a no-op for any other tracking URI (a server or database handles its own concurrency)."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    return FileLock(str(db.with_name(db.name + ".lock")), timeout=600)


def artifact_location(experiment: str) -> str | None:
    """Artifact folder for a new experiment: `<main repo root>/mlartifacts/<experiment>` (a file
    URI); None (the server's own `mlflow-artifacts:` location) when the store is a tracking
    server, whose clients send artifacts through it rather than write them anywhere themselves.

    Set explicitly otherwise, so that an experiment first created from a temporary DVC copy does
    not get its artifacts inside that copy (which DVC deletes).
    """
    if is_server(tracking_uri()):
        return None
    return (repo_root() / "mlartifacts" / experiment).as_uri()


#: MLflow 3's experiment-kind tag, marking the experiment as model training rather than GenAI.
#: MLflow 3.17's UI still starts in its GenAI mode (an experiment opens on an empty traces
#: overview) unless the address says `workflowType=machine_learning`, as `ui_url`'s does, or the
#: user picked "Model training" once.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


#: The runs table `mlflow ui` should open on (the link `ui_url` gives): the headline summaries
#: and the recipe params as columns, newest run first. MLflow's UI loads a view shared through
#: the experiment tag `mlflow.sharedViewState.<key>` when the URL names the key.
VIEW_KEY = "ferpipe"
VIEW_COLUMNS = [*(f"metrics.`summary/{key}`" for key in (
    "test_accuracy", "test_macro_f1", "test_balanced_accuracy", "best_val_accuracy",
    "train_minutes", "images_per_s")),
    *(f"params.`{key}`" for key in ("train.epochs", "train.lr", "train.optimizer",
                                    "augment.crop", "model.stem"))]


def share_table_view(experiment_id: str) -> None:
    """Store the runs-table view VIEW_COLUMNS as the experiment's shared view VIEW_KEY."""
    state = {"orderByKey": "attributes.start_time", "orderByAsc": False,
             "selectedColumns": VIEW_COLUMNS}
    mlflow.MlflowClient().set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}",
                                             json.dumps(state))


def ui_url(experiment_id: str, server: str = "http://127.0.0.1:5000") -> str:
    """The `mlflow ui` address of the experiment's runs table in the shared view, in the UI's
    "Model training" mode (MLflow 3 opens in its GenAI mode unless the address or the browser's
    storage says otherwise)."""
    return (f"{server}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
            "&workflowType=machine_learning")


def setup(experiment: str) -> str:
    """Point MLflow at the store and select (creating if needed) `experiment`; returns its id.

    The experiment is tagged EXPERIMENT_KIND (also an existing one that lacks the tag) and
    holds the runs-table view of `share_table_view`."""
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri())
    with _store_lock():  # the first connection creates the tables: one process at a time
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            try:
                exp_id = mlflow.create_experiment(experiment, artifact_location=artifact_location(
                    experiment), tags=EXPERIMENT_KIND)
            except MlflowException as err:
                # Another process created it since the lookup: two queued experiments starting
                # at once on a fresh tracking server (the SQLite lock above covers only SQLite).
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = mlflow.get_experiment_by_name(experiment)
                if found is None:
                    raise
        if found is not None:
            exp_id = found.experiment_id
            missing = {k: v for k, v in EXPERIMENT_KIND.items() if found.tags.get(k) != v}
        else:
            missing = {}
        for key, value in missing.items():
            mlflow.MlflowClient().set_experiment_tag(exp_id, key, value)
        share_table_view(exp_id)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
