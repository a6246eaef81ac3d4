"""Calibrated probabilities: the temperature fitted on val, the ECE and the reliability bins,
and the temperature travelling with the model (ONNX metadata, the evaluate stage's record, the
predictor, the served model)."""

import json

import numpy as np
import pytest

from ferpipe.core.errors import CheckpointError
from ferpipe.core.files import sha256_of
from ferpipe.evaluate.calibration import (
    calibration_report,
    ece_interval,
    expected_calibration_error,
    fit_class_temperatures,
    fit_temperature,
    reliability,
    scaled,
)
from ferpipe.evaluate.plots import reliability_diagram
from ferpipe.model.export import export_onnx, load_onnx_classifier
from ferpipe.model.inference import Classifier
from ferpipe.model.temperature import as_temperature, calibrate, describe, to_text
from ferpipe.predict.predictor import Predictor, load_classifier, recorded_temperature
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
    assert report["temperature_global"] == pytest.approx(temperature)
    # every class is over-confident alike: each class's own temperature is about 3 too
    assert report["temperature"] == pytest.approx([3.0] * 7, rel=0.2)
    assert report["test_ece"] > 0.1 and report["test_ece_calibrated"] < 0.03
    assert report["test_ece_global"] < 0.03
    low, high = report["test_ece_calibrated_interval"]
    assert 0 <= low < high < 0.05
    assert report["val_ece_calibrated"] < report["val_ece"]
    assert report["test_nll_calibrated"] < report["test_nll"]
    # the argmax, and so accuracy, is unchanged
    np.testing.assert_array_equal(scaled(3 * test_logits, temperature).argmax(1),
                                  test_logits.argmax(1))


def by_predicted_class(logits: np.ndarray) -> np.ndarray:
    """The calibrated logits made class-dependent: rows predicted as class 0 three times as
    confident, every other row half as confident (the argmax is kept)."""
    return np.where((logits.argmax(1) == 0)[:, None], 3 * logits, logits / 2)


def test_a_temperature_per_predicted_class_fixes_what_one_temperature_cannot():
    """Over-confident on one predicted class, under-confident on the others: one temperature
    leaves the ECE high on held-out data; one per predicted class recovers about 3 and 0.5 and
    brings the ECE under 0.03, with the argmax unchanged."""
    val_logits, val_labels = sampled(6000, seed=4)
    test_logits, test_labels = sampled(6000, seed=5)
    report = calibration_report(by_predicted_class(val_logits), val_labels,
                                by_predicted_class(test_logits), test_labels)
    assert report["temperature"][0] == pytest.approx(3.0, rel=0.2)
    assert report["temperature"][1:] == pytest.approx([0.5] * 6, rel=0.2)
    assert report["test_ece_calibrated"] < 0.03 < report["test_ece_global"]
    assert report["test_nll_calibrated"] < report["test_nll_global"]
    temperature = tuple(report["temperature"])
    np.testing.assert_array_equal(
        scaled(by_predicted_class(test_logits), temperature).argmax(1), test_logits.argmax(1))


def test_a_rarely_predicted_class_takes_the_temperature_of_all_rows():
    logits, labels = sampled(2000, seed=6)
    logits[:, 6] -= 10  # class 6 is (almost) never predicted
    assert (logits.argmax(1) == 6).sum() < 50
    temperatures = fit_class_temperatures(logits, labels)
    assert temperatures[6] == pytest.approx(fit_temperature(logits, labels))
    assert len(temperatures) == 7


def test_the_ece_interval_tells_chance_from_miscalibration():
    logits, labels = sampled(3000, seed=7)
    low, high = ece_interval(scaled(logits, 1.0), labels, resamples=200)
    assert 0 <= low < high < 0.05  # a calibrated model: only chance
    low, high = ece_interval(scaled(3 * logits, 1.0), labels, resamples=200)
    assert low > 0.1  # an over-confident one: far above chance


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


def test_calibrate_divides_each_row_by_its_predicted_classs_temperature():
    probs = scaled(np.array([[2.0, 0.0, -1.0], [0.1, 0.3, 0.2], [0.0, 0.5, 1.0]]), 1.0)
    temperature = (2.0, 0.5, 4.0)
    out = calibrate(probs, temperature)
    for row, t in zip(range(3), (2.0, 0.5, 4.0)):
        np.testing.assert_allclose(out[row], scaled(np.log(probs[row:row + 1]), t)[0], atol=1e-6)
    np.testing.assert_array_equal(out.argmax(1), probs.argmax(1))
    with pytest.raises(ValueError, match="one value per class: got 2 for 3 classes"):
        calibrate(probs, (1.0, 2.0))


