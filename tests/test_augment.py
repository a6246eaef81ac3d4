import pytest
import torch

from ferpipe.model.inference import normalize
from ferpipe.train import augment as augment_module
from ferpipe.train.augment import augment_batch, auto_augment, random_erasing
from tests.fakedata import default_params


def augment(**values):
    """The project's augment params with `values` changed, on whole 48-pixel images unless
    `crop` is given (the default trains on crops)."""
    return default_params(augment={"crop": 48, **values}).augment


NONE = augment(hflip=0, rotation=0, translate=0, scale=0, brightness=0, contrast=0, erasing=0)


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 48, 48), generator=g, dtype=torch.uint8)


def test_shapes_dtype_and_range():
    x = batch()
    out = augment_batch(x, augment(erasing=0.5), 0.5, 0.25, torch.Generator().manual_seed(1))
    assert out.shape == (16, 1, 48, 48) and out.dtype == torch.float32
    pixels = out * 0.25 + 0.5  # back to [0, 1] units
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_deterministic_under_seed_and_varies_across_seeds():
    x = batch()
    cfg = augment(erasing=0.5)
    a = augment_batch(x, cfg, 0.5, 0.25, torch.Generator().manual_seed(7))
    b = augment_batch(x, cfg, 0.5, 0.25, torch.Generator().manual_seed(7))
    c = augment_batch(x, cfg, 0.5, 0.25, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_no_augmentation_is_plain_normalization():
    x = batch()
    out = augment_batch(x, NONE, 0.5, 0.25, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, normalize(x, 0.5, 0.25))


def test_flip_with_probability_one_mirrors_every_image():
    x = batch()
    cfg = augment(hflip=1.0, rotation=0, translate=0, scale=0, brightness=0, contrast=0,
                  erasing=0)
    out = augment_batch(x, cfg, 0.0, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x.flip(-1).unsqueeze(1).float() / 255, atol=1e-5, rtol=0)


def test_random_erasing_zeroes_one_rectangle_per_image():
    x = torch.ones(32, 1, 48, 48)
    out = random_erasing(x, 1.0, torch.Generator().manual_seed(0))
    erased = (out == 0).float().mean(dim=(1, 2, 3))
    assert (erased > 0).all() and (erased <= 0.34).all()
    for img in out[:, 0]:
        rows = (img == 0).any(dim=1).nonzero().flatten()
        cols = (img == 0).any(dim=0).nonzero().flatten()
        assert (img[rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 0).all()
    assert torch.equal(random_erasing(x, 0.0, torch.Generator().manual_seed(0)), x)


def test_random_crop_takes_a_window_of_each_image():
    from ferpipe.train.augment import random_crop

    x = torch.arange(4 * 48 * 48, dtype=torch.float32).view(4, 1, 48, 48)
    out = random_crop(x, 40, torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 40, 40)
    offsets = set()
    for img, crop in zip(x[:, 0], out[:, 0]):
        top = int((crop[0, 0] - img[0, 0]).item()) // 48
        left = int((crop[0, 0] - img[0, 0]).item()) % 48
        assert 0 <= top <= 8 and 0 <= left <= 8
        torch.testing.assert_close(crop, img[top:top + 40, left:left + 40])
        offsets.add((top, left))
    assert len(offsets) > 1  # each image its own offset
    assert random_crop(x, 48, torch.Generator()) is x


def test_augment_batch_crops_to_the_crop_size():
    out = augment_batch(batch(), augment(crop=40), 0.5, 0.25, torch.Generator().manual_seed(0))
    assert out.shape == (16, 1, 40, 40)


def test_mix_batch_mixup_cutmix_and_off():
    from ferpipe.train.augment import mix_batch

    torch.manual_seed(0)
    x = torch.rand(8, 1, 48, 48)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 1])
    same, onehot = mix_batch(x, y, augment(mixup_alpha=0.4, mix_prob=0.0), 7,
                             torch.Generator().manual_seed(0))
    assert same is x and torch.equal(onehot, torch.nn.functional.one_hot(y, 7).float())
    mixed, soft = mix_batch(x, y, augment(mixup_alpha=0.4, mix_prob=1.0), 7,
                            torch.Generator().manual_seed(0))
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    lam = soft[0, y[0]].item()  # image 0 is mixed with its neighbour (torchvision: roll by 1)
    torch.testing.assert_close(mixed[0], lam * x[0] + (1 - lam) * x[-1])
    cut, soft = mix_batch(x, y, augment(cutmix_alpha=1.0, mix_prob=1.0), 7,
                          torch.Generator().manual_seed(0))
    changed = (cut != x).float().mean().item()  # a rectangle of each image is pasted
    assert 0 < changed < 1 and torch.allclose(soft.sum(1), torch.ones(8))


