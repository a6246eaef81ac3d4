"""A throw-away git + DVC repo holding a copy of the project, for end-to-end tests."""

from __future__ import annotations

import csv
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import mlflow
import yaml

ROOT = Path(__file__).resolve().parents[1]
COPY = ["ferpipe", "stages", "dvc.yaml", "params.yaml", ".gitignore",
        "models/teachers"]  # the committed teacher targets: a dep of the train stage


#: The longest any one command of the end-to-end tests may take (a `dvc repro` of the tiny
#: pipeline takes about a minute on a busy 2-core CPU), seconds.
COMMAND_TIMEOUT_S = 900


def sh(args, cwd, env, stdout_only=False, timeout_s: float = COMMAND_TIMEOUT_S):
    """Run a command, failing the test with its output when it fails or runs longer than
    `timeout_s` seconds; then its whole process group (DVC's stage processes too) is killed."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{args} still running after {timeout_s} s, killed:\n{out[-3000:]}\n"
                             f"{err[-3000:]}") from None
    finally:
        if proc.poll() is None:  # interrupted some other way: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, f"{args} failed:\n{out}\n{err}"
    return out if stdout_only else out + err


def in_terminal(args, cwd, env, columns: int = 200, timeout_s: float = 300) -> list[str]:
    """Run a command as a user would in a terminal `columns` characters wide: on a pty of that
    size, with DVC's pager replaced by `cat` (DVC pages through `less -S`, which shows each
    line's first `columns` characters and scrolls sideways). Returns the output's lines with
    colours and other escape sequences removed; fails the test if the command fails or is still
    running after `timeout_s` seconds."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(args, cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
                            env={**env, "DVC_PAGER": "cat", "TERM": "xterm",
                                 "COLUMNS": str(columns)})
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not select.select([master], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    if proc.poll() is None and time.monotonic() >= deadline:
        proc.kill()
    assert proc.wait(timeout=30) == 0, b"".join(chunks).decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    return [line.rstrip("\r") for line in text.split("\n")]


def clean_env() -> dict[str, str]:
    """The environment without MLflow/DVC variables, with this venv's tools first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    return env


def make_repo(repo: Path, archive: Path, **sections) -> dict:
    """Copy the project into `repo`, point download.source at `archive`, update params
    (`train={"epochs": 2}` ...), `git init` + `dvc init` and commit. Returns the env to run in."""
    repo.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["download"]["source"] = str(archive)
    # The committed teacher targets belong to the real FER2013 train split: the generated data
    # trains without distillation unless a test passes its own teacher.
    params["train"].update({"teacher": None, "distill_weight": 0.0})
    for section, values in sections.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = clean_env()
    sh(["git", "init", "-q"], repo, env)
    sh(["dvc", "init", "-q"], repo, env)
    sh(["dvc", "config", "core.analytics", "false"], repo, env)
    # the project's plot templates and offline plots page, configured as in .dvc/config
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    sh(["dvc", "config", "plots.html_template", "plots/offline.html"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "init"], repo, env)
    return env


def store_runs(repo_path: Path):
    """(client, every run) of the MLflow store at the repo root, as `mlflow ui` there sees it."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo_path / 'mlflow.db'}")
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
