"""The trained model is a DVC artifact (dvc.yaml's `artifacts:`, DVC's model registry): the train
stage's checkpoint, under the name it has in MLflow's registry, as DVC itself reads it."""

import shutil
from pathlib import Path

import yaml

from ferpipe.data.splits import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[1]


def test_the_model_artifact_is_the_train_stages_checkpoint():
    dvcyaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (name, artifact), = dvcyaml["artifacts"].items()
    assert name == params["evaluate"]["registry_name"]  # one name in both registries
    assert artifact["type"] == "model" and artifact["desc"]
    assert {"resnet18", "fer2013", "facial-expression"} <= set(artifact["labels"])
    assert artifact["meta"]["classes"] == list(CLASS_NAMES)
    outs = [next(iter(out)) if isinstance(out, dict) else out
            for out in dvcyaml["stages"]["train"]["outs"]]
    assert "${train.out}/model.pt" in outs
    assert artifact["path"] == f"{params['train']['out']}/model.pt"


def test_dvc_reads_the_artifact(tmp_path):
    from dvc.repo import Repo
    from dvc.repo.artifacts import check_name_format

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    repo = Repo.init(tmp_path, no_scm=True)
    try:
        artifacts = repo.artifacts.read()["dvc.yaml"]
        assert list(artifacts) == ["fer2013-resnet18"]
        check_name_format("fer2013-resnet18")  # a name DVC Studio and GTO accept
        assert artifacts["fer2013-resnet18"].path == "models/model.pt"
        assert artifacts["fer2013-resnet18"].type == "model"
        assert "train" in {stage.name for stage in repo.index.stages}
    finally:
        repo.close()
