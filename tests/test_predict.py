"""Predicting on photos: TTA views, face detection on a real photo, cropping, the CLI."""

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from ferpipe.data.splits import CLASS_NAMES
from ferpipe.model.device import StepContext
from ferpipe.model.inference import Classifier, predict_log_proba, probabilities, tta_views
from ferpipe.predict.cli import main
from ferpipe.predict.faces import crop_face
from ferpipe.predict.haar import HaarDetector
from ferpipe.predict.predictor import Predictor
from tests.fakedata import TRAIN_COUNTS, face_like, help_blocks, random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
#: The astronaut's face in skimage.data.astronaut() (512 x 512), as OpenCV's default cascade
#: finds it: x, y, w, h in pixels (checked by eye on the annotated image).
ASTRONAUT_FACE = (177, 66, 95, 95)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """astronaut.png (512 x 512 RGB), a 640 x 480 JPEG of it, a 48 x 48 face crop, a corrupt
    file and a text file in one folder."""
    folder = tmp_path_factory.mktemp("photos")
    astronaut = Image.fromarray(skdata.astronaut())
    astronaut.save(folder / "astronaut.png")
    astronaut.resize((640, 480)).save(folder / "astronaut_640x480.jpg", quality=95)
    Image.fromarray(face_like(3, np.random.default_rng(0))).save(folder / "crop48.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def test_tta_views():
    x = torch.randn(3, 1, 48, 48)
    assert [v.shape for v in tta_views(x, "none")] == [x.shape]
    plain, flipped = list(tta_views(x, "hflip"))
    torch.testing.assert_close(flipped, x.flip(-1))
    crops = list(tta_views(x, "ten_crop", crop=44))
    assert len(crops) == 10 and all(v.shape == x.shape for v in crops)
    # A crop as large as the image: 5 copies of the image, then 5 of its mirror image.
    full = list(tta_views(x, "ten_crop", crop=48))
    for view in full[:5]:
        torch.testing.assert_close(view, x)
    for view in full[5:]:
        torch.testing.assert_close(view, x.flip(-1))
    with pytest.raises(ValueError, match="unknown TTA mode 'vflip'"):
        list(tta_views(x, "vflip"))
    with pytest.raises(ValueError, match="does not fit a 48x48 image"):
        list(tta_views(x, "ten_crop", crop=50))


def test_predict_log_proba_averages_the_softmax_of_the_views(checkpoint):
    clf = Classifier.from_checkpoint(checkpoint)
    images = np.stack([face_like(c, np.random.default_rng(c)) for c in range(5)])
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - 0.5) / 0.25
    with torch.no_grad():
        plain = torch.softmax(clf.model(x), 1)
        mirror = torch.softmax(clf.model(x.flip(-1)), 1)
    ctx = StepContext(torch.device("cpu"), 0.5, 0.25)
    torch.testing.assert_close(predict_log_proba(clf.model, images, ctx).exp(), plain)
    torch.testing.assert_close(
        predict_log_proba(clf.model, images, ctx, "hflip", batch_size=2).exp(), (plain + mirror) / 2)
    ten = predict_log_proba(clf.model, images, ctx, "ten_crop").exp()
    torch.testing.assert_close(ten.sum(1), torch.ones(5))
    np.testing.assert_allclose(clf.predict(images, "hflip"), ((plain + mirror) / 2).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_crop_face_takes_a_square_with_margin_and_pads_at_the_border():
    gray = np.arange(100 * 120, dtype=np.uint32).reshape(100, 120) % 251
    gray = gray.astype(np.uint8)
    crop = crop_face(gray, (40, 30, 20, 20), margin=0.0, size=20)
    np.testing.assert_array_equal(crop, gray[30:50, 40:60])
    grown = crop_face(gray, (40, 30, 20, 20), margin=0.5, size=40)
    np.testing.assert_array_equal(grown, gray[20:60, 30:70])
    corner = crop_face(gray, (0, 0, 20, 20), margin=0.5, size=40)  # 10 pixels outside
    assert corner.shape == (40, 40)
    np.testing.assert_array_equal(corner[10:, 10:], gray[:30, :30])
    np.testing.assert_array_equal(corner[:10, 10], np.full(10, gray[0, 0]))  # replicated border


def test_the_haar_cascade_finds_the_astronauts_face():
    gray = np.asarray(Image.fromarray(skdata.astronaut()).convert("L"))
    boxes = [face.box for face in HaarDetector().detect(gray)]
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert abs(x - ASTRONAUT_FACE[0]) <= 8 and abs(y - ASTRONAUT_FACE[1]) <= 8
    assert abs(w - ASTRONAUT_FACE[2]) <= 12 and w == h
    big = np.asarray(Image.fromarray(gray).resize((1280, 1280)))  # searched downscaled to 640
    # boxes in the 1280-pixel image: 2.5 x
    (bx, by, bw, _), = [face.box for face in HaarDetector().detect(big)]
    assert abs(bx - 2.5 * x) <= 20 and abs(by - 2.5 * y) <= 20 and abs(bw - 2.5 * w) <= 30


def test_predictor_classifies_faces_and_falls_back_to_the_whole_image(checkpoint):
    predictor = Predictor(Classifier.from_checkpoint(checkpoint))
    gray = np.asarray(Image.fromarray(skdata.astronaut()).convert("L"))
    (face,) = predictor.predict_image(gray, "astronaut")
    assert not face.whole_image and face.face == 0
    assert sum(face.probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert face.expression == max(face.probabilities, key=face.probabilities.get)
    assert face.probability == face.probabilities[face.expression]
    crop = face_like(3, np.random.default_rng(0))
    (whole,) = predictor.predict_image(crop, "crop")
    assert whole.whole_image and whole.box == (0, 0, 48, 48)
    # Predictor's defaults: ten-crop TTA and logit adjustment 0.5 (`probabilities`)
    expected = probabilities(predictor.classifier, crop[None], "ten_crop", 0.5)[0]
    assert [whole.probabilities[n] for n in CLASS_NAMES] == pytest.approx(expected.tolist())


def test_probabilities_apply_the_logit_adjustment_as_the_evaluate_stage_does(checkpoint):
    """softmax(log p - tau log prior) is p x prior^-tau renormalized; its argmax is the evaluate
    stage's (`adjust_logits` of the log-probabilities)."""
    from ferpipe.model.inference import adjust_logits

    clf = Classifier.from_checkpoint(checkpoint)
    counts = clf.class_counts
    assert counts == TRAIN_COUNTS  # FER2013 train's imbalance, recorded by the checkpoint
    images = np.stack([face_like(c % 7, np.random.default_rng(c)) for c in range(12)])
    plain = clf.predict(images, "hflip")
    assert probabilities(clf, images, "hflip", 0.0) == pytest.approx(plain)
    prior = np.array(counts) / sum(counts)
    for tau in (0.5, 1.0):
        got = probabilities(clf, images, "hflip", tau)
        expected = plain * prior ** -tau
        np.testing.assert_allclose(got, expected / expected.sum(1, keepdims=True), rtol=1e-4)
        assert got.dtype == np.float32 and got.sum(1) == pytest.approx(np.ones(12), abs=1e-5)
        evaluate = adjust_logits(torch.from_numpy(plain).log(), counts, tau).argmax(1).numpy()
        np.testing.assert_array_equal(got.argmax(1), evaluate)
    # the rare class (disgust, 436 images) gains the most
    assert (probabilities(clf, images, "hflip", 1.0)[:, 1] > plain[:, 1]).all()
    # a classifier without class counts (an older file) is not adjusted
    old = dataclasses.replace(clf, class_counts=None)
    assert probabilities(old, images, "hflip", 1.0) == pytest.approx(plain)
    for bad, got in ((-0.5, "-0.5"), (float("inf"), "inf"), (float("nan"), "nan"),
                     (np.float32(-1), "-1.0")):
        with pytest.raises(ValueError) as refused:
            probabilities(clf, images, "hflip", bad)
        assert str(refused.value) == f"logit adjustment: got {got}; expected a finite number >= 0"


def test_cli_json_lines_errors_and_annotations(checkpoint, photos, tmp_path, capsys):
    annotated = tmp_path / "annotated"
    code = main([str(photos), str(photos / "missing.jpg"), "--model", str(checkpoint), "--json",
                 "--annotate", str(annotated)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # some files could not be read; the others were still predicted
    by_file = {Path(line["file"]).name: line for line in lines}
    assert by_file["broken.jpg"]["error"].startswith("cannot read image")
    assert by_file["missing.jpg"]["error"] == "no such file"
    for name in ("astronaut.png", "astronaut_640x480.jpg"):
        assert by_file[name]["whole_image"] is False and len(by_file[name]["box"]) == 4
        assert set(by_file[name]["probabilities"]) == set(CLASS_NAMES)
    assert by_file["crop48.png"]["whole_image"] is True
    assert len(lines) == 5
    written = sorted(p.name for p in annotated.iterdir())
    assert written == ["astronaut.png", "astronaut_640x480.png", "crop48.png"]
    drawn = np.asarray(Image.open(annotated / "astronaut.png"))
    original = skdata.astronaut()
    assert drawn.shape == original.shape
    x, y, w, h = by_file["astronaut.png"]["box"]
    assert not np.array_equal(drawn[y:y + h, x], original[y:y + h, x])  # the box's left edge
    assert np.array_equal(drawn[400:, 400:], original[400:, 400:])  # elsewhere untouched


def test_cli_table_and_help(checkpoint, photos, capsys):
    assert main([str(photos / "astronaut.png"), "--model", str(checkpoint), "--tta", "hflip",
                 "--timing"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split("\t")[:4] == ["file", "face", "box (x,y w x h)", "expression"]
    cells = row.split("\t")
    assert cells[0].endswith("astronaut.png") and cells[3] in CLASS_NAMES
    assert len(cells[5].split()) == 7 and cells[6].endswith(" ms")
    assert main(["x.jpg", "--model", str(checkpoint.parent / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "ferpipe.predict.cli", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "--annotate DIR" in proc.stdout and "--json" in proc.stdout


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize("option, value, message", [
    ("--tta-crop", "0", "argument --tta-crop: expected 1 or more, got 0"),
    ("--tta-crop", "60", "--tta-crop: 60 pixels is larger than the model's 48-pixel input"),
    ("--margin", "-1", "argument --margin: expected 0.0 and 2.0, got -1"),
    ("--margin", "lots", "argument --margin: expected a number, got 'lots'"),
    ("--max-side", "-5", "argument --max-side: expected 0 or more, got -5"),
    ("--min-face", "3", "argument --min-face: expected 0.0 and 1.0, got 3"),
    ("--logit-adjustment", "-1", "argument --logit-adjustment: got -1; expected a finite number >= 0"),
    ("--logit-adjustment", "inf", "argument --logit-adjustment: got inf; expected a finite number >= 0"),
    ("--logit-adjustment", "nan", "argument --logit-adjustment: got nan; expected a finite number >= 0"),
    ("--logit-adjustment", "1e999",
     "argument --logit-adjustment: got 1e999; expected a finite number >= 0"),
    ("--logit-adjustment", "lots",
     "argument --logit-adjustment: got 'lots'; expected a finite number >= 0"),
])
def test_bad_options_are_usage_errors_before_any_file_is_read(checkpoint, photos, capsys,
                                                              option, value, message):
    with pytest.raises(SystemExit) as exit_:
        main([str(photos / "astronaut.png"), "--model", str(checkpoint), option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr()
    assert message in err.err and "Traceback" not in err.err and err.out == ""
    assert [line for line in err.err.splitlines() if "error" in line] == [
        f"ferpipe-predict: error: {message}"]  # one line, after argparse's usage


def test_an_annotate_target_that_is_a_file_is_a_usage_error(checkpoint, photos, tmp_path, capsys):
    target = tmp_path / "out.png"
    target.write_bytes(b"mine")
    with pytest.raises(SystemExit):
        main([str(photos / "astronaut.png"), "--model", str(checkpoint), "--annotate",
              str(target)])
    assert f"--annotate: {target} exists and is not a folder" in capsys.readouterr().err
    assert target.read_bytes() == b"mine"


def test_bad_files_are_error_lines_and_the_others_go_on(checkpoint, photos, tmp_path, capsys):
    huge = tmp_path / "huge.png"
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", 20_000, 20_000)  # the header claims 20000 x 20000 pixels
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    huge.write_bytes(bytes(png))
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    code = main([str(huge), str(fifo), str(photos / "crop48.png"), "--model", str(checkpoint),
                 "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert lines[0]["file"] == str(huge) and lines[0]["error"].startswith(
        "cannot read image: too large")
    assert lines[1] == {"file": str(fifo), "error": "not a regular file"}
    assert lines[2]["whole_image"] is True and "error" not in lines[2]


@pytest.mark.parametrize("content, reason", [
    (b"", "cannot be read as a checkpoint"),
    (os.urandom(256), "cannot be read as a checkpoint"),
    ("state_dict", "not a checkpoint of the train stage (a dict with state_dict, class_names, "
                   "mean, std, image_size, model); missing ['state_dict', 'class_names', 'mean', "
                   "'std', 'image_size', 'model']"),
    ("std0", "normalization mean 0.5, std 0.0; expected finite values and std > 0"),
])
def test_checkpoint_problems_are_one_line_naming_the_file(checkpoint, tmp_path, capsys, content,
                                                          reason):
    bad = tmp_path / "model.pt"
    if content == "state_dict":  # a plain state_dict, as torch.save(model.state_dict()) writes
        torch.save(Classifier.from_checkpoint(checkpoint).model.state_dict(), bad)
    elif content == "std0":
        ckpt = torch.load(checkpoint, weights_only=True)
        torch.save({**ckpt, "std": 0.0}, bad)
    else:
        bad.write_bytes(content)
    assert main(["x.jpg", "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and reason in err
    assert len(err.splitlines()) == 1 and "weights_only=False" not in err


def test_predict_decodes_photos_as_prepare_decodes_training_images(tmp_path):
    """One decode function: EXIF orientation and 16-bit scaling agree with prepare's."""
    from ferpipe.data.decode import decode_image
    from ferpipe.predict.predictor import load_gray

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(rotated, exif=exif, quality=100)
    _, gray = load_gray(rotated)
    assert gray.shape == (64, 48)  # upright
    prepared, _ = decode_image(rotated.read_bytes(), size=48)
    expected = np.asarray(Image.fromarray(gray).resize((48, 48), Image.BILINEAR))
    np.testing.assert_array_equal(prepared, expected)
    wide = tmp_path / "wide.png"
    Image.fromarray((rng.integers(0, 65536, (48, 48))).astype(np.uint16)).save(wide)
    _, gray16 = load_gray(wide)
    np.testing.assert_array_equal(gray16, decode_image(wide.read_bytes())[0])
    assert gray16.max() > 200  # scaled from 16 bits, not clipped to 255 and collapsed
    assert len(np.unique(gray16)) > 100


def test_tta_views_of_a_model_trained_on_crops():
    x = torch.randn(2, 1, 48, 48)
    (centre,) = tta_views(x, "none", input_size=40)
    torch.testing.assert_close(centre, x[..., 4:44, 4:44])
    plain, mirror = tta_views(x, "hflip", input_size=40)
    torch.testing.assert_close(mirror, x[..., 4:44, 4:44].flip(-1))
    crops = list(tta_views(x, "ten_crop", input_size=40))  # crops of the training crop's side
    assert len(crops) == 10 and all(v.shape == (2, 1, 40, 40) for v in crops)
    torch.testing.assert_close(crops[0], x[..., :40, :40])  # no resizing
    resized = list(tta_views(x, "ten_crop", crop=44, input_size=40))
    assert all(v.shape == (2, 1, 40, 40) for v in resized)
    whole = list(tta_views(x, "ten_crop"))  # a model trained on whole images: 44 px, resized
    assert all(v.shape == x.shape for v in whole)


def test_logit_adjustment_subtracts_tau_log_prior():
    from ferpipe.model.inference import adjust_logits

    logits = torch.zeros(2, 3)
    out = adjust_logits(logits, [80, 15, 5], 1.0)
    torch.testing.assert_close(out[0], -torch.tensor([0.8, 0.15, 0.05]).log())
    assert out.argmax(1).tolist() == [2, 2]  # the rare class wins a tie
    assert adjust_logits(logits, [80, 15, 5], 0.0) is logits
    assert adjust_logits(logits, None, 1.0) is logits


def test_tta_views_of_small_images_check_the_ten_crop_only_when_used():
    x = torch.randn(2, 1, 32, 32)
    assert [v.shape for v in tta_views(x, "hflip")] == [x.shape, x.shape]
    crops = list(tta_views(x, "ten_crop"))  # 11/12 of the side, resized back
    assert len(crops) == 10 and all(v.shape == x.shape for v in crops)
    with pytest.raises(ValueError, match="a 40-pixel crop does not fit a 32x32 image"):
        list(tta_views(x, "ten_crop", crop=40))


# --------------------------------------------------------------------------- video and webcam

FPS = 10


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 12-frame 320 x 320 mp4v video at 10 frames/s of the astronaut photo, shifted 2 pixels
    right per frame."""
    import cv2

    path = tmp_path_factory.mktemp("video") / "astronaut.mp4"
    frame = cv2.cvtColor(cv2.resize(skdata.astronaut(), (320, 320)), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (320, 320))
    for i in range(12):
        writer.write(np.roll(frame, 2 * i, axis=1))
    writer.release()
    return path


def read_frames(path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    cap.release()
    return frames


def test_video_csv_has_one_row_per_frame_with_its_time(checkpoint, video, capsys):
    import csv

    assert main([str(video), "--model", str(checkpoint), "--tta", "none"]) == 0
    out = capsys.readouterr()
    rows = list(csv.DictReader(out.out.splitlines()))
    assert list(rows[0]) == ["file", "frame", "time_s", "face", "x", "y", "w", "h", "expression",
                             "probability", *CLASS_NAMES, "track", "smoothed_expression",
                             "smoothed_probability"]
    assert [int(r["frame"]) for r in rows] == list(range(12))  # one face per frame
    assert [float(r["time_s"]) for r in rows] == pytest.approx([i / FPS for i in range(12)])
    assert {r["face"] for r in rows} == {"0"} and {r["file"] for r in rows} == {str(video)}
    assert {r["track"] for r in rows} == {"0"}  # the moving face is followed as one
    xs = [int(r["x"]) for r in rows]  # the face moves right by 2 x 320/512 pixels a frame
    assert xs[-1] - xs[0] == pytest.approx(11 * 2, abs=6)
    first = rows[0]
    probs = {n: float(first[n]) for n in CLASS_NAMES}
    assert first["expression"] == max(probs, key=probs.get)
    assert float(first["probability"]) == probs[first["expression"]]
    # the same face as the predict command finds on the decoded frame as an image
    gray = np.asarray(Image.fromarray(read_frames(video)[0][..., ::-1]).convert("L"))
    (face,) = Predictor(Classifier.from_checkpoint(checkpoint), tta="none").predict_image(
        gray, "frame")
    assert [int(first[k]) for k in "xywh"] == list(face.box)
    assert probs == pytest.approx(face.probabilities, abs=1e-4)


def test_video_every_n_frames_json_and_annotated_video(checkpoint, video, tmp_path, capsys):
    annotated = tmp_path / "annotated"
    assert main([str(video), "--model", str(checkpoint), "--every", "3", "--json",
                 "--annotate", str(annotated)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["frame"] for r in rows] == [0, 3, 6, 9]
    assert [r["time_s"] for r in rows] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert set(rows[0]) == {"file", "frame", "time_s", "face", "box", "expression",
                            "probability", "probabilities", "track", "smoothed_expression",
                            "smoothed_probability", "smoothed_probabilities"}
    assert [p.name for p in annotated.iterdir()] == ["astronaut.annotated.mp4"]
    drawn, original = read_frames(annotated / "astronaut.annotated.mp4"), read_frames(video)
    assert len(drawn) == 12 and drawn[0].shape == original[0].shape
    for i in (0, 4):  # frame 4 carries the boxes of frame 3
        x, y, w, h = rows[i // 3 if i else 0]["box"]
        edge = drawn[i][y + 5:y + h - 5, x].astype(int) - original[i][y + 5:y + h - 5, x]
        assert np.abs(edge).mean() > 40  # the box's left edge, green over the face
        corner = drawn[i][260:, 260:].astype(int) - original[i][260:, 260:]
        assert np.abs(corner).mean() < 5  # elsewhere only the codec's noise


def test_frames_without_a_face_still_get_a_row(checkpoint, tmp_path, capsys):
    """Per-frame results: a classified frame in which no face is found gets a row with its
    frame and time and nothing else, so "no face" differs from "not classified"."""
    import csv

    import cv2

    path = tmp_path / "blank_then_face.mp4"
    face = cv2.cvtColor(cv2.resize(skdata.astronaut(), (320, 320)), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (320, 320))
    for i in range(6):
        writer.write(np.full_like(face, 128) if i < 3 else face)
    writer.release()
    assert main([str(path), "--model", str(checkpoint), "--tta", "none"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [int(r["frame"]) for r in rows] == list(range(6))
    assert [float(r["time_s"]) for r in rows] == pytest.approx([i / FPS for i in range(6)])
    for row in rows[:3]:
        assert row["file"] == str(path)
        rest = {k: v for k, v in row.items() if k not in ("file", "frame", "time_s")}
        assert rest == dict.fromkeys(["face", "x", "y", "w", "h", "expression", "probability",
                                      *CLASS_NAMES, "track", "smoothed_expression",
                                      "smoothed_probability"], "")
    assert all(r["face"] == "0" and r["expression"] in CLASS_NAMES for r in rows[3:])

    assert main([str(path), "--model", str(checkpoint), "--every", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["frame"] for r in lines] == [0, 2, 4]
    assert lines[0] == {"file": str(path), "frame": 0, "time_s": 0.0, "face": None, "box": None,
                        "expression": None, "probability": None, "probabilities": None,
                        "track": None, "smoothed_expression": None, "smoothed_probability": None,
                        "smoothed_probabilities": None}
    assert lines[2]["face"] == 0 and set(lines[2]["probabilities"]) == set(CLASS_NAMES)


def test_max_frames_and_mixed_inputs(checkpoint, video, photos, capsys):
    assert main([str(video), "--model", str(checkpoint), "--max-frames", "5", "--json"]) == 0
    assert [json.loads(line)["frame"] for line in capsys.readouterr().out.splitlines()] == [
        0, 1, 2, 3, 4]
    assert main([str(photos / "astronaut.png"), str(video), "--model", str(checkpoint),
                 "--json", "--every", "6"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert ["frame" in r for r in rows] == [False, True, True]
    with pytest.raises(SystemExit) as exit_:
        main([str(photos / "astronaut.png"), str(video), "--model", str(checkpoint)])
    assert exit_.value.code == 2
    assert "images and videos in one call need --json" in capsys.readouterr().err


def test_unreadable_videos_are_one_error_line_each_and_write_nothing(checkpoint, tmp_path,
                                                                     capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing more" * 4)
    annotated = tmp_path / "annotated"
    for path, reason in ((tmp_path / "missing.mp4", "no such file"),
                         (broken, "cannot decode video")):
        assert main([str(path), "--model", str(checkpoint), "--annotate", str(annotated)]) == 1
        out = capsys.readouterr()
        assert out.err == f"error: {path}: {reason}\n" and out.out == ""
        assert main([str(path), "--model", str(checkpoint), "--json"]) == 1
        assert json.loads(capsys.readouterr().out) == {"file": str(path), "error": reason}
    assert not annotated.exists() or list(annotated.iterdir()) == []


def test_a_webcam_that_cannot_be_opened_is_one_error_line(checkpoint, capsys):
    assert main(["--webcam", "99", "--model", str(checkpoint)]) == 1
    out = capsys.readouterr()
    assert out.err == "error: --webcam 99: cannot open camera 99\n" and out.out == ""
    with pytest.raises(SystemExit):
        main(["--model", str(checkpoint)])
    assert "give image or video files or folders, or --webcam INDEX" in capsys.readouterr().err


def test_webcam_stops_at_max_frames_or_ctrl_c(checkpoint, video, tmp_path, capsys,
                                              monkeypatch):
    """A webcam that is the test video: `--max-frames` stops it; Ctrl-C ends it normally and
    keeps the annotated video of the frames so far."""
    import cv2

    import ferpipe.predict.video as video_io

    class Camera:
        def __init__(self, interrupt_at):
            self.cap, self.reads, self.interrupt_at = cv2.VideoCapture(str(video)), 0, interrupt_at

        def read(self):
            self.reads += 1
            if self.reads == self.interrupt_at:
                raise KeyboardInterrupt
            return self.cap.read()

        def get(self, prop):
            return self.cap.get(prop)

        def release(self):
            self.cap.release()

    opened, cameras = [], []

    def open_camera(source):
        opened.append(source)
        cameras.append(Camera(interrupt_at=5 if len(opened) > 1 else None))
        return cameras[-1]

    monkeypatch.setattr(video_io, "open_video", open_camera)
    # a clock that moves a quarter second per frame read: live times are seconds since the first
    monkeypatch.setattr(video_io, "time", SimpleNamespace(
        perf_counter=lambda: 10.0 + 0.25 * (cameras[-1].reads if cameras else 0)))
    assert main(["--webcam", "0", "--model", str(checkpoint), "--max-frames", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert opened == [0] and len(lines) == 4 and lines[1].startswith("webcam:0,0,")
    assert [float(line.split(",")[2]) for line in lines[1:]] == [0.0, 0.25, 0.5]
    annotated = tmp_path / "annotated"
    assert main(["--webcam", "0", "--model", str(checkpoint), "--json", "--annotate",
                 str(annotated)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4  # frames 0-3; Ctrl-C at read 5
    assert [p.name for p in annotated.iterdir()] == ["webcam0.annotated.mp4"]
    assert len(read_frames(annotated / "webcam0.annotated.mp4")) == 4


def test_help_shows_every_options_default():
    blocks = help_blocks("ferpipe.predict.cli")
    assert {"--webcam INDEX", "--every N", "--max-frames N", "--model MODEL"} <= set(blocks)
    assert [name for name, text in blocks.items() if "default" not in text] == []
    assert "(default None: the detector's" in blocks["--margin MARGIN"]
    assert "yunet 0, haar 0)" in blocks["--margin MARGIN"]
    assert "(default: 1)" in blocks["--every N"]


def test_labels_are_readable_on_a_photo():
    """On a 512-pixel photo a 99-pixel face's label text is at least 15 pixels tall."""
    from ferpipe.predict.drawing import draw
    from ferpipe.predict.predictor import Prediction

    face = Prediction(file="p", face=0, box=(174, 64, 99, 99), expression="happy",
                      probability=0.9, probabilities={}, whole_image=False)
    canvas = draw(np.full((512, 512, 3), 255, np.uint8), [face])
    black = np.flatnonzero((canvas[:64, 174:400] < 60).all(axis=2).any(axis=1))
    assert black.size and black.max() - black.min() + 1 >= 15


def test_photos_of_extreme_aspect_ratio_get_a_row_and_the_others_go_on(checkpoint, tmp_path,
                                                                        capsys):
    """A 5000 x 1 strip used to abort the whole call with a cv2.error from the downscale to
    --max-side (a side rounded to 0 pixels); every such photo now gets its whole-image row."""
    shapes = {"wide.png": (1, 5000), "tall.png": (5000, 1), "thin.png": (3, 700)}
    for name, shape in shapes.items():
        Image.fromarray(np.full(shape, 128, np.uint8)).save(tmp_path / name)
    Image.fromarray(skdata.astronaut()).save(tmp_path / "z_astronaut.png")
    code = main([str(tmp_path), "--model", str(checkpoint), "--json", "--annotate",
                 str(tmp_path / "annotated")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [Path(line["file"]).name for line in lines] == [
        "tall.png", "thin.png", "wide.png", "z_astronaut.png"]
    for line in lines[:3]:
        height, width = shapes[Path(line["file"]).name]
        assert line["whole_image"] is True and line["box"] == [0, 0, width, height]
    assert lines[3]["whole_image"] is False  # the photo after them is still searched for faces
    assert len(list((tmp_path / "annotated").glob("*.png"))) == 4


def test_the_detector_finds_no_face_in_an_image_thinner_than_its_window():
    detector = HaarDetector()
    for shape in ((1, 5000), (5000, 1), (23, 4000), (3, 700)):
        assert detector.detect(np.full(shape, 128, np.uint8)) == []


def group_photo(faces: int, side: int) -> np.ndarray:
    """A gray `side` x `side` photo of `faces` copies of the astronaut's head (scikit-image's
    public-domain portrait; the face is 99 pixels wide), one centred in each cell of a square
    grid: faces of 99 / side of the photo's side."""
    gray = np.asarray(Image.fromarray(skdata.astronaut()).convert("L").resize((640, 480)))
    head = gray[24:204, 134:314]  # 180 x 180 around the face at (174, 64), 99 x 99
    k = int(round(faces ** 0.5))
    photo = np.full((side, side), 128, np.uint8)
    step = side // k
    for i in range(k):
        for j in range(k):
            y, x = i * step + (step - 180) // 2, j * step + (step - 180) // 2
            photo[y:y + 180, x:x + 180] = head
    return photo


@pytest.mark.parametrize("faces, side", [(4, 1400), (16, 2000), (36, 1800)])
def test_group_photos_have_every_face_found(faces, side):
    """Faces of 5-7% of the photo's side, below the portrait pass's 15%: the small-face pass
    finds each (they used to be one whole_image answer)."""
    photo = group_photo(faces, side)
    detector = HaarDetector()
    assert detector._search(photo, detector.max_side, lambda s: max(20, int(0.15 * s))) == []
    boxes = [face.box for face in detector.detect(photo)]
    assert len(boxes) == faces
    step = side // int(round(faces ** 0.5))
    cells = {(y // step, x // step) for x, y, w, h in boxes}
    assert len(cells) == faces  # one in each cell: no duplicates, none missed
    assert all(90 <= w <= 130 for _, _, w, _ in boxes)  # in the photo's pixels
    assert HaarDetector(small_side=None).detect(photo) == []  # the portrait pass alone


def test_predict_labels_each_face_of_a_group_photo(checkpoint, tmp_path, capsys):
    Image.fromarray(group_photo(16, 2000)).save(tmp_path / "group.jpg")
    assert main([str(tmp_path / "group.jpg"), "--model", str(checkpoint), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 16 and not any(line["whole_image"] for line in lines)
    assert sorted(line["face"] for line in lines) == list(range(16))


# --------------------------------------------------------------------------- one check for tau


@pytest.mark.parametrize("value, got", [
    (-1, "-1"), (np.int64(-2), "-2"), (-0.25, "-0.25"), (float("inf"), "inf"),
    (float("-inf"), "-inf"), (np.float64("nan"), "nan"), (True, "True"), ("0.5", "'0.5'"),
    (None, "None"), ([0.5], "[0.5]")])
def test_a_bad_logit_adjustment_is_refused_in_the_same_words_everywhere(value, got):
    """`ferpipe.core.options` is the one check of tau: probabilities, the served model's params
    and every command's --logit-adjustment say the same."""
    from ferpipe.core.options import check_logit_adjustment

    with pytest.raises(ValueError) as refused:
        check_logit_adjustment(value, "params.logit_adjustment")
    assert str(refused.value) == f"params.logit_adjustment: got {got}; expected a finite number >= 0"


def test_a_good_logit_adjustment_is_a_float():
    import argparse

    from ferpipe.core.options import check_logit_adjustment, logit_adjustment_type

    for value in (0, np.float32(0.5), np.int64(2), 1e300):
        got = check_logit_adjustment(value)
        assert type(got) is float and got == float(value)
    assert logit_adjustment_type("0.25") == 0.25 and logit_adjustment_type("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"^got -inf; expected a finite number"):
        logit_adjustment_type("-inf")


# --------------------------------------------------------------------------- face options


def head_photo(width: int, height: int, heads: list[tuple[int, int, int]]) -> np.ndarray:
    """A gray `width` x `height` photo (mid-grey) with copies of the astronaut's head pasted
    at (x, y), each resized to `side` x `side` pixels: the 200 x 200 pixels of
    skimage.data.astronaut() (public domain) around its 99-pixel face, so a pasted face is
    about `side` / 2 pixels wide, its centre at (x + side / 2, y + side / 2)."""
    gray = np.asarray(Image.fromarray(skdata.astronaut()).convert("L"))
    head = Image.fromarray(gray[14:214, 124:324])  # the face at (50, 50), 99 x 99
    photo = np.full((height, width), 128, np.uint8)
    for x, y, side in heads:
        photo[y:y + side, x:x + side] = np.asarray(head.resize((side, side), Image.BILINEAR))
    return photo


def twice(gray: np.ndarray) -> np.ndarray:
    """`gray` at twice its size, each pixel repeated 2 x 2: downscaled by half with OpenCV's
    area interpolation (the detector's), it is `gray` again, pixel for pixel."""
    return np.repeat(np.repeat(gray, 2, axis=0), 2, axis=1)


def faces_found(path: Path, model: str | Path, capsys, *options: str) -> list[dict]:
    """The JSON lines of `ferpipe-predict PATH --model MODEL --json --tta none OPTIONS`."""
    assert main([str(path), "--model", str(model), "--json", "--tta", "none",
                 *options]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def centre(box) -> tuple[float, float]:
    x, y, w, h = box
    return x + w / 2, y + h / 2


def test_small_faces_finds_what_the_portrait_pass_misses_down_to_its_window(checkpoint, tmp_path,
                                                                             capsys):
    """One 99-pixel face in a 1000-pixel photo: 10% of its side, under --min-face's 15%, so the
    portrait pass misses it. The small-face pass finds it at --small-faces 1600 (the default:
    the photo's own size) and at 500 (searched at half size, the box mapped back to the photo's
    pixels); at 200 the face is 20 pixels, under the cascade's 24-pixel window: the whole
    photo is classified."""
    half = head_photo(500, 500, [(200, 160, 100)])
    photo = twice(half)  # the face: 99 pixels, centred at (500, 420)
    path = tmp_path / "one_small_face.png"
    Image.fromarray(photo).save(path)
    assert HaarDetector(small_side=None).detect(photo) == []  # the portrait pass alone

    (full,) = faces_found(path, checkpoint, capsys, "--detector", "haar")
    assert full["whole_image"] is False
    assert np.hypot(*np.subtract(centre(full["box"]), (500, 420))) < 5
    assert full["box"] == list(HaarDetector(small_side=0).detect(photo)[0].box)  # 1000 < 1600: as is

    (halved,) = faces_found(path, checkpoint, capsys, "--detector", "haar", "--small-faces", "500")
    at_half = HaarDetector()._search(half, 0, lambda side: 24)  # the pass on the half photo
    assert len(at_half) == 1 and halved["whole_image"] is False
    assert halved["box"] == [2 * v for v in at_half[0]] != full["box"]  # in the photo's pixels

    (coarse,) = faces_found(path, checkpoint, capsys, "--detector", "haar", "--small-faces", "200")
    assert coarse["whole_image"] is True and coarse["box"] == [0, 0, 1000, 1000]


def test_min_face_drops_the_faces_smaller_than_it(checkpoint, tmp_path, capsys):
    """Faces of about 150 and 80 pixels in a 720 x 440 photo (34% and 18% of its shorter side):
    the default --min-face 0.15 finds both, largest first; 0.25 only the larger one."""
    path = tmp_path / "two_faces.png"
    Image.fromarray(head_photo(720, 440, [(20, 20, 300), (340, 100, 160)])).save(path)
    big, small = (170, 170), (420, 180)  # the pasted faces' centres
    both = faces_found(path, checkpoint, capsys, "--detector", "haar")
    assert [line["face"] for line in both] == [0, 1]
    assert [np.hypot(*np.subtract(centre(line["box"]), c)) < 8
            for line, c in zip(both, (big, small))] == [True, True]
    (one,) = faces_found(path, checkpoint, capsys, "--detector", "haar", "--min-face", "0.25")
    assert np.hypot(*np.subtract(centre(one["box"]), big)) < 8 and one["whole_image"] is False


def test_max_side_sets_the_detection_scale_and_boxes_stay_in_the_photos_pixels(checkpoint,
                                                                              tmp_path, capsys):
    """The astronaut at 1024 pixels (each pixel repeated 2 x 2): searched at --max-side 512 it
    is the 512-pixel photo again, and its box is exactly twice that photo's; at full size
    (--max-side 0) the search sees another image and answers another box; at 64 pixels (and
    a small-face pass at 64 too) the face is under the cascade's window: the whole image."""
    gray = np.asarray(Image.fromarray(skdata.astronaut()).convert("L"))
    small, large = tmp_path / "astronaut512.png", tmp_path / "astronaut1024.png"
    Image.fromarray(gray).save(small)
    Image.fromarray(twice(gray)).save(large)
    (original,) = faces_found(small, checkpoint, capsys, "--detector", "haar", "--max-side", "512")
    (scaled,) = faces_found(large, checkpoint, capsys, "--detector", "haar", "--max-side", "512")
    assert not original["whole_image"] and not scaled["whole_image"]
    assert scaled["box"] == [2 * v for v in original["box"]]
    (full,) = faces_found(large, checkpoint, capsys, "--detector", "haar", "--max-side", "0")
    assert not full["whole_image"] and full["box"] != scaled["box"]
    assert full["box"] == list(HaarDetector(max_side=0).detect(twice(gray))[0].box)
    (tiny,) = faces_found(large, checkpoint, capsys, "--detector", "haar", "--max-side", "64",
                          "--small-faces", "64")
    assert tiny["whole_image"] is True and tiny["box"] == [0, 0, 1024, 1024]


def test_margin_changes_the_crop_that_is_classified_not_the_box(checkpoint, photos, capsys):
    """--margin grows the square crop around the detector's box: each answer is the
    classifier's on the crop with that margin (the box reported is the detector's)."""
    gray = np.asarray(Image.open(photos / "astronaut.png").convert("L"))
    clf = Classifier.from_checkpoint(checkpoint)
    answers = {}
    for margin in ("0", "0.5"):
        (answers[margin],) = faces_found(photos / "astronaut.png", checkpoint, capsys, "--detector", "haar",
                                         "--margin", margin, "--logit-adjustment", "0")
        crop = crop_face(gray, tuple(answers[margin]["box"]), float(margin), 48)
        expected = clf.predict(crop[None], "none")[0]
        assert [answers[margin]["probabilities"][n] for n in CLASS_NAMES] == pytest.approx(
            expected.tolist(), abs=1e-6)
    assert answers["0"]["box"] == answers["0.5"]["box"]
    assert answers["0"]["probabilities"] != pytest.approx(answers["0.5"]["probabilities"],
                                                          abs=1e-4)


# --------------------------------------------------------------------------- MLflow model URIs


@pytest.fixture(scope="module")
def registry_store(tmp_path_factory):
    """A temporary SQLite MLflow store holding two runs, each with a random checkpoint logged
    as `checkpoint/model.pt` as the train stage logs it, registered as versions 1 and 2 of
    `fer-test` (alias `candidate`: version 2); returns (its URI, [(run id, checkpoint)] in
    version order)."""
    import mlflow

    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri writes it there
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient()
        experiment = client.create_experiment("predict", (folder / "artifacts").as_uri())
        client.create_registered_model("fer-test")
        runs = []
        for seed in (1, 2):
            ckpt = random_checkpoint(folder / f"seed{seed}" / "model.pt", seed=seed)
            run_id = client.create_run(experiment).info.run_id
            client.log_artifact(run_id, str(ckpt), "checkpoint")
            client.set_terminated(run_id)
            client.create_model_version("fer-test", f"runs:/{run_id}/checkpoint", run_id=run_id)
            runs.append((run_id, ckpt))
        client.set_registered_model_alias("fer-test", "candidate", "2")
    finally:
        mlflow.set_tracking_uri(saved)
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
    return uri, runs


@pytest.fixture()
def registry(registry_store, monkeypatch):
    """`registry_store`'s runs, with MLFLOW_TRACKING_URI naming the store (as a user sets it
    for `ferpipe-predict --model models:/...`)."""
    import mlflow

    uri, runs = registry_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield runs
    mlflow.set_tracking_uri(None)  # mlflow's own global (load_classifier sets it) outlives the env


def test_model_uris_resolve_to_the_runs_checkpoint(registry, photos, capsys):
    """models:/<name>/<version>, models:/<name>@<alias> and runs:/<run_id>/... classify with
    the checkpoint that run logged: the same answers as the file itself, and each version its
    own."""
    (run1, ckpt1), (run2, ckpt2) = registry
    crop = photos / "crop48.png"
    by_file = [faces_found(crop, ckpt, capsys)[0]["probabilities"] for ckpt in (ckpt1, ckpt2)]
    assert by_file[0] != pytest.approx(by_file[1], abs=1e-4)  # the two models differ
    for ref, which in (("models:/fer-test/1", 0), ("models:/fer-test/2", 1),
                       ("models:/fer-test@candidate", 1), (f"runs:/{run1}/checkpoint/model.pt", 0),
                       (f"runs:/{run2}", 1)):
        (answer,) = faces_found(crop, ref, capsys)
        assert answer["probabilities"] == pytest.approx(by_file[which], abs=1e-6), ref


@pytest.mark.parametrize("ref, reason", [
    ("models:/fer-test/7", "cannot resolve the model"),
    ("models:/fer-test@production", "cannot resolve the model"),
    ("runs:/0123456789abcdef0123456789abcdef", "cannot resolve the model"),
])
def test_a_model_uri_that_cannot_be_resolved_is_one_error_line(registry, photos, capsys, ref,
                                                               reason):
    assert main([str(photos / "crop48.png"), "--model", ref]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(f"error: {ref}: {reason}: ")
    assert len(out.err.splitlines()) == 1 and "Traceback" not in out.err


# --------------------------------------------------------------------------- Ctrl-C in a file


def test_ctrl_c_during_a_video_file_exits_130_and_leaves_no_annotated_video(
        checkpoint, video, tmp_path, capsys, monkeypatch):
    """Ctrl-C while a file is read (here: at its 6th frame) stops the command with status 130
    and one error line; the rows of the frames done are printed, and the annotated video,
    being written under a temporary name until then, is removed."""
    import cv2

    import ferpipe.predict.video as video_io

    annotated = tmp_path / "annotated"
    seen = []

    class Interrupted:
        def __init__(self, source):
            self.cap, self.reads = cv2.VideoCapture(str(source)), 0

        def read(self):
            self.reads += 1
            if self.reads == 6:
                seen.extend(sorted(p.name for p in annotated.iterdir()))
                raise KeyboardInterrupt
            return self.cap.read()

        def get(self, prop):
            return self.cap.get(prop)

        def release(self):
            self.cap.release()

    monkeypatch.setattr(video_io, "open_video", Interrupted)
    code = main([str(video), "--model", str(checkpoint), "--tta", "none", "--json",
                 "--annotate", str(annotated)])
    out = capsys.readouterr()
    assert code == 130
    assert out.err == f"error: {video}: interrupted\n"
    assert [json.loads(line)["frame"] for line in out.out.splitlines()] == [0, 1, 2, 3, 4]
    assert seen == [".astronaut.annotated.partial.mp4"]  # it was being written
    assert list(annotated.iterdir()) == []
