"""Try the model in a browser: `ferpipe-demo` (or `python -m ferpipe.tools.demo`) serves a local
page (`ferpipe.tools.demo_page`) on http://127.0.0.1:7860/ that takes a photo from a file, the
clipboard or the webcam and shows it with a box and label on each face, a bar chart of each
face's seven probabilities, and the JSON lines `ferpipe-predict --json` prints.

Every photo goes through the same path as `ferpipe-predict`: the file read by `read_image` (a
file it refuses is refused here with the same one-line reason, shown on the page), the same
`Predictor` with the same defaults (face detector, alignment, ten-crop TTA, logit adjustment,
the calibrated temperature) and the same `--model` (default: models/model.pt if it exists, else
the released model; the page says which).

The server is Python's own (`http.server`), one request at a time through the model:
  GET  /                          the page
  GET  /api/info                  {"model": the page's model line, "classes": [...]}
  GET  /example/astronaut.png     scikit-image's public-domain astronaut photo
  POST /api/predict?name=NAME     body: the image file's bytes; answers
                                  {"image": PNG data URL, "faces": [ferpipe-predict --json's
                                  objects, file = NAME]}, or 400 {"error": one line}
It binds to 127.0.0.1 unless `--host` says otherwise; it has no login, so only give another
address on a network you trust.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from ferpipe.core.errors import FerpipeError
from ferpipe.core.options import logit_adjustment_type
from ferpipe.core.params import TTA_MODES
from ferpipe.model.inference import DEFAULT_LOGIT_ADJUSTMENT, DEFAULT_TTA
from ferpipe.predict.cli import HelpFormatter
from ferpipe.predict.detectors import DETECTORS, make_detector
from ferpipe.predict.drawing import draw
from ferpipe.predict.predictor import Predictor, default_model, load_classifier, read_image
from ferpipe.tools.demo_page import page

#: The largest upload the server reads, bytes (a phone photo is 2-10 MB).
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
#: Gradio's port, so the demo is where people look for one.
DEFAULT_PORT = 7860


class Labelled(NamedTuple):
    """A photo's result: `annotated` uint8 (H, W, 3) RGB with a box and label on each face
    (`ferpipe.predict.drawing.draw`); `probabilities` one {class: probability} per face,
    largest face first; `faces` the JSON-able objects `ferpipe-predict --json` prints, one
    per face (the whole photo, `whole_image` true, when no face is found)."""

    annotated: np.ndarray
    probabilities: list[dict[str, float]]
    faces: list[dict[str, Any]]


def read_upload(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (H, W, 3), grayscale uint8 (H, W)) of an uploaded image file's bytes, read
    exactly as `ferpipe-predict` reads a file named `name` (`read_image`).

    Raises:
        ValueError: what `read_image` refuses (empty, not an image, corrupt, too large), with
            its one-line reason, the file named `name`.
    """
    with tempfile.TemporaryDirectory(prefix="ferpipe-demo-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            return read_image(path)
        except ValueError as err:
            raise ValueError(str(err).replace(str(path), name)) from None


def label_photo(predictor: Predictor, rgb: np.ndarray, gray: np.ndarray, name: str) -> Labelled:
    """Every face of a photo (RGB uint8 (H, W, 3) and its grayscale uint8 (H, W), as
    `read_upload` or `read_image` gives them) through `predictor`, `name` its `file`."""
    predictions = predictor.predict_image(gray, name)
    return Labelled(draw(rgb, predictions), [p.probabilities for p in predictions],
                    [p.as_dict() for p in predictions])


def png_data_url(rgb: np.ndarray) -> str:
    """A `data:image/png;base64,...` URL of an RGB uint8 (H, W, 3) image."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def example_png(name: str) -> bytes | None:
    """The PNG bytes of an example photo (`astronaut`: scikit-image's, 512 x 512 RGB), None
    for another name."""
    if name != "astronaut":
        return None
    from skimage import data as skdata

    buffer = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


def make_handler(predictor: Predictor, model_line: str) -> type[BaseHTTPRequestHandler]:
    """The request handler of the routes in the module docstring, around one `predictor` (its
    requests one at a time) and the page naming `model_line`."""
    names = predictor.classifier.class_names
    html = page(model_line, names).encode()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "ferpipe-demo"

        def send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def send_json(self, status: HTTPStatus, value: dict[str, Any]) -> None:
            self.send(status, json.dumps(value).encode(), "application/json")

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/":
                self.send(HTTPStatus.OK, html, "text/html; charset=utf-8")
            elif path == "/api/info":
                self.send_json(HTTPStatus.OK, {"model": model_line, "classes": names})
            elif path.startswith("/example/") and path.endswith(".png") and (
                    png := example_png(path.removeprefix("/example/").removesuffix(".png"))):
                self.send(HTTPStatus.OK, png, "image/png")
            else:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": f"{path}: not found"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/api/predict":
                self.send_json(HTTPStatus.NOT_FOUND, {"error": f"{url.path}: not found"})
                return
            name = (parse_qs(url.query).get("name") or ["photo"])[0]
            try:
                size = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "no Content-Length"})
                return
            if size > MAX_UPLOAD_BYTES:
                self.close_connection = True  # the body is not read
                self.send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {
                    "error": f"too large: {size / 2**20:.1f} MB; the demo takes files up to "
                             f"{MAX_UPLOAD_BYTES // 2**20} MB"})
                return
            data = self.rfile.read(size)
            try:
                rgb, gray = read_upload(data, name)
            except ValueError as err:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
                return
            try:
                with lock:
                    result = label_photo(predictor, rgb, gray, name)
            except Exception as err:  # a bug: one line on the page, the traceback on stderr
                traceback.print_exc()
                self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR,
                               {"error": f"internal error: {type(err).__name__}: {err}"})
                return
            self.send_json(HTTPStatus.OK, {"image": png_data_url(result.annotated),
                                           "faces": result.faces})

    return Handler


def build_parser() -> argparse.ArgumentParser:
    """The `ferpipe-demo` command line."""
    parser = argparse.ArgumentParser(
        prog="ferpipe-demo", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
        epilog="examples:\n  ferpipe-demo\n  ferpipe-demo --model model.onnx --port 8080")
    parser.add_argument("--model", default=None,
                        help="checkpoint file, ONNX file (.onnx) or MLflow URI, as "
                             "ferpipe-predict's --model (default: models/model.pt if it exists, "
                             "else the released model; the page says which)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; the page has no login, and browsers allow "
                             "the webcam only on 127.0.0.1, localhost or HTTPS")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port (0: any free port; the line on stderr says which)")
    parser.add_argument("--tta", choices=TTA_MODES, default=DEFAULT_TTA,
                        help="test-time augmentation, as ferpipe-predict's")
    parser.add_argument("--logit-adjustment", type=logit_adjustment_type, metavar="TAU",
                        default=DEFAULT_LOGIT_ADJUSTMENT,
                        help="post-hoc logit adjustment, as ferpipe-predict's (0: off)")
    parser.add_argument("--detector", choices=DETECTORS, default="auto",
                        help="face detector, as ferpipe-predict's")
    return parser


def make_predictor(args: argparse.Namespace) -> tuple[Predictor, str]:
    """The `Predictor` `ferpipe-predict` builds from the same options (its defaults for those the
    demo does not take), and the page's model line: `default_model()`'s description when no
    `--model` is given, else `model: <--model>`.

    Raises:
        OSError, ValueError, RuntimeError, FerpipeError: as `ferpipe-predict` reports them.
    """
    detector = make_detector(args.detector)
    if args.model is None:
        model, model_line = default_model()
    else:
        model, model_line = args.model, f"model: {args.model}"
    predictor = Predictor(load_classifier(model), detector, tta=args.tta,
                          logit_adjustment=args.logit_adjustment)
    return predictor, model_line


def main(argv: list[str] | None = None) -> int:
    """The `ferpipe-demo` command: serve until Ctrl-C or SIGTERM; returns the exit status (0, 2
    for a usage or model error, or an address it cannot listen on)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port: expected 0 to 65535, got {args.port}")
    try:
        predictor, model_line = make_predictor(args)
    except (OSError, ValueError, RuntimeError, FerpipeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        server = ThreadingHTTPServer((args.host, args.port), make_handler(predictor, model_line))
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err.strerror or err}",
              file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(model_line, file=sys.stderr)
    print(f"ferpipe-demo: open http://{host}:{port}/ (Ctrl-C stops it)", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
