import numpy as np
import pytest
import torch

from ferpipe.evaluate.metrics import classification_metrics, confidence_intervals, report_text

NAMES = ["a", "b", "c"]


def test_metrics_on_a_hand_checked_example():
    # true:  a a b b c c ; predicted (argmax): a b b b c a ; second choice fixes the two misses
    labels = np.array([0, 0, 1, 1, 2, 2])
    logits = torch.tensor([[3., 2, 0], [2, 3, 0], [0, 3, 2], [1, 3, 0], [0, 1, 3], [3, 0, 2]])
    m = classification_metrics(logits, labels, NAMES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["top2_accuracy"] == pytest.approx(1.0)
    # per class: a P=1/2 R=1/2, b P=2/3 R=1, c P=1 R=1/2
    f1 = {"a": 0.5, "b": 0.8, "c": 2 / 3}
    for name in NAMES:
        assert m["per_class"][name]["f1"] == pytest.approx(f1[name])
        assert m["per_class"][name]["support"] == 2
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(np.mean(list(f1.values())))
    assert m["weighted_f1"] == pytest.approx(np.mean(list(f1.values())))
    expected_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()
    assert m["loss"] == pytest.approx(expected_loss)
    assert m["n"] == 6


def test_absent_class_scores_zero_without_crashing():
    labels = np.array([0, 0, 1])
    logits = torch.tensor([[2., 0, 0], [2, 0, 0], [0, 2, 0]])
    m = classification_metrics(logits, labels, NAMES)
    assert m["accuracy"] == 1.0
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert "macro avg" in report_text(labels, logits.argmax(1).numpy(), NAMES)


def test_balanced_accuracy_is_the_mean_recall():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    logits = np.eye(3)[[0, 0, 0, 0, 0, 1, 2]] * 5.0  # recalls: 1, 0.5, 1
    from ferpipe.evaluate.metrics import classification_metrics as metrics

    out = metrics(logits, labels, ["a", "b", "c"])
    assert out["accuracy"] == pytest.approx(6 / 7)
    assert out["balanced_accuracy"] == pytest.approx(2.5 / 3)


def test_evaluation_settings_are_chosen_on_val_accuracy_then_macro_f1():
    from stages.evaluate import choose

    def row(tta, tau, acc, f1):
        return {"tta": tta, "logit_adjustment": tau, "val_accuracy": acc, "val_macro_f1": f1}

    rows = [row("none", 0.0, 0.650, 0.60), row("hflip", 0.0, 0.660, 0.61),
            row("hflip", 0.5, 0.6600, 0.64), row("ten_crop", 0.0, 0.6620, 0.62),
            row("ten_crop", 1.0, 0.640, 0.66)]
    # within 0.25 points of the best accuracy (66.2%): hflip/0.5 has the best macro-F1
    assert choose(rows) == rows[2]
    # a margin of 0: the best accuracy alone
    assert choose(rows, margin=0.0) == rows[3]
    # a large accuracy cost is never taken for macro-F1
    assert choose(rows, margin=0.01)["logit_adjustment"] != 1.0


def predictions(n: int, accuracy: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n labels over 7 classes and predictions right on exactly round(accuracy * n) of them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, n)
    pred = labels.copy()
    wrong = rng.permutation(n)[:n - round(accuracy * n)]
    pred[wrong] = (labels[wrong] + rng.integers(1, 7, len(wrong))) % 7
    return labels, pred


def test_accuracy_interval_matches_the_binomial_standard_error():
    # 3,589 images (PublicTest's size) at 68% accuracy: the normal approximation gives
    # 0.68 +- 1.96 * sqrt(0.68 * 0.32 / 3589) = +-1.53 points; the bootstrap must agree closely
    labels, pred = predictions(3589, 0.68)
    ci = confidence_intervals(labels, pred, 7)
    half = 1.96 * np.sqrt(0.68 * 0.32 / 3589)
    low, high = ci["accuracy"]
    assert low == pytest.approx(0.68 - half, abs=0.003)
    assert high == pytest.approx(0.68 + half, abs=0.003)
    assert ci["macro_f1"][0] < classification_metrics(
        np.eye(7)[pred], labels, list("abcdefg"))["macro_f1"] < ci["macro_f1"][1]
    assert (ci["confidence"], ci["resamples"], ci["method"]) == (0.95, 1000, "percentile")


def test_interval_narrows_with_more_images_and_with_a_lower_level():
    small = confidence_intervals(*predictions(400, 0.7), 7)
    large = confidence_intervals(*predictions(1600, 0.7), 7)
    width = {name: ci["accuracy"][1] - ci["accuracy"][0] for name, ci in
             (("small", small), ("large", large))}
    assert width["large"] == pytest.approx(width["small"] / 2, rel=0.25)  # 4x the images
    narrow = confidence_intervals(*predictions(400, 0.7), 7, confidence=0.5)
    assert narrow["accuracy"][1] - narrow["accuracy"][0] < width["small"] / 2


def test_batched_scores_equal_scikit_learn_on_every_resample():
    """The vectorized accuracy and macro-F1 the bootstrap uses equal scikit-learn's on each row,
    including rows where a class is absent from labels, predictions or both."""
    from sklearn.metrics import accuracy_score, f1_score

    from ferpipe.evaluate.metrics import batched_accuracy, batched_macro_f1

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, (200, 12))
    pred = np.where(rng.random((200, 12)) < 0.5, labels, rng.integers(0, 7, (200, 12)))
    labels[0], pred[0] = 2, 2  # one class only, in both
    labels[1], pred[1] = 0, 5  # disjoint classes
    f1 = batched_macro_f1(labels, pred, 7)
    accuracy = batched_accuracy(labels, pred)
    for row in range(200):
        assert f1[row] == pytest.approx(f1_score(labels[row], pred[row], labels=list(range(7)),
                                                 average="macro", zero_division=0), abs=1e-12)
        assert accuracy[row] == pytest.approx(accuracy_score(labels[row], pred[row]), abs=1e-12)
    assert batched_macro_f1(labels.T, pred.T, 7, axis=0) == pytest.approx(f1, abs=1e-12)


