"""ONNX export: the file, its metadata, its agreement with PyTorch, the onnxruntime classifier,
its MLflow logging and registration, `ferpipe-predict --model x.onnx`, and the latency benchmark."""

import json
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from ferpipe.core.errors import CheckpointError, FerpipeError
from ferpipe.data.splits import CLASS_NAMES
from ferpipe.model.checkpoint import save_checkpoint
from ferpipe.model.export import (
    METADATA_KEYS,
    OnnxMismatchError,
    check_images,
    check_onnx,
    export_onnx,
    load_onnx_classifier,
    log_onnx_model,
)
from ferpipe.model.inference import Classifier
from ferpipe.model.network import build_model
from ferpipe.predict.cli import main
from tests.fakedata import TRAIN_COUNTS, default_params, face_like, help_blocks

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(path: Path, seed: int, input_size: int = 40,
                    class_counts: list[int] | None = TRAIN_COUNTS) -> Path:
    """A random-weight checkpoint of a model trained on `input_size`-pixel crops of 48-pixel
    images (the default recipe's shape; the standard stem keeps the tests fast), recording
    `class_counts` (None: none, as in older checkpoints)."""
    torch.manual_seed(seed)
    arch = default_params(model={"stem": "standard"}).model
    save_checkpoint(path, build_model(arch, input_size=input_size), class_names=list(CLASS_NAMES),
                    mean=0.45, std=0.22, image_size=48, params={"model": arch.model_dump()},
                    extra={"input_size": input_size,
                           **({"class_counts": class_counts} if class_counts else {})})
    return path



