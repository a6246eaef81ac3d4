"""The README's screenshot of `ferpipe-demo`: start the demo on a free loopback port, check that
scikit-image's astronaut photo goes through its API, then open the page with `?example=astronaut`
(the page runs the example photo on load, as its "Example photo" button does) in headless
Chromium and save a PNG of it. The demo is stopped after, whatever happened.

    python scripts/demo_screenshot.py                      # docs/demo.png, the released model
    python scripts/demo_screenshot.py --model models/model.pt --out /tmp/demo.png

Run from the repo root. Needs Chromium (`apt-get install chromium`). Exit status 0, or 1 with
one error line on stderr, followed by the demo's last output.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image
from skimage import data as skdata

#: The released model, relative to the repo root: what a fresh install's page uses.
RELEASED = "ferpipe/released/model.onnx"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    """Wait until `url` answers, or raise RuntimeError when the server exits or `timeout_s` pass."""
    deadline = time.time() + timeout_s
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the demo exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"the demo did not answer {url} in {timeout_s:.0f} s") from None
            time.sleep(1)


def screenshot(url: str, out: Path, width: int, height: int) -> None:
    """A PNG of `url` in headless Chromium, loopback only (every other request goes to a closed
    proxy port), after its scripts ran."""
    browser = next((found for name in ("chromium", "chromium-browser", "google-chrome")
                    if (found := shutil.which(name))), None)
    if browser is None:
        raise RuntimeError("headless Chromium not found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                               "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
                               f"--user-data-dir={profile}", "--proxy-server=http://127.0.0.1:9",
                               "--virtual-time-budget=30000", f"--window-size={width},{height}",
                               f"--screenshot={out.resolve()}", url],
                              capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium failed: {proc.stderr[-500:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=RELEASED, help="the demo's --model")
    parser.add_argument("--out", type=Path, default=Path("docs/demo.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=760)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "-m", "ferpipe.tools.demo", "--model", args.model,
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_for(base + "/api/info", server, timeout_s=240)
        with tempfile.TemporaryDirectory() as folder:
            photo = Path(folder) / "astronaut.png"
            Image.fromarray(skdata.astronaut()).save(photo)
            request = urllib.request.Request(base + "/api/predict?name=astronaut.png",
                                             data=photo.read_bytes(), method="POST")
            with urllib.request.urlopen(request, timeout=120) as response:
                faces = json.load(response)["faces"]
        for face in faces:
            print(json.dumps(face))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(base + "/?example=astronaut", args.out, args.width, args.height)
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as err:
        log.seek(0)
        print(f"error: {err}\n{log.read().decode(errors='replace')[-2000:]}", file=sys.stderr)
        return 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
