"""The released model: float16 storage of an ONNX export, its accuracy guard against the
checkpoint, the replace-only-when-better rule, the default-model choice of `ferpipe-predict`
and of the served model, and (when the package ships one) the released file itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from ferpipe.core.errors import CheckpointError, run_main
from ferpipe.core.files import sha256_of
from ferpipe.data.splits import save_split
from ferpipe.model import released
from ferpipe.model.export import check_images, export_onnx, load_onnx_classifier
from ferpipe.model.inference import Classifier, probabilities
from ferpipe.predict.cli import main as predict_main
from ferpipe.predict.predictor import DEFAULT_MODEL, default_model
from ferpipe.serve.pyfunc import save_serving_model
from ferpipe.tools import release as rel
from tests.fakedata import face_like
from tests.test_export import make_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # Without class counts: a random model's near-uniform probabilities, logit-adjusted, would
    # predict the rarest class for every image, and the checks below would not see the model.
    return make_checkpoint(tmp_path_factory.mktemp("release") / "model.pt", seed=3,
                           class_counts=None)


@pytest.fixture(scope="module")
def prepared(checkpoint, tmp_path_factory):
    """A prepared folder (val.npz, test.npz) whose labels are the checkpoint's own predictions
    with the release's default scoring (ten-crop, logit adjustment 0.5) on 60 of 80 face-like
    images and other classes on the rest, so the checkpoint scores exactly 75% and a released
    model that disagrees on any image scores differently."""
    folder = tmp_path_factory.mktemp("prepared")
    full = Classifier.from_checkpoint(checkpoint)
    rng = np.random.default_rng(0)
    for name in ("val", "test"):
        images = np.stack([face_like(i % 7, rng) for i in range(80)])
        labels = probabilities(full, images).argmax(1)
        labels[60:] = (labels[60:] + 1) % 7
        save_split({"images": images, "labels": labels.astype(np.int64),
                    "files": np.array([f"{name}_{i}.png" for i in range(80)])},
                   folder / f"{name}.npz")
    return folder


def test_half_storage_computes_as_the_export_with_rounded_weights(checkpoint, tmp_path):
    """The float16-stored graph gives onnxruntime the export's weights rounded to float16 and
    computes in float32: its logits equal those of the fp32 export whose weights were rounded
    in place (same graph, no casts), within float32 rounding; they differ from the unrounded
    export's by float16 rounding only; the file is about half the size."""
    from onnx import numpy_helper

    full_path = export_onnx(checkpoint, tmp_path / "full.onnx")
    proto = rel.half_storage(onnx.load(full_path))
    half_path = tmp_path / "half.onnx"
    onnx.save(proto, half_path)
    assert 0.48 < half_path.stat().st_size / full_path.stat().st_size < 0.52
    big = [i for i in proto.graph.initializer if int(np.prod(i.dims)) >= rel.MIN_HALF_ELEMENTS]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [onnx.TensorProto.FLOAT]

    rounded = onnx.load(full_path)
    for init in rounded.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.size >= rel.MIN_HALF_ELEMENTS:
            init.CopyFrom(numpy_helper.from_array(w.astype(np.float16).astype(np.float32),
                                                  init.name))
    onnx.save(rounded, tmp_path / "rounded.onnx")
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(10, 1, 40, 40)), dtype=torch.float32)
    got = load_onnx_classifier(half_path).model(x).numpy()
    same = load_onnx_classifier(tmp_path / "rounded.onnx").model(x).numpy()
    full = load_onnx_classifier(full_path).model(x).numpy()
    np.testing.assert_allclose(got, same, rtol=1e-5, atol=1e-5)
    error = np.abs(full - got).max()
    assert 1e-5 < error < 0.01 * np.abs(full).max()  # the rounding shows, and is small


