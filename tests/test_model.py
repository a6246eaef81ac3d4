from urllib.error import URLError

import pytest
import torch
from torchvision.models import resnet18

from ferpipe.core.errors import CheckpointError
from ferpipe.model.checkpoint import load_checkpoint, save_checkpoint
from ferpipe.model.network import PretrainedWeightsError, SmallCNN, build_model, imagenet_cache_file
from tests.fakedata import default_params


def arch(**values):
    """The project's model params with `values` changed."""
    return default_params(model=values).model


@pytest.mark.parametrize("stem,feature,convs", [("standard", 12, 1), ("3x3", 24, 1),
                                                 ("3x3_nopool", 48, 1), ("3x3_double", 24, 2)])
def test_output_shape_and_stem_resolution(stem, feature, convs):
    model = build_model(arch(stem=stem)).eval()
    x = torch.randn(3, 1, 48, 48)
    assert model(x).shape == (3, 7)
    stem_out = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    assert stem_out.shape == (3, 64, feature, feature)
    conv_layers = [m for m in model.conv1.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(conv_layers) == convs and conv_layers[0].in_channels == 1
    # every convolution of the stem keeps the full 48 x 48 resolution but the standard stem's
    if stem != "standard":
        assert model.conv1(x).shape == (3, 64, 48, 48)


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


def test_small_cnn_output_shape_and_parameter_count():
    """The baseline "Model 0": 3 conv blocks (16/32/64) + a 128-unit MLP head."""
    model = build_model(arch(arch="small_cnn", dropout=0.5)).eval()
    assert isinstance(model, SmallCNN)
    x = torch.randn(3, 1, 48, 48)
    assert model(x).shape == (3, 7)
    assert model.features(x).shape == (3, 64, 6, 6)
    assert [(m.in_features, m.out_features) for m in model.fc
            if isinstance(m, torch.nn.Linear)] == [(64 * 6 * 6, 128), (128, 7)]
    assert [m.p for m in model.fc if isinstance(m, torch.nn.Dropout)] == [0.5]
    convs = sum(9 * cin * cout + cout + 2 * cout for cin, cout in ((1, 16), (16, 32), (32, 64)))
    head = (64 * 6 * 6 * 128 + 128) + (128 * 7 + 7)
    assert sum(p.numel() for p in model.parameters()) == convs + head == 319_463


def test_small_cnn_is_built_for_its_input_size():
    model = build_model(arch(arch="small_cnn"), num_classes=5, input_size=64).eval()
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)
    assert model.fc[0].in_features == 64 * 8 * 8
    with pytest.raises(ValueError, match="small_cnn was built for 64x64 images, got 48x48"):
        model(torch.randn(2, 1, 48, 48))


@pytest.mark.parametrize("freeze", range(6))
def test_freeze_stops_gradients_of_the_first_stages(freeze):
    model = build_model(arch(stem="standard", freeze=freeze))
    stages = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    frozen = set(stages[:freeze + 1] if freeze else [])  # stage 1 is conv1 and bn1
    model(torch.randn(2, 1, 48, 48)).sum().backward()
    for name, param in model.named_parameters():
        top = name.split(".")[0]
        assert param.requires_grad == (top not in frozen), name
        assert (param.grad is None) == (top in frozen), name
    assert all(p.requires_grad for p in model.fc.parameters())


def test_small_cnn_checkpoint_round_trip(tmp_path):
    cfg = arch(arch="small_cnn", dropout=0.2)
    for size in (48, 40):
        model = build_model(cfg, input_size=size).eval()
        save_checkpoint(tmp_path / "m.pt", model, class_names=list("abcdefg"), mean=0.5, std=0.25,
                        image_size=size, params={"model": cfg.model_dump()})
        loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
        assert isinstance(loaded, SmallCNN) and ckpt["model"]["arch"] == "small_cnn"
        x = torch.randn(2, 1, size, size)
        torch.testing.assert_close(loaded(x), model(x))


def test_a_checkpoint_written_before_arch_and_freeze_loads_as_resnet18(tmp_path):
    cfg = arch(stem="3x3")
    old_section = {k: v for k, v in cfg.model_dump().items() if k not in ("arch", "freeze")}
    model = build_model(cfg).eval()
    save_checkpoint(tmp_path / "m.pt", model, class_names=list("abcdefg"), mean=0.5, std=0.25,
                    image_size=48, params={"model": old_section})
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(loaded(x), model(x))


def test_a_checkpoint_of_a_pretrained_model_loads_offline(tmp_path, monkeypatch):
    """The weights come from the checkpoint: loading never fetches ImageNet's, nor freezes."""
    def offline(*args, **kwargs):
        raise URLError("offline")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    model = build_model(arch(stem="standard"))
    params = {"model": arch(stem="standard", pretrained=True, freeze=2).model_dump()}
    save_checkpoint(tmp_path / "m.pt", model, class_names=list("abcdefg"), mean=0.5, std=0.25,
                    image_size=48, params=params)
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["model"]["pretrained"] is True
    assert all(p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(loaded(x), model.eval()(x))
