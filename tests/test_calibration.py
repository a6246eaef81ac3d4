"""Calibrated probabilities: the temperature fitted on val, the ECE and the reliability bins,
and the temperature travelling with the model (ONNX metadata, the evaluate stage's record, the
predictor, the served model)."""

import json

import numpy as np
import pytest

from ferpipe.core.files import sha256_of
from ferpipe.evaluate.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability,
    scaled,
)
from ferpipe.evaluate.plots import reliability_diagram
from ferpipe.model.export import export_onnx, load_onnx_classifier
from ferpipe.model.inference import Classifier
from ferpipe.predict.predictor import Predictor, calibrate, load_classifier, recorded_temperature
from tests.fakedata import random_checkpoint


def sampled(n: int, classes: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits float64 (n, classes) and labels drawn from their softmax: a calibrated model."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, classes))
    probs = scaled(logits, 1.0)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def test_temperature_scaling_undoes_an_over_confident_model_and_lowers_its_ece():
    """Logits 3 x those of a calibrated model: the fitted temperature is about 3 and the ECE
    falls from over 0.1 to under 0.03, on val and on a held-out test sample alike."""
    val_logits, val_labels = sampled(4000, seed=1)
    test_logits, test_labels = sampled(4000, seed=2)
    temperature = fit_temperature(3 * val_logits, val_labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    report = calibration_report(3 * val_logits, val_labels, 3 * test_logits, test_labels)
    assert report["temperature"] == pytest.approx(temperature)
    assert report["test_ece"] > 0.1 and report["test_ece_calibrated"] < 0.03
    assert report["val_ece_calibrated"] < report["val_ece"]
    assert report["test_nll_calibrated"] < report["test_nll"]
    # the argmax, and so accuracy, is unchanged
    np.testing.assert_array_equal(scaled(3 * test_logits, temperature).argmax(1),
                                  test_logits.argmax(1))


def test_an_under_confident_model_gets_a_temperature_below_one():
    logits, labels = sampled(4000, seed=3)
    assert fit_temperature(logits / 2, labels) == pytest.approx(0.5, rel=0.1)


def test_the_ece_and_bins_by_hand():
    """Four predictions: two at 0.9 confidence (one right), two at 0.6 (both right): bins
    (0.8667, 0.9333] and (0.5333, 0.6]; ECE = 0.5 x |0.5 - 0.9| + 0.5 x |1 - 0.6| = 0.4."""
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    rows = reliability(probs, labels, bins=15)
    assert sum(row["count"] for row in rows) == 4
    full = [row for row in rows if row["count"]]
    assert [(row["count"], row["accuracy"]) for row in full] == [(2, 1.0), (2, 0.5)]
    assert full[0]["confidence"] == pytest.approx(0.6) and full[1]["confidence"] == pytest.approx(0.9)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    # confidence 1.0 falls in the last bin, not past it
    assert reliability(np.array([[1.0, 0.0]]), np.array([0]))[-1]["count"] == 1


def test_fit_temperature_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="as many labels as rows"):
        fit_temperature(np.zeros((3, 7)), np.zeros(2, int))
    with pytest.raises(ValueError, match="as many labels as rows"):
        fit_temperature(np.zeros((0, 7)), np.zeros(0, int))


def test_calibrate_keeps_the_argmax_and_softens_above_one():
    probs = scaled(np.array([[2.0, 0.0, -1.0], [0.1, 0.3, 0.2]]), 1.0)
    assert calibrate(probs, 1.0) is probs
    softer = calibrate(probs, 2.0)
    np.testing.assert_allclose(softer.sum(1), 1, atol=1e-6)
    np.testing.assert_array_equal(softer.argmax(1), probs.argmax(1))
    assert softer.max() < probs.max()
    np.testing.assert_allclose(softer, scaled(np.log(probs), 2.0), atol=1e-6)


def test_the_recorded_temperature_is_used_only_for_its_own_checkpoint(checkpoint, tmp_path):
    record = tmp_path / "eval.json"
    assert recorded_temperature(checkpoint, record) == 1.0  # no record
    record.write_text(json.dumps({"calibration": {"temperature": 1.7,
                                                  "model_sha256": sha256_of(checkpoint)}}))
    assert recorded_temperature(checkpoint, record) == 1.7
    record.write_text(json.dumps({"calibration": {"temperature": 1.7, "model_sha256": "0" * 64}}))
    assert recorded_temperature(checkpoint, record) == 1.0  # another checkpoint's
    record.write_text("{not json")
    assert recorded_temperature(checkpoint, record) == 1.0


def test_load_classifier_reads_the_evaluate_stages_record_in_the_repo(checkpoint, tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/eval.json").write_text(json.dumps(
        {"calibration": {"temperature": 2.5, "model_sha256": sha256_of(checkpoint)}}))
    assert load_classifier(str(checkpoint)).temperature == 2.5


def test_the_onnx_file_carries_the_temperature(checkpoint, tmp_path):
    plain = load_onnx_classifier(export_onnx(checkpoint, tmp_path / "plain.onnx"))
    assert plain.temperature == 1.0
    warm = load_onnx_classifier(export_onnx(checkpoint, tmp_path / "warm.onnx", 1.8))
    assert warm.temperature == 1.8


def test_the_predictor_applies_the_classifiers_temperature(checkpoint):
    classifier = Classifier.from_checkpoint(checkpoint)
    crops = np.random.default_rng(0).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    plain = Predictor(classifier, detector=None, tta="none").probabilities(crops)
    classifier.temperature = 3.0
    warm = Predictor(classifier, detector=None, tta="none").probabilities(crops)
    np.testing.assert_allclose(warm, calibrate(plain, 3.0), atol=1e-5)
    own = Predictor(classifier, detector=None, tta="none", temperature=1.0).probabilities(crops)
    np.testing.assert_allclose(own, plain, atol=1e-6)  # an explicit temperature wins


def test_the_reliability_diagram_is_drawn(tmp_path):
    logits, labels = sampled(500)
    report = calibration_report(3 * logits, labels, 3 * logits, labels)
    path = reliability_diagram(report, tmp_path / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
