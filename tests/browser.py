"""Headless Chromium for the tests of what users see in a browser (DVC plots, the MLflow UI).

Chromium comes from Debian's packages (`apt-get install chromium`). Without it the browser tests
are skipped, unless FERPIPE_REQUIRE_BROWSER is set (CI sets it), when they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest


def chromium() -> str:
    """The Chromium executable; skips (or fails under FERPIPE_REQUIRE_BROWSER) without one."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "headless Chromium not found (apt-get install chromium)"
    if os.environ.get("FERPIPE_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


def render(url: str, screenshot: str | None = None, budget_ms: int = 30000,
           width: int = 1600, height: int = 1200) -> str:
    """The DOM of `url` after its scripts ran (`budget_ms` of virtual time), with no network:
    every request beyond loopback goes to a closed proxy port. With `screenshot`, a PNG of
    the page is written there instead and "" returned."""
    with tempfile.TemporaryDirectory() as profile:
        args = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}",
                "--proxy-server=http://127.0.0.1:9", f"--virtual-time-budget={budget_ms}",
                f"--window-size={width},{height}"]
        args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
