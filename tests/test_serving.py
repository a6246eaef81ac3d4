"""The served model through a real `mlflow models serve` on a loopback port: photos and pixel
crops answer as the predict command and the classifier do; every bad request gets HTTP 400 with
one short message."""

import base64
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from ferpipe.data.splits import CLASS_NAMES
from ferpipe.model.inference import Classifier, probabilities
from ferpipe.predict.predictor import Predictor, load_gray
from ferpipe.serve.pyfunc import BadRequest, ExpressionModel, log_serving_model, to_pixels
from tests.fakedata import face_like, random_checkpoint
from tests.servers import free_port, server_on

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")




@contextmanager
def temp_store(folder: Path):
    """MLflow pointed at a SQLite store in `folder`, inside a run of a new experiment whose
    artifacts are in `folder` too; yields the store's URI. The previous tracking URI is
    restored after, in `os.environ` too (this runs in module-scoped fixtures, outside the
    per-test environment restore in conftest.py)."""
    store = f"sqlite:///{folder / 'mlflow.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri writes it there
    mlflow.set_tracking_uri(store)
    try:
        experiment = mlflow.create_experiment("serving", (folder / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            yield store
    finally:
        mlflow.set_tracking_uri(saved)
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """URL of `mlflow models serve` of the model `log_serving_model` logs into a temp SQLite
    store (artifacts in the temp folder too)."""
    tmp = tmp_path_factory.mktemp("serve")
    with temp_store(tmp) as store:
        example = np.stack([np.full((48, 48), 128.0),
                            np.tile(np.linspace(0, 255, 48), (48, 1))]).astype(np.float32)
        uri = log_serving_model(checkpoint, example)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with server_on([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
                    "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], port, "/ping",
                   tmp, env, timeout_s=180) as url:
        yield f"{url}/invocations"


def post(url, body):
    """(HTTP status, raw response body) of a JSON POST."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def encode(image: np.ndarray, fmt: str) -> str:
    return base64.b64encode(encoded(image, fmt)).decode()


def test_photos_answer_as_the_predict_command_does(server, checkpoint):
    astronaut = skdata.astronaut()
    files = [encoded(astronaut, "PNG"), encoded(astronaut, "JPEG"),
             encoded(face_like(3, np.random.default_rng(0)), "PNG")]
    jpeg = base64.b64encode(files[1]).decode()
    wrapped = "\n".join(jpeg[i:i + 76] for i in range(0, len(jpeg), 76))  # as `base64` writes
    photos = [base64.b64encode(files[0]).decode(), "data:image/jpeg;base64," + wrapped,
              base64.b64encode(files[2]).decode()]
    status, body = post(server, {"inputs": {"image": photos}})  # defaults: ten_crop, tau 0.5
    assert status == 200, body
    answers = json.loads(body)["predictions"]

    predictor = Predictor(Classifier.from_checkpoint(checkpoint), tta="ten_crop",
                          logit_adjustment=0.5)
    expected = [p.as_dict() for data in files
                for p in predictor.predict_image(load_gray(io.BytesIO(data))[1], "x")]
    assert [a["image"] for a in answers] == [0, 1, 2]  # one face in each, the crop whole
    for answer, want in zip(answers, expected):
        assert answer["box"] == want["box"] and answer["face"] == want["face"] == 0
        assert answer["whole_image"] == want["whole_image"]
        assert answer["expression"] == want["expression"]
        assert answer["probability"] == pytest.approx(want["probability"], abs=1e-5)
        assert answer["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    assert answers[0]["whole_image"] is False and answers[2]["whole_image"] is True
    x, y, w, h = answers[0]["box"]  # the astronaut's face, pixels of the photo
    assert abs(x + w / 2 - 222) < 10 and abs(y + h / 2 - 118) < 10 and 85 <= w <= 110
    assert answers[2]["box"] == [0, 0, 48, 48]
    assert set(answers[0]["probabilities"]) == set(CLASS_NAMES)


def test_a_photo_of_extreme_aspect_ratio_is_answered_with_the_others(server):
    """A 5000 x 1 strip (its downscale for detection used to round a side to 0 and fail in
    OpenCV) gets its whole-image answer, and the photo after it is still searched for faces."""
    strip = np.full((1, 5000), 128, np.uint8)
    status, body = post(server, {"inputs": {"image": [encode(strip, "PNG"),
                                                      encode(skdata.astronaut(), "PNG")]}})
    assert status == 200, body
    answers = json.loads(body)["predictions"]
    assert [a["image"] for a in answers] == [0, 1]
    assert answers[0]["whole_image"] is True and answers[0]["box"] == [0, 0, 5000, 1]
    x, y, w, h = answers[1]["box"]
    assert answers[1]["whole_image"] is False and abs(x + w / 2 - 222) < 10 and 85 <= w <= 110


def test_pixel_crops_answer_as_the_classifier_does(server, checkpoint):
    images = np.stack([face_like(c, np.random.default_rng(c)) for c in range(3)])
    images[2] = 0  # an all-black image is not taken for normalized pixels
    classifier = Classifier.from_checkpoint(checkpoint)
    for params, tta, tau in (({}, "ten_crop", 0.5), ({"tta": "none"}, "none", 0.5),
                             ({"tta": "hflip", "logit_adjustment": 1}, "hflip", 1.0),
                             ({"tta": "none", "logit_adjustment": 0}, "none", 0.0)):
        status, body = post(server, {"inputs": images.tolist(), "params": params})
        assert status == 200, body
        answers = np.array([list(a.values()) for a in json.loads(body)["predictions"]])
        assert [list(a) for a in json.loads(body)["predictions"]] == [list(CLASS_NAMES)] * 3
        np.testing.assert_allclose(answers, probabilities(classifier, images, tta, tau),
                                   atol=1e-5)
        unadjusted = classifier.predict(images, tta=tta)
        if tau:  # the adjustment moved them: the rare class (disgust) up
            assert (answers[:, 1] > unadjusted[:, 1]).all()
        else:
            np.testing.assert_allclose(answers, unadjusted, atol=1e-5)


def test_the_logged_default_tta_is_the_one_asked_for(checkpoint, tmp_path):
    """The evaluate stage logs the model with `evaluate.tta` and `evaluate.logit_adjustment` as
    the TTA and tau of a request without params: MLflow fills them in from the params schema."""
    images = np.stack([face_like(c, np.random.default_rng(c)) for c in range(2)])
    expected = Classifier.from_checkpoint(checkpoint).predict(images, tta="none")
    with temp_store(tmp_path):
        uri = log_serving_model(checkpoint, images.astype(np.float32), tta="none",
                                logit_adjustment=0.0)
        model = mlflow.pyfunc.load_model(uri)
    assert {p.name: p.default for p in model.metadata.get_params_schema().params} == {
        "tta": "none", "logit_adjustment": 0.0}
    np.testing.assert_allclose(model.predict(images.astype(np.float32)).to_numpy(),
                               expected, atol=1e-6)


FACE = face_like(1, np.random.default_rng(1))
PIXELS = "expected pixel values 0-255 (not normalized); got"


@pytest.mark.parametrize("body, message", [
    ({"inputs": [FACE.tolist()], "params": {"tta": "vflip"}},
     "params.tta: got 'vflip'; expected one of ['none', 'hflip', 'ten_crop']"),
    ({"inputs": [FACE.tolist()], "params": {"logit_adjustment": -1}},
     "params.logit_adjustment: got -1.0; expected a finite number >= 0"),
    ({"inputs": [(FACE * 2.0).tolist()]}, f"{PIXELS} {FACE.min() * 2.0}..{FACE.max() * 2.0}"),
    ({"inputs": [(FACE - 300.0).tolist()]}, f"{PIXELS} {FACE.min() - 300.0}..{FACE.max() - 300.0}"),
    ({"inputs": [[[float("nan")] * 48] * 48]}, f"{PIXELS} NaN"),
    ({"inputs": [FACE.tolist(), (FACE / 255).tolist()]},
     "expected pixel values 0-255, not normalized ones: image 1 has values only within 0-1 "
     f"(max {FACE.max() / 255:.3g})"),
    ({"inputs": []}, "expected at least one image; got none"),
    ({"inputs": [FACE.ravel().tolist()]},
     "expected images of 48x48 pixels as (B, 48, 48); got shape (1, 2304)"),
    ({"inputs": [[["dark"] * 48] * 48]},
     "expected pixel values 0-255 (numbers) as (B, 48, 48), or {'image': [base64 photos]}"),
    ({"inputs": {"image": []}}, "expected at least one photo in 'image'; got none"),
    ({"inputs": {"image": ["iVBORw0K" * 5000 + "!"]}}, "image[0]: not valid base64"),
    ({"inputs": {"image": [encode(FACE, "PNG"), base64.b64encode(b"GIF89a" * 9999).decode()]}},
     "image[1]: not an image file Pillow can read (PNG, JPEG, ...)"),
    ({"inputs": {"image": [17]}}, "image[0]: expected a base64-encoded image file (a string); "
                                  "got int"),
    ({"inputs": {"photo": ["iVBORw0K"]}}, "expected the one input 'image' (base64-encoded "
                                          "photos) or a list of 48x48 pixel arrays; got inputs "
                                          "['photo']"),
], ids=["tta", "tau", "over-255", "negative", "nan", "normalized", "empty", "flat", "non-numeric",
        "no-photos", "not-base64", "not-an-image", "photo-not-a-string", "unknown-input"])
def test_a_bad_request_gets_400_and_one_short_message(server, body, message):
    status, text = post(server, body)
    assert status == 400, text
    error = json.loads(text)
    assert error["error_code"] == "INVALID_PARAMETER_VALUE" and error["message"] == message
    assert set(error) <= {"error_code", "message", "sqlstate", "error_class"}  # no stack_trace


def test_a_ragged_array_gets_mlflows_own_short_400(server):
    """Rejected while MLflow parses the request (no input schema: nothing else is checked
    before the model), without echoing the input or a traceback."""
    status, text = post(server, {"inputs": [[[1.0] * 48] * 47 + [[1.0] * 3]]})
    assert status == 400, text
    error = json.loads(text)
    assert "inhomogeneous shape" in error["message"] and len(error["message"]) < 250
    assert set(error) == {"error_code", "message", "sqlstate", "error_class"}


def test_the_model_rounds_pixels_and_names_the_classes(checkpoint):
    model = ExpressionModel()
    model.load_context(SimpleNamespace(artifacts={"checkpoint": str(checkpoint)}))
    images = np.stack([face_like(c, np.random.default_rng(c)) for c in range(3)])
    out = model.predict(None, images.astype(np.float32).tolist())
    assert list(out.columns) == list(CLASS_NAMES) and out.shape == (3, 7)
    expected = probabilities(Classifier.from_checkpoint(checkpoint), images)  # the defaults
    np.testing.assert_allclose(out.to_numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(to_pixels([[[0.4, 254.6] * 24] * 48], 48)[0, 0, :2], [0, 255])


def test_the_model_refuses_a_logit_adjustment_that_is_not_finite(checkpoint):
    """JSON cannot carry inf or nan, but a caller of the pyfunc can: refused as a negative one
    is, in the words of every --logit-adjustment (`ferpipe.core.options`)."""
    model = ExpressionModel()
    model.load_context(SimpleNamespace(artifacts={"checkpoint": str(checkpoint)}))
    for tau, got in ((float("inf"), "inf"), (float("nan"), "nan"), (np.float64(-2), "-2.0"),
                     (True, "True"), ("0.5", "'0.5'")):
        with pytest.raises(BadRequest) as refused:
            model.predict(None, [FACE.tolist()], params={"logit_adjustment": tau})
        assert refused.value.message == (f"params.logit_adjustment: got {got}; expected a "
                                         f"finite number >= 0")


# --------------------------------------------------------------------------- python -m ferpipe.serve.pyfunc

SERVE_FOLDER_TIMEOUT_S = 300


def serve_folder(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m ferpipe.serve.pyfunc ARGS` run in `cwd` (this checkout on PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ferpipe.serve.pyfunc", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=SERVE_FOLDER_TIMEOUT_S)


def error_lines(stderr: str) -> list[str]:
    """The lines of `stderr` that report an error (argparse's usage and MLflow's warnings
    aside)."""
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def test_the_serve_folder_command_writes_the_model_it_names_on_stderr(checkpoint, tmp_path):
    """In a folder with the train stage's checkpoint, `python -m ferpipe.serve.pyfunc DEST`
    saves that model as an MLflow model folder, says on stderr which model it took, and the
    folder answers with the --tta and --logit-adjustment given as its defaults; a second run
    to the same folder is refused in one line and leaves it as it was."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(checkpoint.read_bytes())
    proc = serve_folder(["served", "--tta", "none", "--logit-adjustment", "0"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model: models/model.pt (the train stage's checkpoint)" in proc.stderr.splitlines()
    assert proc.stdout == ("wrote served; serve it with: mlflow models serve -m served "
                           "--env-manager local\n")
    assert "Traceback" not in proc.stderr and error_lines(proc.stderr) == []

    served = mlflow.pyfunc.load_model(str(tmp_path / "served"))
    assert {p.name: p.default for p in served.metadata.get_params_schema().params} == {
        "tta": "none", "logit_adjustment": 0.0}
    images = np.stack([face_like(c, np.random.default_rng(c)) for c in range(3)])
    expected = Classifier.from_checkpoint(checkpoint).predict(images, tta="none")  # tau 0
    np.testing.assert_allclose(served.predict(images.astype(np.float32)).to_numpy(), expected,
                               atol=1e-6)

    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "served").rglob("*"))
    again = serve_folder(["served", "--model", str(checkpoint)], tmp_path)
    assert again.returncode == 1 and again.stdout == "" and "Traceback" not in again.stderr
    assert error_lines(again.stderr) == [
        "error: served: exists; expected a new folder for the MLflow model"]
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "served").rglob("*")) == before


@pytest.mark.parametrize("args, message", [
    (["--logit-adjustment", "inf"], "argument --logit-adjustment: got inf; expected a finite "
                                    "number >= 0"),
    (["--logit-adjustment", "nan"], "argument --logit-adjustment: got nan; expected a finite "
                                    "number >= 0"),
    (["--logit-adjustment", "-1"], "argument --logit-adjustment: got -1; expected a finite "
                                   "number >= 0"),
    (["--tta", "vflip"], "argument --tta: invalid choice: 'vflip' (choose from 'none', 'hflip', "
                         "'ten_crop')"),
    (["--model", "missing.pt"], "missing.pt: checkpoint not found (run the train stage)"),
], ids=["inf", "nan", "negative", "tta", "no-model"])
def test_the_serve_folder_command_refuses_bad_options_in_one_line(checkpoint, tmp_path, args,
                                                                  message):
    proc = serve_folder(["served", "--model", str(checkpoint), *args], tmp_path)
    assert proc.returncode == (1 if args[0] == "--model" else 2)  # argparse's 2 for usage
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.endswith(f"error: {message}")
    assert not (tmp_path / "served").exists()