def test_release_writes_the_model_and_its_record(checkpoint, prepared, tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(  # as the train stage writes it
        {"run_id": "a" * 32, "experiment": "fer2013-resnet18", "tracking_uri": "sqlite:///mlflow.db"}))
    card = tmp_path / "card.md"
    card.write_text("# Model card\n")
    info = rel.release(checkpoint, prepared, tmp_path / "released", run_ref=tmp_path / "run.json",
                       card=card)
    folder = tmp_path / "released"
    # no temps; the card copied beside the model
    assert sorted(p.name for p in folder.iterdir()) == ["model-card.md", "model.json", "model.onnx"]
    assert (folder / "model-card.md").read_text() == "# Model card\n"
    assert info["temperature"] == 1.0  # no evaluation recorded for this checkpoint
    assert json.loads((folder / "model.json").read_text()) == info
    assert info["sha256"] == sha256_of(folder / "model.onnx")
    assert info["bytes"] == (folder / "model.onnx").stat().st_size <= rel.MAX_BYTES
    assert info["run_id"] == "a" * 32
    assert (info["tta"], info["logit_adjustment"]) == ("ten_crop", 0.5)  # ferpipe-predict's
    assert info["checkpoint_sha256"] == sha256_of(checkpoint)
    assert info["params"]["model"]["stem"] == "standard"
    for split in ("val", "test"):
        assert info[split]["images"] == 80
        assert info[split]["accuracy_full"] == pytest.approx(0.75)
        assert info[split]["accuracy_released"] >= 0.75 - rel.MAX_DROP_POINTS / 100


