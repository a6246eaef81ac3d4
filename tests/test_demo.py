"""`ferpipe-demo`: its prediction function, its server's API and its page in headless Chromium
give what `ferpipe-predict --json` gives on the same photo, and refuse what it refuses with the
same line."""

import base64
import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from ferpipe.predict.cli import main as predict_main
from ferpipe.tools.demo import (
    MAX_UPLOAD_BYTES,
    build_parser,
    label_photo,
    main,
    make_predictor,
    read_upload,
)
from ferpipe.tools.demo_page import TITLE
from tests.browser import render
from tests.fakedata import random_checkpoint
from tests.servers import free_port, server_on


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """astronaut.png (512 x 512 RGB), a corrupt JPEG, an empty file, and a PNG whose header
    claims 20000 x 20000 pixels (over Pillow's decompression-bomb limit)."""
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", 20_000, 20_000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    (folder / "huge.png").write_bytes(bytes(png))
    return folder


BAD = ["broken.jpg", "empty.png", "huge.png"]


def predict_json(paths: list[Path], checkpoint: Path, capsys) -> list[dict]:
    """`ferpipe-predict PATHS --model CHECKPOINT --json`'s lines."""
    capsys.readouterr()
    predict_main([*map(str, paths), "--model", str(checkpoint), "--json"])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def assert_same_faces(got: list[dict], expected: list[dict], tolerance: float) -> None:
    """The same faces, boxes and expressions; probabilities within `tolerance`."""
    assert [{k: v for k, v in f.items() if not k.startswith("probabilit")} for f in got] == [
        {k: v for k, v in f.items() if not k.startswith("probabilit")} for f in expected]
    for g, e in zip(got, expected):
        assert g["probability"] == pytest.approx(e["probability"], abs=tolerance)
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=tolerance)


def assert_boxes_drawn(annotated: np.ndarray, faces: list[dict]) -> None:
    """`annotated` is the astronaut photo with each face's box drawn and the far corner kept."""
    original = skdata.astronaut()
    assert annotated.shape == original.shape and annotated.dtype == np.uint8
    for face in faces:
        x, y, w, h = face["box"]
        assert not np.array_equal(annotated[y:y + h, x], original[y:y + h, x])  # the left edge
    assert np.array_equal(annotated[400:, 400:], original[400:, 400:])


def test_label_photo_gives_what_ferpipe_predict_json_prints(checkpoint, photos, capsys):
    path = photos / "astronaut.png"
    expected = predict_json([path], checkpoint, capsys)
    assert len(expected) == 1 and expected[0]["whole_image"] is False  # a face was found
    predictor, model_line = make_predictor(build_parser().parse_args(["--model", str(checkpoint)]))
    assert model_line == f"model: {checkpoint}"
    rgb, gray = read_upload(path.read_bytes(), str(path))
    result = label_photo(predictor, rgb, gray, str(path))
    assert_same_faces(result.faces, expected, tolerance=1e-6)
    assert result.probabilities == [face["probabilities"] for face in result.faces]
    assert json.loads(json.dumps(result.faces)) == result.faces  # JSON-able as it is
    assert_boxes_drawn(result.annotated, result.faces)


def test_uploads_are_refused_with_ferpipe_predicts_line(checkpoint, photos, capsys):
    expected = predict_json([photos / name for name in BAD], checkpoint, capsys)
    for name, line in zip(BAD, expected):
        with pytest.raises(ValueError) as refused:
            read_upload((photos / name).read_bytes(), str(photos / name))
        assert str(refused.value) == line["error"] and "\n" not in line["error"]
    assert expected[1]["error"] == f"cannot read image: cannot identify image file " \
                                   f"'{photos / 'empty.png'}'"  # named as uploaded, not the copy
    assert expected[2]["error"].startswith("cannot read image: too large")


