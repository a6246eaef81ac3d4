"""Servers the tests start on a loopback port: `mlflow models serve`, `mlflow ui`, nginx."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started with `start_new_session=True` and its children: SIGTERM to its
    group, SIGKILL after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def server_on(args: list[str], port: int, ready_path: str, cwd, env,
              timeout_s: float = 240) -> Iterator[str]:
    """Run a server command on a loopback `port` until `ready_path` answers 200 (failing the test
    with its output if it exits, or after `timeout_s` seconds); yield its base URL; stop its
    process group after. Its output goes to a temporary file, not a pipe: a server that logs
    every request (`mlflow server`) would block once a pipe nobody reads is full."""
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)

    def output() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")[-5000:]

    try:
        deadline = time.time() + timeout_s
        while True:
            assert server.poll() is None, output()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}",
                                            timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"{args[:4]} did not answer {ready_path}"
            time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(server)
        log.close()


def nginx_binary() -> str | None:
    """nginx from Debian's package (/usr/sbin, often not on a user's PATH), else PATH's."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                     else None)


@contextmanager
def nginx_on(site: Path, folder: Path, port: int, timeout_s: float = 60) -> Iterator[None]:
    """Run nginx in the foreground with a minimal main configuration in `folder` that includes
    the server blocks of `site` (what docs/team.md writes to /etc/nginx/conf.d/), until `port`
    accepts connections; stop it after. As root, its workers run as root too (they read the
    test's password file and write its temp folders)."""
    binary = nginx_binary()
    assert binary, "nginx not found"
    folder.mkdir(parents=True, exist_ok=True)
    temp = {name: folder / "tmp" / name for name in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                      "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text("\n".join([
        "user root;" if os.geteuid() == 0 else "",
        "daemon off;", "worker_processes 1;", f"pid {folder / 'nginx.pid'};",
        f"error_log {folder / 'error.log'};", "events { worker_connections 64; }",
        "http {", "  access_log off;",
        *(f"  {name}_temp_path {path};" for name, path in temp.items()),
        f"  include {site};", "}", ""]))
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(folder), "-e",
                             str(folder / "error.log")], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError("nginx exited: " + log.read().decode(errors="replace")
                                     + (folder / "error.log").read_text(errors="replace"))
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.time() < deadline, "nginx did not listen"
            time.sleep(0.2)
        yield
    finally:
        stop_group(proc)
        log.close()