def test_a_release_that_does_not_improve_on_val_leaves_the_released_model(
        checkpoint, prepared, tmp_path):
    folder = tmp_path / "released"
    rel.release(checkpoint, prepared, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(rel.ReleaseError, match=r"does not improve on the released model's "
                                               r"7\d\.\d\d%.*--force"):
        rel.release(checkpoint, prepared, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    record = json.loads(before["model.json"])
    record["val"]["accuracy_released"] = 0.5  # an older, worse release: replaced
    (folder / "model.json").write_text(json.dumps(record))
    assert rel.release(checkpoint, prepared, folder)["val"]["accuracy_released"] > 0.5
    rel.release(checkpoint, prepared, folder, force=True)  # --force: replaced regardless


def test_a_lossy_conversion_is_refused_and_writes_nothing(checkpoint, prepared, tmp_path):
    """A conversion that costs accuracy (here: the values of each large weight tensor shuffled,
    seeded) is refused with one message naming the split and the drop; the destination stays
    empty."""
    def lossy(proto):
        from onnx import numpy_helper

        rng = np.random.default_rng(0)
        for init in proto.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype == np.float32 and w.size >= 1024:
                shuffled = rng.permutation(w.ravel()).reshape(w.shape)
                init.CopyFrom(numpy_helper.from_array(shuffled, init.name))
        return proto

    folder = tmp_path / "released"
    with pytest.raises(rel.ReleaseError, match=r"on val against the checkpoint's 75\.00% "
                                               r"\(\d+\.\d\d points lower; at most 0\.3"):
        rel.release(checkpoint, prepared, folder, convert=lossy)
    assert list(folder.iterdir()) == []


def test_the_release_command_checks_the_size_and_force_replaces_a_better_model(
        checkpoint, prepared, tmp_path, monkeypatch, capsys):
    """`python -m ferpipe.tools.release` (its `main`, run as `__main__` runs it) over a released
    model that scores better on val: one byte over MAX_BYTES is refused even with --force; at
    exactly MAX_BYTES the size passes but the model does not improve on val and stays; with
    --force it is replaced. Each refusal is one `error:` line, exit status 1, nothing in the
    destination changed."""
    folder = tmp_path / "released"
    info = rel.release(checkpoint, prepared, folder, tta="none")  # no TTA: 10 x faster
    better = json.loads((folder / "model.json").read_text())
    better["val"]["accuracy_released"] = 0.99
    (folder / "model.json").write_text(json.dumps(better))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    argv = [str(checkpoint), "--prepared", str(prepared), "--dest", str(folder),
            "--run-ref", str(tmp_path / "no_run.json"), "--tta", "none"]

    def command(*options: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_:
            run_main(lambda: rel.main([*argv, *options]))
        out = capsys.readouterr()
        return exit_.value.code, out.out, out.err

    size = info["bytes"]
    monkeypatch.setattr(rel, "MAX_BYTES", size - 1)
    assert command("--force") == (1, "", (
        f"error: {checkpoint}: the released model is {size / 2**20:.1f} MiB; at most "
        f"{(size - 1) / 2**20:.0f} MiB allowed; {folder} is unchanged\n"))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    monkeypatch.setattr(rel, "MAX_BYTES", size)
    val = 100 * info["val"]["accuracy_released"]
    assert command() == (1, "", (
        f"error: {checkpoint}: val accuracy {val:.2f}% does not improve on the released "
        f"model's 99.00% ({folder / 'model.json'}); it stays (--force replaces it anyway)\n"))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    code, out, err = command("--force")
    assert (code, err) == (0, "")
    lines = [f"wrote {folder / 'model.onnx'} ({size / 2**20:.1f} MiB, tta none, logit "
             f"adjustment 0.5):"]
    for split in ("val", "test"):
        s = info[split]
        lines.append(f"  {split}: {100 * s['accuracy_released']:.2f}% released, "
                     f"{100 * s['accuracy_full']:.2f}% checkpoint (80 images)")
    assert out.splitlines() == lines
    replaced = json.loads((folder / "model.json").read_text())
    assert replaced["val"] == info["val"] and replaced["sha256"] == info["sha256"]
    # the repo's model card (docs/model-card.md, relative to the current folder) beside them
    card = ["model-card.md"] if rel.MODEL_CARD.is_file() else []
    assert sorted(p.name for p in folder.iterdir()) == [*card, "model.json", "model.onnx"]


@pytest.mark.parametrize("tau", ["inf", "nan", "-1", "-inf"])
def test_the_release_command_refuses_a_logit_adjustment_that_is_not_finite_and_positive(
        tau, tmp_path):
    """Before anything is read or written: argparse's usage, one error line, status 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "ferpipe.tools.release", "missing.pt", "--dest",
         str(tmp_path / "released"), f"--logit-adjustment={tau}"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(rel.__file__).parents[2])},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error" in line] == [
        f"release.py: error: argument --logit-adjustment: got {tau}; expected a finite number "
        f">= 0"]
    assert not (tmp_path / "released").exists()


def test_release_checks_its_inputs_before_exporting(checkpoint, tmp_path):
    with pytest.raises(Exception, match=r"val\.npz: prepared split not found"):
        rel.release(checkpoint, tmp_path / "nothing", tmp_path / "released")
    assert not (tmp_path / "released").exists()
    (tmp_path / "released").mkdir()
    (tmp_path / "released" / "model.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a released-model record"):
        released.read_info(tmp_path / "released" / "model.json")


@pytest.fixture()
def shipped(checkpoint, prepared, tmp_path, monkeypatch):
    """A released model in a temp folder standing in for the package's, and a cwd without
    models/model.pt."""
    folder = tmp_path / "released"
    rel.release(checkpoint, prepared, folder)
    monkeypatch.setattr(released, "RELEASED_MODEL", folder / "model.onnx")
    monkeypatch.setattr(released, "RELEASED_INFO", folder / "model.json")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return folder


def test_predict_uses_the_checkpoint_when_there_is_one_else_the_released_model(
        shipped, checkpoint, capsys):
    photo = Path("astronaut.png")
    Image.fromarray(skdata.astronaut()).save(photo)
    assert predict_main([str(photo), "--json"]) == 0
    out, err = capsys.readouterr()
    info = json.loads((shipped / "model.json").read_text())
    assert err.strip() == (f"model: the released model {shipped / 'model.onnx'} (test accuracy "
                           f"{100 * info['test']['accuracy_released']:.2f}%, commit "
                           f"{info['commit'][:7]}); {DEFAULT_MODEL} not found")
    released_answer = json.loads(out)
    assert predict_main([str(photo), "--json", "--model", str(shipped / "model.onnx")]) == 0
    assert json.loads(capsys.readouterr().out) == released_answer

    Path("models").mkdir()
    Path(DEFAULT_MODEL).write_bytes(Path(checkpoint).read_bytes())
    assert predict_main([str(photo), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == f"model: {DEFAULT_MODEL} (the train stage's checkpoint)"
    answer = json.loads(out)
    assert answer["box"] == released_answer["box"]
    assert answer["probabilities"] == pytest.approx(released_answer["probabilities"], abs=0.02)


def test_without_either_model_predict_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(released, "RELEASED_MODEL", tmp_path / "none.onnx")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="no released model"):
        default_model()
    Image.fromarray(skdata.astronaut()).save("a.png")
    assert predict_main(["a.png"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {DEFAULT_MODEL}: checkpoint not found and this install has no released model "
        f"({tmp_path / 'none.onnx'}); train one (dvc repro) or pass --model")


def test_the_served_model_folder_of_the_released_model_answers_as_predict(shipped, tmp_path):
    dest, which = save_serving_model(tmp_path / "served")
    assert which.startswith("model: the released model")
    served = mlflow.pyfunc.load_model(str(dest))
    crops = np.stack([face_like(i, np.random.default_rng(i)) for i in range(3)]).astype(np.float32)
    got = served.predict(crops)
    expected = probabilities(load_onnx_classifier(shipped / "model.onnx"),
                             crops.astype(np.uint8))  # the defaults: ten-crop, tau 0.5
    np.testing.assert_allclose(got.to_numpy(), expected, atol=1e-6)
    with pytest.raises(Exception, match="exists; expected a new folder"):
        save_serving_model(dest)


@pytest.mark.skipif(not released.RELEASED_MODEL.is_file(), reason="this checkout ships no released model")
def test_the_shipped_released_model_is_the_one_its_record_describes():
    info = released.read_info()
    assert sha256_of(released.RELEASED_MODEL) == info["sha256"]
    assert released.RELEASED_MODEL.stat().st_size == info["bytes"] <= rel.MAX_BYTES
    for split in ("val", "test"):
        s = info[split]
        assert 100 * (s["accuracy_full"] - s["accuracy_released"]) <= rel.MAX_DROP_POINTS
    classifier = load_onnx_classifier(released.RELEASED_MODEL)
    assert info["logit_adjustment"] == 0 or classifier.class_counts  # the prior travels with it
    probs = classifier.predict(check_images(classifier.image_size)[:1], tta="hflip")
    assert classifier.class_names[int(probs.argmax())] == "happy"  # the astronaut smiles


def test_the_shipped_model_card_is_the_docs_one():
    """The card beside the released model is docs/model-card.md (the README links it)."""
    docs = Path(__file__).resolve().parents[1] / "docs" / "model-card.md"
    assert released.RELEASED_CARD.read_text() == docs.read_text()


def test_calibrating_the_released_model_stores_its_temperature_and_keeps_its_answers(
        checkpoint, prepared, tmp_path):
    """`release --calibrate`: the temperature fitted on val goes into the ONNX metadata and the
    record (sha256 and size updated); the weights, so the answers' argmax, are untouched, and
    the val ECE does not rise."""
    folder = tmp_path / "released"
    rel.release(checkpoint, prepared, folder, tta="none", card=None)
    before = load_onnx_classifier(folder / "model.onnx")
    images = np.load(prepared / "val.npz")["images"]
    plain = before.predict(images, "none")
    assert before.temperature == 1.0
    rel.main(["--calibrate", "--prepared", str(prepared), "--dest", str(folder)])
    info = json.loads((folder / "model.json").read_text())
    after = load_onnx_classifier(folder / "model.onnx")
    assert after.temperature == pytest.approx(info["temperature"]) != 1.0
    assert len(info["temperature"]) == len(after.class_names)  # one per predicted class
    assert info["sha256"] == sha256_of(folder / "model.onnx")
    assert info["bytes"] == (folder / "model.onnx").stat().st_size
    np.testing.assert_array_equal(after.predict(images, "none"), plain)  # same weights
    c = info["calibration"]
    assert c["temperature"] == info["temperature"]
    assert c["val_ece_calibrated"] <= c["val_ece"] + 1e-9
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx"]  # no temps
    with pytest.raises(rel.ReleaseError, match="no released model"):
        rel.calibrate_released(prepared, tmp_path / "empty")
