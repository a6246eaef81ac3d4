"""`ferpipe-evaluate-folder`: a generated labelled folder scored through the predict path, with
a classifier whose answers are known (the class is read from the photo's brightness), folder
names of other datasets, skipped classes, unreadable files and the errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ferpipe.core.errors import ParamsError
from ferpipe.data.splits import CLASS_NAMES
from ferpipe.model.device import StepContext
from ferpipe.model.inference import Classifier
from ferpipe.predict.predictor import Predictor
from ferpipe.tools.evaluate_folder import (
    _WholeImage,
    class_folders,
    folder_report,
    main,
    score_folder,
)
from tests.fakedata import random_checkpoint


class Brightness(nn.Module):
    """Logits that put class k first for a photo of grey level 30 k + 20: the mean of the
    normalized input (mean 0, std 1/255 in [0, 1] units, so the input is the pixel value)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x.mean(dim=(1, 2, 3))
        centres = torch.arange(7, dtype=torch.float32) * 30 + 20
        return -((level[:, None] - centres[None]) / 10) ** 2


def brightness_classifier() -> Classifier:
    ctx = StepContext(torch.device("cpu"), 0.0, 1 / 255)
    return Classifier(Brightness(), list(CLASS_NAMES), ctx, 48, "brightness")


def write_folder(root, photos: dict[str, list[int]]) -> None:
    """`root/<folder>/<i>.png`: one 64 x 64 uniform photo per grey level listed."""
    for folder, levels in photos.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, level in enumerate(levels):
            Image.fromarray(np.full((64, 64), level, np.uint8)).save(root / folder / f"{i}.png")


def level(name: str) -> int:
    return 30 * CLASS_NAMES.index(name) + 20


@pytest.fixture()
def folder(tmp_path):
    """Other datasets' names (happiness, Sadness, fearful), a class the model lacks (contempt),
    three right answers per class and one wrong (a sad-looking photo under happiness), and a
    corrupt file."""
    root = tmp_path / "labelled"
    write_folder(root, {"happiness": [level("happy")] * 3 + [level("sad")],
                        "Sadness": [level("sad")] * 3,
                        "fearful": [level("fear")] * 2,
                        "neutral": [level("neutral")] * 2,
                        "contempt": [level("neutral")]})
    (root / "neutral" / "broken.jpg").write_bytes(b"not an image")
    return root


def test_a_generated_folder_is_scored_with_known_answers(folder):
    classifier = brightness_classifier()
    folders, skipped = class_folders(folder, classifier.class_names)
    assert skipped == ["contempt"]
    assert {(p.name, CLASS_NAMES[i]) for p, i in folders} == {
        ("happiness", "happy"), ("Sadness", "sad"), ("fearful", "fear"), ("neutral", "neutral")}
    predictor = Predictor(classifier, _WholeImage(), tta="none", logit_adjustment=0.0)
    scored = score_folder(predictor, folders)
    report = folder_report(scored, classifier.class_names, skipped)
    assert report["photos"] == 11 and report["accuracy"] == pytest.approx(10 / 11)
    assert report["recall"] == {"fear": 1.0, "happy": 0.75, "neutral": 1.0, "sad": 1.0}
    assert report["per_class_photos"] == {"fear": 2, "happy": 4, "neutral": 2, "sad": 3}
    matrix = np.array(report["confusion"]["matrix"])
    assert matrix.sum() == 11 and matrix[CLASS_NAMES.index("happy"), CLASS_NAMES.index("sad")] == 1
    assert [u["file"].endswith("broken.jpg") for u in report["unreadable"]] == [True]
    assert report["no_face_found"] == 0  # whole photos by choice, not misses
    low, high = report["interval"]["accuracy"]
    assert low <= 10 / 11 <= high and 0 <= report["ece"] <= 1
    assert report["skipped_classes"] == ["contempt"]