def test_interval_is_reproducible_from_its_seed():
    labels, pred = predictions(500, 0.6)
    assert confidence_intervals(labels, pred, 7) == confidence_intervals(labels, pred, 7)
    assert confidence_intervals(labels, pred, 7, seed=1) != confidence_intervals(labels, pred, 7)


def test_perfect_predictions_have_a_zero_width_interval():
    labels = np.arange(70) % 7
    ci = confidence_intervals(labels, labels, 7, resamples=200)
    assert ci["accuracy"] == [1.0, 1.0] and ci["macro_f1"] == [1.0, 1.0]


@pytest.mark.parametrize("pred", [np.zeros(5, dtype=int), np.zeros(1, dtype=int)])
def test_interval_refuses_mismatched_or_single_image_input(pred):
    labels = np.zeros(len(pred) + 1 if len(pred) > 1 else 1, dtype=int)
    with pytest.raises(ValueError, match="same 1-D length of at least 2"):
        confidence_intervals(labels, pred, 7)


def test_paired_gain_interval_tells_a_real_gain_from_noise():
    from ferpipe.evaluate.metrics import paired_gain_interval

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 2000)
    reference = np.where(rng.random(2000) < 0.66, labels, (labels + 1) % 7)  # about 66% right
    same = paired_gain_interval(labels, reference, reference)
    assert same["gain"] == 0 and same["interval"] == [0.0, 0.0]
    # 60 images the reference gets wrong become right, nothing else changes: +3 points, sure
    fixed = reference.copy()
    wrong = np.flatnonzero(reference != labels)[:60]
    fixed[wrong] = labels[wrong]
    real = paired_gain_interval(labels, reference, fixed)
    assert real["gain"] == pytest.approx(0.03) and 0 < real["interval"][0] < 0.03 < real["interval"][1]
    # 300 right turn wrong and 310 wrong turn right: +0.5 points of churn, not a gain val can see
    churn = reference.copy()
    right = np.flatnonzero(reference == labels)[:300]
    churn[right] = (labels[right] + 2) % 7
    churn[np.flatnonzero(reference != labels)[:310]] = labels[np.flatnonzero(reference != labels)[:310]]
    noise = paired_gain_interval(labels, reference, churn)
    assert noise["gain"] == pytest.approx(0.005) and noise["interval"][0] < 0 < noise["interval"][1]
    with pytest.raises(ValueError, match="same 1-D length"):
        paired_gain_interval(labels, reference, reference[:-1])


def test_the_evaluation_leaves_the_plain_setting_only_for_a_gain_beyond_val_noise():
    from stages.evaluate import PLAIN, choose_beyond_noise

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, 2000)
    plain = np.where(rng.random(2000) < 0.66, labels, (labels + 1) % 7)
    better = plain.copy()
    wrong = np.flatnonzero(plain != labels)[:80]
    better[wrong] = labels[wrong]
    churn = plain.copy()
    right = np.flatnonzero(plain == labels)[:300]
    churn[right] = (labels[right] + 2) % 7
    churn[np.flatnonzero(plain != labels)[:320]] = labels[np.flatnonzero(plain != labels)[:320]]

    def row(tta, tau, pred):
        acc = float(np.mean(pred == labels))
        return {"tta": tta, "logit_adjustment": tau, "val_accuracy": acc, "val_macro_f1": acc}

    for pred, expected in ((better, ("ten_crop", 0.5)), (churn, PLAIN)):
        predictions = {PLAIN: plain, ("ten_crop", 0.5): pred}
        rows = [row(*PLAIN, plain), row("ten_crop", 0.5, pred)]
        result = choose_beyond_noise(rows, predictions, labels)
        assert result["candidate"]["tta"] == "ten_crop"  # the higher val accuracy either way
        assert (result["choice"]["tta"], result["choice"]["logit_adjustment"]) == expected
        assert (result["gain_interval"]["interval"][0] > 0) == (expected != PLAIN)
    # the plain setting itself best: no interval to compute
    result = choose_beyond_noise([row(*PLAIN, better), row("ten_crop", 0.5, plain)],
                                 {PLAIN: better, ("ten_crop", 0.5): plain}, labels)
    assert result["choice"]["tta"] == "none" and result["gain_interval"] is None
