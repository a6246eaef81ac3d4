from urllib.error import URLError

import pytest
import torch
from torchvision.models import resnet18

from ferpipe.errors import CheckpointError
from ferpipe.model import (
    PretrainedWeightsError,
    build_model,
    imagenet_cache_file,
    load_checkpoint,
    save_checkpoint,
)
from tests.fakedata import default_params


def arch(**values):
    """The project's model params with `values` changed."""
    return default_params(model=values).model


@pytest.mark.parametrize("stem,feature", [("standard", 12), ("3x3", 24), ("3x3_nopool", 48)])
def test_output_shape_and_stem_resolution(stem, feature):
    model = build_model(arch(stem=stem)).eval()
    x = torch.randn(3, 1, 48, 48)
    assert model(x).shape == (3, 7)
    stem_out = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    assert stem_out.shape == (3, 64, feature, feature)
    assert model.conv1.in_channels == 1


def test_head_with_hidden_layer():
    model = build_model(arch(hidden=128, dropout=0.3))
    assert [m.out_features for m in model.fc if isinstance(m, torch.nn.Linear)] == [128, 7]


def test_pretrained_offline_names_the_cache_file(tmp_path, monkeypatch):
    """Runs the real weights-API code down to torch.hub's urlopen, which fails as offline."""
    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(PretrainedWeightsError) as err:
        build_model(arch(pretrained=True))
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(err.value)


def test_pretrained_from_cache_sums_rgb_filters(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = resnet18()
    cache = imagenet_cache_file()
    cache.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cache)
    model = build_model(arch(stem="standard", pretrained=True))
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    gray = torch.rand(1, 1, 48, 48)
    torch.testing.assert_close(model.conv1(gray), reference.conv1(gray.expand(1, 3, 48, 48)),
                               atol=1e-5, rtol=1e-4)


def test_checkpoint_round_trip(tmp_path):
    model = build_model(arch(stem="3x3", hidden=16)).eval()
    params = {"model": arch(stem="3x3", hidden=16).model_dump()}
    save_checkpoint(tmp_path / "m.pt", model, class_names=list("abcdefg"), mean=0.5, std=0.25,
                    image_size=48, params=params, extra={"epoch": 3})
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(loaded(x), model(x))
    assert ckpt["class_names"] == list("abcdefg") and ckpt["epoch"] == 3
    assert ckpt["mean"] == 0.5 and ckpt["image_size"] == 48
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