@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, its ONNX export)."""
    folder = tmp_path_factory.mktemp("onnx")
    checkpoint = make_checkpoint(folder / "model.pt", seed=0)
    return checkpoint, export_onnx(checkpoint, folder / "model.onnx")


def test_export_writes_one_self_describing_file_with_a_dynamic_batch(exported):
    checkpoint, path = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.pt"]  # no .tmp
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert set(METADATA_KEYS) <= set(meta)
    assert json.loads(meta["class_names"]) == list(CLASS_NAMES)
    assert (float(meta["mean"]), float(meta["std"])) == (0.45, 0.22)
    assert (meta["input_size"], meta["image_size"]) == ("40", "48")
    assert json.loads(meta["class_counts"]) == TRAIN_COUNTS  # the prior of the logit adjustment
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 40, 40]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    session = load_onnx_classifier(path).model.session
    for batch in (1, 5):
        (logits,) = session.run(None, {"input": np.zeros((batch, 1, 40, 40), np.float32)})
        assert logits.shape == (batch, 7) and logits.dtype == np.float32


def test_check_accepts_the_export_and_rejects_another_models_weights(exported, tmp_path):
    checkpoint, path = exported
    report = check_onnx(checkpoint, path)
    assert report["images"] == 10 and report["max_abs_diff"] < 1e-4
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(OnnxMismatchError, match=r"onnxruntime disagrees with PyTorch .*max "
                                                r"\|logit difference\| .* \(tolerance 0.001 "
                                                r"\+ 0.0001 x \|logit\|\)"):
        check_onnx(other, path)
    assert isinstance(OnnxMismatchError("x"), CheckpointError)


@pytest.mark.parametrize("tta", ["none", "hflip", "ten_crop"])
def test_the_onnx_classifier_matches_the_checkpoint_with_every_tta(exported, tta):
    checkpoint, path = exported
    onnx_clf, torch_clf = load_onnx_classifier(path), Classifier.from_checkpoint(checkpoint)
    assert onnx_clf.class_names == torch_clf.class_names and onnx_clf.image_size == 48
    assert onnx_clf.ctx.input_size == torch_clf.ctx.input_size == 40
    assert onnx_clf.class_counts == torch_clf.class_counts == TRAIN_COUNTS
    images = np.concatenate([check_images(48),
                             np.stack([face_like(c, np.random.default_rng(c)) for c in range(7)])])
    got, expected = onnx_clf.predict(images, tta), torch_clf.predict(images, tta)
    assert got.shape == (17, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    if tta == "ten_crop":  # a different crop side gives different views: the argument is used
        assert not np.allclose(onnx_clf.predict(images, tta, crop=44), got, atol=1e-4)


def test_bad_onnx_files_are_checkpoint_errors_naming_the_file(exported, tmp_path, capsys):
    _, path = exported
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf" * 20)
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(path)
    del proto.metadata_props[:]
    onnx.save(proto, bare)
    for bad, reason in ((tmp_path / "missing.onnx", "ONNX model not found"),
                        (junk, "cannot be read as an ONNX model"),
                        (bare, "ONNX model without the metadata ['class_names', 'mean', 'std', "
                               "'input_size', 'image_size']")):
        with pytest.raises(CheckpointError, match=rf"^{bad}: {reason}".replace("[", r"\[")):
            load_onnx_classifier(bad)
        assert main(["x.jpg", "--model", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {bad}: ") and len(err.splitlines()) == 1


def test_predict_with_an_onnx_model_matches_the_checkpoint(exported, tmp_path, capsys):
    checkpoint, path = exported
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(photo)
    Image.fromarray(face_like(2, np.random.default_rng(0))).save(tmp_path / "crop.png")
    rows = {}
    for model in (checkpoint, path):
        assert main([str(tmp_path), "--model", str(model), "--json", "--tta", "hflip"]) == 0
        rows[model.suffix] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows[".onnx"]] == [str(photo), str(tmp_path / "crop.png")]
    for pt_row, onnx_row in zip(rows[".pt"], rows[".onnx"]):
        assert onnx_row["box"] == pt_row["box"] and onnx_row["expression"] == pt_row["expression"]
        assert onnx_row["probabilities"] == pytest.approx(pt_row["probabilities"], abs=1e-5)


def test_log_onnx_model_logs_checks_and_registers(exported, tmp_path, monkeypatch):
    checkpoint, _ = exported
    monkeypatch.chdir(tmp_path)  # mlflow puts the sqlite store's artifacts under ./mlruns
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with pytest.raises(FerpipeError, match="no active MLflow run"):
            log_onnx_model(checkpoint)
        with mlflow.start_run() as run:
            uri = log_onnx_model(checkpoint, "fer-test", "candidate")
            plain = log_onnx_model(checkpoint)  # logged, not registered
        client = mlflow.MlflowClient()
        version = client.get_model_version_by_alias("fer-test-onnx", "candidate")
        assert version.run_id == run.info.run_id and str(version.version) == "1"
        assert [m.name for m in client.search_registered_models()] == ["fer-test-onnx"]
        logged = mlflow.onnx.load_model("models:/fer-test-onnx@candidate")
        assert json.loads({p.key: p.value for p in logged.metadata_props}["class_names"]) == list(
            CLASS_NAMES)
        pyfunc = mlflow.pyfunc.load_model(uri)
        x = np.random.default_rng(0).normal(size=(3, 1, 40, 40)).astype(np.float32)
        got = pyfunc.predict(x)["logits"]
        with torch.no_grad():
            expected = Classifier.from_checkpoint(checkpoint).model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert plain != uri and mlflow.onnx.load_model(plain).graph.input[0].name == "input"
    finally:
        mlflow.set_tracking_uri(None)


def test_bench_predict_compares_pytorch_with_onnx(exported, tmp_path):
    from ferpipe.tools.bench.cli import run

    checkpoint, _ = exported
    out = tmp_path / "bench.json"
    result = run(["--predict", "--model", str(checkpoint), "--repeats", "2", "--faces", "3",
                  "--detector", "yunet", "--compare-onnx", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["pytorch"]["backend"] == "pytorch" and result["onnx"]["backend"] == "onnxruntime"
    for figures in result.values():
        assert figures["detector"] == "yunet"
        assert figures["faces"] == 1 and figures["batch_faces"] == 3
        for key in ("decode", "detect", "classify", "total", "per_face"):
            assert figures[f"{key}_ms_median"] > 0
        assert figures["total_ms_median"] >= figures["detect_ms_median"]


def test_bench_help_shows_every_default():
    blocks = help_blocks("ferpipe.tools.bench.cli")
    assert {"--predict", "--compare-onnx", "--model MODEL", "--faces FACES"} <= set(blocks)
    assert [name for name, text in blocks.items() if "default" not in text] == []
    assert "(default: models/model.pt)" in blocks["--model MODEL"]


def test_export_command_writes_a_checked_file_or_nothing(exported, tmp_path, capsys,
                                                         monkeypatch):
    from ferpipe.model import export

    checkpoint = exported[0]
    dest = tmp_path / "out" / "model.onnx"
    export.main([str(checkpoint), str(dest)])
    assert "max |logit difference|" in capsys.readouterr().out
    assert load_onnx_classifier(dest).class_names == list(CLASS_NAMES)
    # an export that fails its check leaves nothing at the destination
    bad = tmp_path / "bad.onnx"

    def disagree(*args, **kwargs):
        raise OnnxMismatchError("disagrees")

    monkeypatch.setattr(export, "check_onnx", disagree)
    with pytest.raises(OnnxMismatchError):
        export.main([str(checkpoint), str(bad)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