@pytest.mark.parametrize("value, expected", [
    (1.7, 1.7), (2, 2.0), ("0.62", 0.62), ([0.5, 2], (0.5, 2.0)), ("[0.5, 2.0]", (0.5, 2.0)),
    ((0.5, 2.0), (0.5, 2.0))])
def test_a_temperature_is_read_from_a_record_or_metadata(value, expected):
    assert as_temperature(value) == expected
    assert as_temperature(to_text(as_temperature(value))) == expected  # written, read back


@pytest.mark.parametrize("value", [None, 0, -1.0, float("nan"), float("inf"), True, [], [1.0, 0],
                                   [1.0, "2"], "abc", "", {"t": 1}])
def test_a_malformed_temperature_is_not_one(value):
    assert as_temperature(value) is None


def test_a_temperature_is_described_with_class_names():
    assert describe(0.6198) == "0.620"
    assert describe((0.5, 2.0), ["angry", "happy"]) == "per predicted class: angry 0.500, happy 2.000"


def test_the_recorded_temperature_is_used_only_for_its_own_checkpoint(checkpoint, tmp_path):
    record = tmp_path / "eval.json"
    assert recorded_temperature(checkpoint, record) == 1.0  # no record
    record.write_text(json.dumps({"calibration": {"temperature": 1.7,
                                                  "model_sha256": sha256_of(checkpoint)}}))
    assert recorded_temperature(checkpoint, record) == 1.7
    record.write_text(json.dumps({"calibration": {"temperature": [1.7, 0.5],
                                                  "model_sha256": sha256_of(checkpoint)}}))
    assert recorded_temperature(checkpoint, record) == (1.7, 0.5)  # one per predicted class
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
    per_class = tuple(0.5 + i / 10 for i in range(7))
    classwise = load_onnx_classifier(export_onnx(checkpoint, tmp_path / "class.onnx", per_class))
    assert classwise.temperature == pytest.approx(per_class)


def test_an_onnx_file_with_a_malformed_temperature_is_refused(checkpoint, tmp_path):
    import onnx

    path = export_onnx(checkpoint, tmp_path / "model.onnx", 1.5)
    proto = onnx.load(path)
    props = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**props, "temperature": "[1.0, -2.0]"})
    onnx.save(proto, path)
    with pytest.raises(CheckpointError, match="temperature '\\[1.0, -2.0\\]' is not a positive"):
        load_onnx_classifier(path)


def test_the_predictor_applies_the_classifiers_temperature(checkpoint):
    classifier = Classifier.from_checkpoint(checkpoint)
    crops = np.random.default_rng(0).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    plain = Predictor(classifier, detector=None, tta="none").probabilities(crops)
    classifier.temperature = 3.0
    warm = Predictor(classifier, detector=None, tta="none").probabilities(crops)
    np.testing.assert_allclose(warm, calibrate(plain, 3.0), atol=1e-5)
    own = Predictor(classifier, detector=None, tta="none", temperature=1.0).probabilities(crops)
    np.testing.assert_allclose(own, plain, atol=1e-6)  # an explicit temperature wins
    per_class = tuple(0.5 + i / 4 for i in range(7))
    classwise = Predictor(classifier, detector=None, tta="none",
                          temperature=per_class).probabilities(crops)
    np.testing.assert_allclose(classwise, calibrate(plain, per_class), atol=1e-5)


def test_the_served_model_applies_a_temperature_per_predicted_class(checkpoint):
    import threading

    from ferpipe.serve.pyfunc import ExpressionModel

    per_class = tuple(0.5 + i / 4 for i in range(7))
    served = ExpressionModel("none", 0.0, per_class)
    served.classifier, served.local = Classifier.from_checkpoint(checkpoint), threading.local()
    pixels = np.random.default_rng(1).integers(0, 256, (3, 48, 48)).astype(np.float32)
    plain = Predictor(served.classifier, detector=None, tta="none", logit_adjustment=0.0,
                      temperature=1.0).probabilities(pixels.astype(np.uint8))
    out = served.predict(None, pixels)
    np.testing.assert_allclose(out.to_numpy(), calibrate(plain, per_class), atol=1e-5)


def test_the_reliability_diagram_is_drawn(tmp_path):
    """Drawn from a report with a temperature per predicted class and from an older one with a
    single temperature."""
    logits, labels = sampled(500)
    report = calibration_report(3 * logits, labels, 3 * logits, labels)
    for name, temperature in (("class", report["temperature"]), ("one", 2.9)):
        path = reliability_diagram({**report, "temperature": temperature},
                                   tmp_path / f"{name}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
