"""params.yaml validation: every stage checks the whole file before it writes anything."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferpipe.core.errors import ParamsError
from ferpipe.core.params import MAX_SEED, STEMS, Params, load_params, validate_params

ROOT = Path(__file__).resolve().parents[1]


def project_params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def error_for(params):
    with pytest.raises(ParamsError) as err:
        validate_params(params, "params.yaml")
    return str(err.value)


def test_project_params_are_valid_complete_and_typed():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.train.lr == pytest.approx(project_params()["train"]["lr"])
    assert set(params.model_dump()) == {"download", "prepare", "stats", "model", "augment",
                                        "train", "evaluate", "plot"}
    assert params.model.stem in STEMS


@pytest.mark.parametrize("section, key, value, expected", [
    ("train", "lr", -0.1, "train.lr: got -0.1; input should be greater than 0"),
    ("train", "lr", "fast", "train.lr: got 'fast'; input should be a valid number"),
    ("train", "lr", float("inf"), "train.lr: got inf; input should be a finite number"),
    ("train", "lr", float("nan"), "train.lr: got nan; input should be a finite number"),
    ("download", "max_unpacked_mb", float("inf"),
     "download.max_unpacked_mb: got inf; input should be a finite number"),
    ("train", "epochs", 0, "train.epochs: got 0; input should be greater than or equal to 1"),
    ("train", "epochs", 2.5, "train.epochs: got 2.5; input should be a valid integer"),
    ("train", "epochs", True, "train.epochs: got True; input should be a valid integer"),
    ("train", "epochs", "3", "train.epochs: got '3'; input should be a valid integer"),
    ("train", "lr", True, "train.lr: got True; input should be a number, not a boolean"),
    ("train", "seed", 2**32, f"train.seed: got {2**32}; input should be less than or equal to "
                             f"{MAX_SEED}"),
    ("prepare", "seed", -1, "prepare.seed: got -1; input should be greater than or equal to 0"),
    ("train", "optimizer", "adam", "train.optimizer: got 'adam'; input should be 'adamw' or 'sgd'"),
    ("train", "device", "gpu",
     "train.device: got 'gpu'; expected auto, cpu, mps, cuda or cuda:<index>"),
    ("train", "channels_last", "maybe",
     "train.channels_last: got 'maybe'; input should be a valid boolean"),
    ("train", "channels_last", 1, "train.channels_last: got 1; input should be a valid boolean"),
    ("prepare", "val_fraction", 1.5, "prepare.val_fraction: got 1.5; input should be less than 1"),
    ("prepare", "val_fraction", 0, "prepare.val_fraction: got 0; input should be greater than 0"),
    ("prepare", "max_bad_fraction", 2,
     "prepare.max_bad_fraction: got 2; input should be less than or equal to 1"),
    ("model", "stem", "7x7",
     "model.stem: got '7x7'; input should be 'standard', '3x3', '3x3_nopool' or '3x3_double'"),
    ("augment", "hflip", 1.5, "augment.hflip: got 1.5; input should be less than or equal to 1"),
    ("download", "sha256", "abc", "download.sha256: got 'abc'; expected null or 64 hexadecimal digits"),
    ("download", "max_members", 0,
     "download.max_members: got 0; input should be greater than or equal to 1"),
    ("model", "arch", "resnet50", "model.arch: got 'resnet50'; input should be 'resnet18' or 'small_cnn'"),
    ("model", "freeze", 6, "model.freeze: got 6; input should be less than or equal to 5"),
    ("model", "freeze", -1, "model.freeze: got -1; input should be greater than or equal to 0"),
    ("model", "freeze", 1.0, "model.freeze: got 1.0; input should be a valid integer"),
    ("train", "backbone_lr_scale", 0,
     "train.backbone_lr_scale: got 0; input should be greater than 0"),
    ("train", "backbone_lr_scale", 1.5,
     "train.backbone_lr_scale: got 1.5; input should be less than or equal to 1"),
    ("augment", "autoaugment", "yes",
     "augment.autoaugment: got 'yes'; input should be a valid boolean"),
])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(section, key, value, expected):
    params = project_params()
    params[section][key] = value
    message = error_for(params)
    assert message == f"params.yaml: {expected}"


def test_small_cnn_refuses_the_resnet18_only_params_one_line_each():
    params = project_params()
    params["model"].update(arch="small_cnn", pretrained=True, freeze=2)
    assert error_for(params).splitlines() == [
        "params.yaml: model.pretrained: got True; model.arch 'small_cnn' has no ImageNet weights "
        "(resnet18 only); expected false",
        "params.yaml: model.freeze: got 2; model.arch 'small_cnn' has no ResNet stages to freeze "
        "(resnet18 only); expected 0"]
    params["model"].update(pretrained=False, freeze=0, stem="standard", hidden=64)
    assert validate_params(params).model.arch == "small_cnn"  # stem and hidden: resnet18 only
    params["model"].update(arch="resnet18", pretrained=True, freeze=5)
    assert validate_params(params).model.freeze == 5


def test_the_recipe_params_default_to_the_previous_behaviour():
    params = load_params(ROOT / "params.yaml")
    assert params.model.arch == "resnet18" and params.model.freeze == 0
    assert params.train.backbone_lr_scale == 1.0 and params.augment.autoaugment is False


def test_unknown_keys_and_sections_are_typos():
    params = project_params()
    params["train"]["lrr"] = 0.1
    params["trian"] = {"lr": 0.1}
    lines = error_for(params).splitlines()
    assert len(lines) == 2
    assert any(line.startswith("params.yaml: train.lrr: unknown key in section 'train' (a typo?);"
                               " allowed: data, stats, out") for line in lines)
    assert any(line.startswith("params.yaml: trian: unknown section (a typo?); allowed: download, "
                               "prepare, stats") for line in lines)


def test_missing_keys_and_every_problem_listed():
    params = project_params()
    del params["train"]["lr"]
    del params["plot"]
    params["evaluate"]["batch_size"] = -1
    lines = error_for(params).splitlines()
    assert len(lines) == 3
    assert "params.yaml: train.lr: missing (required)" in lines
    assert "params.yaml: plot: missing (required)" in lines
    assert any(line.startswith("params.yaml: evaluate.batch_size: got -1") for line in lines)


def test_a_huge_value_is_cut_in_the_message():
    params = project_params()
    params["train"]["optimizer"] = "x" * 100_000
    message = error_for(params)
    assert len(message) < 300 and "train.optimizer: got 'xxxx" in message


def test_yaml_numbers_without_a_dot_are_read_as_numbers():
    params = project_params()
    params["train"]["lr"] = "1e-3"  # PyYAML reads 1e-3 as a string
    assert validate_params(params).train.lr == pytest.approx(0.001)


def test_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="bad.yaml: not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping of sections, got list"):
        load_params(bad)
    bad.write_bytes("train:\n  experiment: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ParamsError, match=r"bad.yaml: not UTF-8 text \(byte 24\)"):
        load_params(bad)


def test_duplicate_keys_and_sections_are_refused_naming_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("  lr: ")) + 1
    path.write_text("\n".join(lines[:first] + ["  lr: 0.1"] + lines[first:]) + "\n")
    line = first + 1
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == (f"{path}: not valid YAML: line {line}: key 'lr' is written twice "
                              f"(first on line {line - 1}); keep one")
    path.write_text(text + "\nstats:\n  train: x\n  out: y\n")
    with pytest.raises(ParamsError, match="key 'stats' is written twice"):
        load_params(path)


def test_alias_bombs_are_refused_before_expanding(tmp_path):
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        bomb.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(bomb) + "\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert "line 2: YAML aliases (*name) are not allowed in params" in str(err.value)
    assert len(str(err.value)) < 300


def test_a_stage_stops_on_a_typo_before_writing_anything(tmp_path):
    params = project_params()
    params["stats"]["train"] = str(tmp_path / "train.npz")
    params["stats"]["out"] = str(tmp_path / "stats.json")
    params["stats"]["typo"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(ROOT / "stages/stats.py"), "--params",
                           str(tmp_path / "params.yaml")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {tmp_path / 'params.yaml'}: stats.typo: unknown key "
                                  f"in section 'stats'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_debug_shows_the_traceback(tmp_path):
    import os

    proc = subprocess.run([sys.executable, str(ROOT / "stages/stats.py"), "--params", "nope.yaml"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "FERPIPE_DEBUG": "1"}, timeout=600)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "error: nope.yaml: params file not found" in proc.stderr


def test_predict_and_serving_default_to_the_headline_tta():
    """`ferpipe-predict` and the served model answer as the README's headline accuracy scores:
    the TTA and the logit adjustment of the evaluate stage."""
    from ferpipe.model.inference import DEFAULT_LOGIT_ADJUSTMENT, DEFAULT_TTA
    from ferpipe.predict.cli import build_parser

    cfg = load_params(ROOT / "params.yaml").evaluate
    assert (DEFAULT_TTA, DEFAULT_LOGIT_ADJUSTMENT) == (cfg.tta, cfg.logit_adjustment)
    args = build_parser().parse_args(["x.png"])
    assert (args.tta, args.logit_adjustment) == (DEFAULT_TTA, DEFAULT_LOGIT_ADJUSTMENT)
