"""params.yaml validation: every stage checks the whole file before it writes anything."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferpipe import model
from ferpipe.params import STEMS, ParamsError, load_params, validate_params

ROOT = Path(__file__).resolve().parents[1]


def project_params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def error_for(params):
    with pytest.raises(ParamsError) as err:
        validate_params(params, "params.yaml")
    return str(err.value)


def test_project_params_are_valid_and_complete():
    params = load_params(ROOT / "params.yaml")
    assert params["train"]["lr"] == pytest.approx(project_params()["train"]["lr"])
    assert set(params) == {"download", "prepare", "stats", "model", "augment", "train",
                           "evaluate", "plot"}
    assert STEMS == model.STEMS  # the schema's choices are the stems the model builds


@pytest.mark.parametrize("section, key, value, expected", [
    ("train", "lr", -0.1, "train.lr: got -0.1; input should be greater than 0"),
    ("train", "lr", "fast", "train.lr: got 'fast'; input should be a valid number"),
    ("train", "epochs", 0, "train.epochs: got 0; input should be greater than or equal to 1"),
    ("train", "epochs", 2.5, "train.epochs: got 2.5; input should be a valid integer"),
    ("train", "optimizer", "adam", "train.optimizer: got 'adam'; input should be 'adamw' or 'sgd'"),
    ("train", "device", "gpu", "train.device: got 'gpu'; expected auto, cpu, mps, cuda or cuda:<index>"),
    ("train", "channels_last", "maybe", "train.channels_last: got 'maybe'; input should be a valid boolean"),
    ("prepare", "val_fraction", 1.5, "prepare.val_fraction: got 1.5; input should be less than 1"),
    ("prepare", "val_fraction", 0, "prepare.val_fraction: got 0; input should be greater than 0"),
    ("prepare", "max_bad_fraction", 2, "prepare.max_bad_fraction: got 2; input should be less than or equal to 1"),
    ("model", "stem", "7x7", "model.stem: got '7x7'; input should be 'standard', '3x3' or '3x3_nopool'"),
    ("augment", "hflip", 1.5, "augment.hflip: got 1.5; input should be less than or equal to 1"),
    ("download", "sha256", "abc", "download.sha256: got 'abc'; expected null or 64 hexadecimal digits"),
    ("download", "max_members", 0, "download.max_members: got 0; input should be greater than or equal to 1"),
])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(section, key, value, expected):
    params = project_params()
    params[section][key] = value
    message = error_for(params)
    assert message.startswith("params.yaml: 1 invalid value(s):")
    assert expected in message


def test_unknown_keys_and_sections_are_typos():
    params = project_params()
    params["train"]["lrr"] = 0.1
    params["trian"] = {"lr": 0.1}
    message = error_for(params)
    assert "2 invalid value(s)" in message
    assert "train.lrr: unknown key in section 'train' (a typo?); allowed: data, stats, out" in message
    assert "trian: unknown section (a typo?); allowed: download, prepare, stats" in message


def test_missing_keys_and_every_problem_listed():
    params = project_params()
    del params["train"]["lr"]
    del params["plot"]
    params["evaluate"]["batch_size"] = -1
    message = error_for(params)
    assert "3 invalid value(s)" in message
    assert "train.lr: missing (required)" in message
    assert "plot: missing (required)" in message
    assert "evaluate.batch_size: got -1" in message


def test_yaml_numbers_without_a_dot_are_read_as_numbers():
    params = project_params()
    params["train"]["lr"] = "1e-3"  # PyYAML reads 1e-3 as a string
    assert validate_params(params)["train"]["lr"] == pytest.approx(0.001)


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


def test_a_stage_stops_on_a_typo_before_writing_anything(tmp_path):
    params = project_params()
    params["stats"]["train"] = str(tmp_path / "train.npz")
    params["stats"]["out"] = str(tmp_path / "stats.json")
    params["stats"]["typo"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(ROOT / "stages/stats.py"), "--params",
                           str(tmp_path / "params.yaml")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert "stats.typo: unknown key in section 'stats'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