def test_autoaugment_changes_images_keeping_dtype_shape_and_range():
    x = batch(32)
    out = auto_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device
    changed = [not torch.equal(a, b) for a, b in zip(out, x)]
    assert sum(changed) >= 24  # a sub-policy's operations each apply with some probability
    full = augment_batch(x, augment(autoaugment=True, hflip=0, rotation=0, translate=0, scale=0,
                                    brightness=0, contrast=0, erasing=0),
                         0.5, 0.25, torch.Generator().manual_seed(0))
    assert full.shape == (32, 1, 48, 48) and full.dtype == torch.float32
    torch.testing.assert_close(full, normalize(out, 0.5, 0.25))
    pixels = full * 0.25 + 0.5
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_autoaugment_draws_a_sub_policy_per_image():
    """One image repeated: a batch-level AutoAugment would give one result for every copy."""
    x = batch(1).expand(32, 48, 48).contiguous()
    out = auto_augment(x, torch.Generator().manual_seed(3))
    assert len({tuple(img.flatten().tolist()) for img in out}) >= 8


def test_autoaugment_depends_only_on_the_generator_and_leaves_the_global_rng_alone():
    x = batch()
    cfg = augment(autoaugment=True)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = augment_batch(x, cfg, 0.5, 0.25, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)
    b = augment_batch(x, cfg, 0.5, 0.25, torch.Generator().manual_seed(7))
    c = augment_batch(x, cfg, 0.5, 0.25, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_autoaugment_off_is_not_run(monkeypatch):
    def fail(*args):
        raise AssertionError("auto_augment ran with augment.autoaugment: false")

    monkeypatch.setattr(augment_module, "auto_augment", fail)
    x = batch()
    torch.testing.assert_close(augment_batch(x, NONE, 0.5, 0.25, torch.Generator().manual_seed(0)),
                               normalize(x, 0.5, 0.25))
    with pytest.raises(AssertionError, match="ran with"):
        augment_batch(x, augment(autoaugment=True), 0.5, 0.25, torch.Generator().manual_seed(0))


def test_affine_crop_equals_sampling_the_whole_image_then_cropping():
    """The crop folded into the sampling grid gives the images of the old two-step path (the
    whole transformed image, then `random_crop` with the same offsets), at 40x40 of the work."""
    import torch.nn.functional as F

    from ferpipe.train.augment import affine_crop, random_crop

    x = batch(32).unsqueeze(1).float() / 255
    angle = torch.linspace(-0.3, 0.3, 32)
    zoom = torch.linspace(0.9, 1.1, 32)
    flip = torch.where(torch.arange(32) % 2 == 0, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift = torch.linspace(-0.2, 0.2, 64).view(32, 2)
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    new = affine_crop(x, theta, 40, torch.Generator().manual_seed(5))
    whole = F.grid_sample(x, F.affine_grid(theta, [32, 1, 48, 48], align_corners=False),
                          mode="bilinear", padding_mode="border", align_corners=False)
    old = random_crop(whole, 40, torch.Generator().manual_seed(5))
    assert new.shape == (32, 1, 40, 40)
    torch.testing.assert_close(new, old, atol=1e-5, rtol=0)
    assert affine_crop(x, theta, 48, torch.Generator()).shape == (32, 1, 48, 48)


def test_host_choices_on_the_cpu_come_from_the_generator_itself():
    """On the CPU the host-side draws (mixing coin flips, AutoAugment's seed) use `gen` as
    before; a device generator would be hashed instead of read (no host sync)."""
    from ferpipe.train.augment import host_generator

    gen = torch.Generator().manual_seed(3)
    assert host_generator(gen) is gen