def test_a_mapping_file_names_folders_the_synonyms_miss(tmp_path):
    root = tmp_path / "labelled"
    write_folder(root, {"HA": [level("happy")], "SU": [level("surprise")]})
    classifier = brightness_classifier()
    with pytest.raises(ValueError, match="no class folder matches"):
        class_folders(root, classifier.class_names)
    folders, skipped = class_folders(root, classifier.class_names, {"HA": "happy", "su": "Surprise"})
    assert [CLASS_NAMES[i] for _, i in folders] == ["happy", "surprise"] and skipped == []
    with pytest.raises(ValueError, match=r"--mapping: \['joy'\] are not classes"):
        class_folders(root, classifier.class_names, {"HA": "joy"})


def test_the_command_scores_photos_through_the_detector_and_counts_misses(tmp_path, capsys):
    """A random-weight model (accuracy is not the point): the JSON report's counts, one row per
    photo whatever the faces, a uniform photo counted as no face found."""
    from tests.test_predict import head_photo

    root = tmp_path / "labelled"
    (root / "happy").mkdir(parents=True)
    Image.fromarray(head_photo(640, 480, [(200, 100, 200)])).save(root / "happy" / "one.png")
    Image.fromarray(head_photo(900, 400, [(50, 80, 220), (500, 80, 220)])).save(
        root / "happy" / "two.png")
    (root / "sad").mkdir()
    Image.fromarray(np.full((300, 300), 90, np.uint8)).save(root / "sad" / "blank.png")
    model = random_checkpoint(tmp_path / "model.pt")
    assert main([str(root), "--model", str(model), "--json", "--tta", "none"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["photos"] == 3 and report["no_face_found"] == 1 and report["several_faces"] == 1
    assert report["detector"] in ("yunet", "haar")
    assert sum(map(sum, report["confusion"]["matrix"])) == 3
    assert main([str(root), "--model", str(model), "--detector", "none", "--tta", "none"]) == 0
    out = capsys.readouterr().out
    assert "photos 3" in out and "no face found 0" in out and "detector none" in out


def test_bad_input_gets_one_line(tmp_path, capsys):
    model = random_checkpoint(tmp_path / "model.pt")
    assert main([str(tmp_path / "missing"), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: no such folder" in err
    (tmp_path / "empty" / "contempt").mkdir(parents=True)
    assert main([str(tmp_path / "empty"), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no class folder matches" in err and "contempt" in err
    bad = tmp_path / "mapping.json"
    bad.write_text("[1, 2]")
    assert main([str(tmp_path / "empty"), "--model", str(model), "--mapping", str(bad)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


def test_the_evaluate_stage_checks_its_external_folders_by_params_key(folder, tmp_path):
    """evaluate.external: a missing folder, or one with no class folder, is one line that names
    the params key and its index (checked before anything is scored)."""
    from stages.evaluate import external_folders

    found = external_folders((str(folder),), CLASS_NAMES)
    assert found[str(folder)][1] == ["contempt"]
    assert sorted(index for _, index in found[str(folder)][0]) == sorted(
        CLASS_NAMES.index(name) for name in ("fear", "happy", "neutral", "sad"))
    with pytest.raises(ParamsError, match=r"^evaluate\.external\[1\]: .*missing: no such folder"):
        external_folders((str(folder), str(tmp_path / "missing")), CLASS_NAMES)
    (tmp_path / "other" / "contempt").mkdir(parents=True)
    with pytest.raises(ParamsError, match=r"^evaluate\.external\[0\]: .*no class folder matches"):
        external_folders((str(tmp_path / "other"),), CLASS_NAMES)


def test_external_folders_of_the_same_name_get_distinct_mlflow_keys(tmp_path):
    from stages.evaluate import external_metrics

    report = {"accuracy": 0.5, "balanced_accuracy": 0.4, "macro_f1": 0.3, "ece": 0.1,
              "no_face_found": 2}
    metrics = external_metrics({"folders": {str(tmp_path / "a" / "faces"): report,
                                            str(tmp_path / "b" / "faces"): {**report,
                                                                            "accuracy": 0.7},
                                            str(tmp_path / "my photos"): report}})
    assert metrics["summary/external_faces_accuracy"] == 0.5
    assert metrics["summary/external_faces_1_accuracy"] == 0.7
    assert metrics["summary/external_my_photos_no_face_found"] == 2.0
    assert len(metrics) == 15
    assert external_metrics(None) == {}