def test_options_and_their_errors_are_one_line(checkpoint, tmp_path, capsys):
    assert build_parser().parse_args([]).host == "127.0.0.1"  # loopback unless asked
    missing = str(tmp_path / "nope.pt")
    assert predict_main(["x.jpg", "--model", missing]) == 2
    predict_err = capsys.readouterr().err
    assert main(["--model", missing]) == 2
    assert capsys.readouterr().err == predict_err and len(predict_err.splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--model", str(checkpoint), "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"error: cannot listen on 127.0.0.1:{port}: "
                                       "Address already in use\n")
    with pytest.raises(SystemExit):
        main(["--port", "70000"])
    assert "ferpipe-demo: error: --port: expected 0 to 65535, got 70000" in capsys.readouterr().err


def test_the_console_script_is_installed():
    command = Path(sys.executable).parent / "ferpipe-demo"
    proc = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "usage: ferpipe-demo" in proc.stdout and "(default: 127.0.0.1)" in proc.stdout


@pytest.fixture(scope="module")
def demo(checkpoint, tmp_path_factory):
    """The demo's base URL, `python -m ferpipe.tools.demo --model CHECKPOINT` on a free loopback
    port, run from an empty folder; stopped after the module's tests."""
    port = free_port()
    with server_on([sys.executable, "-m", "ferpipe.tools.demo", "--model", str(checkpoint),
                    "--port", str(port)], port, "/api/info", tmp_path_factory.mktemp("cwd"),
                   dict(os.environ)) as url:
        yield url


def post(url: str, data: bytes) -> tuple[int, dict]:
    """POST `data`: (status, the JSON answer)."""
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.load(err)


@pytest.mark.timeout(600)
def test_the_api_answers_as_ferpipe_predict(demo, checkpoint, photos, capsys):
    with urllib.request.urlopen(demo + "/api/info", timeout=60) as response:
        info = json.load(response)
    assert info["model"] == f"model: {checkpoint}" and len(info["classes"]) == 7
    with urllib.request.urlopen(demo + "/", timeout=60) as response:
        html = response.read().decode()
    assert f"<title>{TITLE}</title>" in html and f">model: {checkpoint}</p>" in html

    path = photos / "astronaut.png"
    expected = predict_json([path], checkpoint, capsys)
    status, answer = post(f"{demo}/api/predict?name={quote(str(path))}", path.read_bytes())
    assert status == 200
    assert_same_faces(answer["faces"], expected, tolerance=1e-5)  # another process's threads
    prefix = "data:image/png;base64,"
    assert answer["image"].startswith(prefix)
    annotated = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["image"][len(prefix):]))))
    assert_boxes_drawn(annotated, answer["faces"])

    refusals = predict_json([photos / name for name in BAD], checkpoint, capsys)
    for name, line in zip(BAD, refusals):
        assert post(f"{demo}/api/predict?name={quote(str(photos / name))}",
                    (photos / name).read_bytes()) == (400, {"error": line["error"]})


@pytest.mark.timeout(600)
def test_an_upload_over_the_limit_is_refused_before_it_is_read(demo):
    host, port = demo.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest("POST", "/api/predict?name=big.png")
        connection.putheader("Content-Length", str(MAX_UPLOAD_BYTES + 1))
        connection.endheaders()  # and no body: the answer must not wait for it
        response = connection.getresponse()
        assert response.status == 413
        assert json.load(response)["error"].startswith("too large: 50.0 MB; the demo takes")
    finally:
        connection.close()


@pytest.mark.timeout(600)
def test_the_page_renders_the_model_and_a_result_in_chromium(demo, checkpoint, photos, capsys):
    dom = render(demo + "/")
    assert f"<h1>{TITLE}</h1>" in dom and f">model: {checkpoint}</p>" in dom
    assert "Upload a photo" in dom and 'id="faces"></div>' in dom  # no result before a photo
    # ?example=astronaut: the page fetches the example photo and posts it as an upload
    (face,) = predict_json([photos / "astronaut.png"], checkpoint, capsys)
    x, y, w, h = face["box"]
    dom = render(demo + "/?example=astronaut")
    assert f"<h2>Face 1: {face['expression']} " in dom and f"(box {x},{y} {w}x{h})</h2>" in dom
    assert dom.count('class="bar') == 7 and 'src="data:image/png;base64,' in dom
    assert "astronaut.png: 1 face(s)" in dom
