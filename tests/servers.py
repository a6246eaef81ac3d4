"""Servers the tests start on a loopback port: `mlflow models serve`, `mlflow ui`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
