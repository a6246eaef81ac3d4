"""Whole-batch augmentation on the device: no per-image Python or PIL work.

Each sample gets its own random affine transform (flip, rotation, scale, translation) applied in
one `affine_grid` + `grid_sample` call, then per-sample brightness/contrast jitter, normalization
and random erasing (Zhong et al. 2020, "Random Erasing Data Augmentation", AAAI; the same area
and aspect-ratio ranges as `torchvision.transforms.RandomErasing`). All randomness comes from the
`torch.Generator` passed in, so a seeded generator gives identical batches. The strengths are the
`augment` params (`ferpipe.core.params.Augment`): hflip, the probability of a horizontal flip;
rotation, the max rotation in degrees (uniform in [-rotation, rotation]); translate, the max
shift as a fraction of the image side; scale, the max zoom change (uniform in [1 - scale,
1 + scale]); brightness and contrast, the max jitter factor (uniform in [1 - b, 1 + b], as
torchvision's ColorJitter); erasing, the probability of random erasing per image (area 2-33% of
the image, aspect ratio 0.3-3.3); crop, the side of a random crop taken from each image (the
40-44 pixel crops of the strongest from-scratch FER2013 results, e.g. Khaireddin & Chen 2021,
"Facial Emotion Recognition: State of the Art Performance on FER2013", arXiv:2105.03588);
mixup_alpha, cutmix_alpha and mix_prob, mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk
Minimization", ICLR) and CutMix (Yun et al. 2019, "CutMix", ICCV) on whole batches, through
torchvision's `transforms.v2.MixUp` / `CutMix` (`mix_batch`). autoaugment, when true, first
runs torchvision's AutoAugment on each image (`auto_augment`: a per-image loop, the one step
that is not whole-batch).
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ferpipe.core.params import Augment
from ferpipe.model.inference import normalize


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def host_generator(gen: torch.Generator) -> torch.Generator:
    """A CPU generator for the choices made on the host (mixing coin flips, AutoAugment's seed),
    derived from `gen` without waiting for its device.

    Reading a number drawn on a GPU waits for every queued kernel (a host sync per batch);
    reading a CUDA generator's state does not (its seed and offset live on the host). So for a
    device generator, the CPU generator is seeded from a hash of `gen`'s state and `gen` is
    advanced by one (queued) draw, so the next call gets another seed; the choices still depend
    only on `gen`. A CPU generator is returned as it is.
    """
    if gen.device.type == "cpu":
        return gen
    digest = hashlib.blake2b(gen.get_state().numpy().tobytes(), digest_size=8).digest()
    torch.rand(1, generator=gen, device=gen.device)  # advances gen's offset; nothing is read
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def augment_batch(images: torch.Tensor, cfg: Augment, mean: float, std: float,
                  gen: torch.Generator) -> torch.Tensor:
    """Augment and normalize a batch of uint8 images on their device.

    Args:
        images: uint8 tensor (B, H, W), pixels 0-255, on any device.
        cfg: augmentation strengths (the `augment` params).
        mean, std: dataset pixel statistics in [0, 1] units.
        gen: random generator on the same device as `images`.

    Returns:
        float32 tensor (B, 1, S, S), S = `cfg.crop` (H when crop >= H), normalized:
        (pixel / 255 - mean) / std, where erased regions are 0 (the dataset mean).
    """
    if cfg.autoaugment:
        images = auto_augment(images, gen)
    b, h, w = images.shape
    dev = images.device
    x = images.unsqueeze(1).float().div_(255.0)

    # Per-sample affine (output -> input sampling grid, normalized [-1, 1] coordinates).
    angle = _uniform(b, -cfg.rotation, cfg.rotation, gen, dev) * (math.pi / 180.0)
    zoom = _uniform(b, 1.0 - cfg.scale, 1.0 + cfg.scale, gen, dev)
    flip = torch.where(torch.rand(b, generator=gen, device=dev) < cfg.hflip, -1.0, 1.0)
    shift = _uniform(2 * b, -2 * cfg.translate, 2 * cfg.translate, gen, dev).view(b, 2)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
                         torch.stack([sin * flip, cos, shift[:, 1]], dim=1)], dim=1)
    if cfg.rotation or cfg.scale or cfg.translate or cfg.hflip:
        x = affine_crop(x, theta, cfg.crop, gen)
    else:
        x = random_crop(x, cfg.crop, gen)

    # Brightness (multiply) and contrast (blend with the image mean), as ColorJitter.
    if cfg.brightness:
        x = x * _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, gen, dev).view(b, 1, 1, 1)
    if cfg.contrast:
        c = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, gen, dev).view(b, 1, 1, 1)
        m = x.mean(dim=(2, 3), keepdim=True)
        x = (x - m) * c + m
    x = normalize(x.clamp_(0.0, 1.0), mean, std)

    if cfg.erasing:
        x = random_erasing(x, cfg.erasing, gen)
    return x


def random_erasing(x: torch.Tensor, p: float, gen: torch.Generator,
                   area: tuple[float, float] = (0.02, 0.33),
                   ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Zero one random rectangle in each image with probability `p` (vectorized).

    Args:
        x: float tensor (B, C, H, W).
        area: range of the erased fraction of the image area.
        ratio: range of the rectangle's aspect ratio (height / width), sampled log-uniformly.

    Returns:
        A tensor like `x` with the rectangles set to 0.
    """
    b, _, h, w = x.shape
    dev = x.device
    frac = _uniform(b, area[0], area[1], gen, dev)
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), gen, dev)
    aspect = torch.exp(log_r)
    eh = (torch.sqrt(frac * aspect) * h).clamp(max=h)
    ew = (torch.sqrt(frac / aspect) * w).clamp(max=w)
    top = torch.rand(b, generator=gen, device=dev) * (h - eh)
    left = torch.rand(b, generator=gen, device=dev) * (w - ew)
    apply = torch.rand(b, generator=gen, device=dev) < p
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    mask = ((ys >= top.view(b, 1, 1)) & (ys < (top + eh).view(b, 1, 1))
            & (xs >= left.view(b, 1, 1)) & (xs < (left + ew).view(b, 1, 1))
            & apply.view(b, 1, 1))
    return x.masked_fill(mask.unsqueeze(1), 0.0)


def crop_offsets(b: int, h: int, w: int, size: int, gen: torch.Generator, device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The top and left offsets (int64 (b,), pixels) of `size` x `size` windows of h x w images,
    each uniform over the valid offsets."""
    top = (torch.rand(b, generator=gen, device=device) * (h - size + 1)).long().clamp_(max=h - size)
    left = (torch.rand(b, generator=gen, device=device) * (w - size + 1)).long().clamp_(max=w - size)
    return top, left


def affine_crop(x: torch.Tensor, theta: torch.Tensor, size: int, gen: torch.Generator
                ) -> torch.Tensor:
    """The affine transform `theta` of each image, then a random `size` x `size` window of it,
    in one `grid_sample` that computes only the window.

    Equal (up to float rounding) to sampling the whole transformed image and cropping it
    (`random_crop`, with the same offsets from `gen`), at (size / H)^2 of the sampling work: the
    window's output pixels are mapped to their place in the whole output grid, and from there
    through `theta`.

    Args:
        x: float (B, C, H, W). theta: float (B, 2, 3), output -> input in normalized
            [-1, 1] coordinates (`F.affine_grid`, align_corners=False). size: crop side, pixels
            (>= H and W: the whole image).

    Returns:
        float (B, C, size, size) (or (B, C, H, W)), bilinear, border padding.
    """
    b, c, h, w = x.shape
    if size >= h and size >= w:
        grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    top, left = crop_offsets(b, h, w, size, gen, x.device)
    # Window pixel i (normalized u' = (2i + 1) / size - 1) is whole-grid pixel i + left:
    # u = (2 (i + left) + 1) / W - 1 = (size / W) u' + (size + 2 left) / W - 1.
    scale = theta.new_tensor([size / w, size / h])
    offset = torch.stack([(size + 2 * left) / w - 1, (size + 2 * top) / h - 1], dim=1).to(theta)
    linear = theta[:, :, :2]
    window = torch.cat([linear * scale, (linear @ offset.unsqueeze(2)) + theta[:, :, 2:]], dim=2)
    grid = F.affine_grid(window, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A random `size` x `size` window of each image, its offset uniform over the valid ones.

    Args:
        x: float (B, C, H, W). size: crop side, pixels (>= H and W: `x` is returned as it is).

    Returns:
        float (B, C, size, size).
    """
    b, c, h, w = x.shape
    if size >= h and size >= w:
        return x
    dev = x.device
    top, left = crop_offsets(b, h, w, size, gen, dev)
    steps = torch.arange(size, device=dev)
    rows = (top[:, None] + steps).view(b, 1, size, 1)
    cols = (left[:, None] + steps).view(b, 1, 1, size)
    return x[torch.arange(b, device=dev).view(b, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
             rows, cols]


def mix_batch(x: torch.Tensor, y: torch.Tensor, cfg: Augment, num_classes: int,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix on a normalized batch, with probability `cfg.mix_prob`.

    The coin flip and the choice between the two (when both alphas are on) come from `gen`
    (through `host_generator`, so a GPU batch is mixed without a host sync);
    the mixing weight comes from torchvision's transform (torch's global RNG, saved in the resume
    checkpoint). Each image is mixed with its neighbour in the batch (torchvision's convention;
    the batch order is already random).

    Args:
        x: float (B, C, H, W). y: int64 (B,) class indices.

    Returns:
        (images float (B, C, H, W), targets float (B, num_classes) summing to 1 per row); the
        targets are one-hot when the batch is not mixed.
    """
    choices = [(transform, alpha) for transform, alpha in ((v2.MixUp, cfg.mixup_alpha),
                                                           (v2.CutMix, cfg.cutmix_alpha)) if alpha]
    flips = torch.rand(2, generator=host_generator(gen)).tolist()
    if not choices or flips[0] >= cfg.mix_prob:
        return x, F.one_hot(y, num_classes).float()
    transform, alpha = choices[int(flips[1] * len(choices))]
    return transform(alpha=alpha, num_classes=num_classes)(x, y)


#: torchvision's AutoAugment with its ImageNet policy (25 sub-policies of two operations).
AUTO_AUGMENT = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)


def auto_augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """`augment.autoaugment`: torchvision's AutoAugment, ImageNet policy (Cubuk et al. 2019,
    "AutoAugment: Learning Augmentation Policies from Data", CVPR; `torchvision.transforms.v2.
    AutoAugment`), as a FER2013 transfer-learning notebook uses it: each image draws its own
    sub-policy.

    AutoAugment given a batch would apply one sub-policy to all of it, so the images go through
    it one at a time, on their device. AutoAugment draws its randomness from torch's global CPU
    generator: here that generator is seeded from `gen` (one draw per batch) inside
    `torch.random.fork_rng`, so the result depends only on `gen`, like the rest of
    `augment_batch`, and the global RNG state (dropout, the resume checkpoint's) is untouched.

    Args:
        images: uint8 tensor (B, H, W), pixels 0-255, on any device.
        gen: random generator on the same device as `images`.

    Returns:
        uint8 tensor (B, H, W), on the same device; the geometric operations fill with 0.
    """
    seed = int(torch.randint(2**62, (1,), generator=host_generator(gen)).item())
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return torch.stack([AUTO_AUGMENT(image.unsqueeze(0)) for image in images]).squeeze(1)


def clean_augment(cfg: Augment) -> Augment:
    """The augmentation of the last `augment.clean_last` share of the epochs: the same random crop
    and flip, with rotation, translation, zoom, brightness, contrast, erasing and AutoAugment off,
    so training ends on the distribution it is tested on (He et al. 2019, "Data augmentation
    revisited", which turned the strong augmentation off for the last epochs)."""
    return cfg.model_copy(update={"rotation": 0.0, "translate": 0.0, "scale": 0.0,
                                  "brightness": 0.0, "contrast": 0.0, "erasing": 0.0,
                                  "autoaugment": False})


def clean_epochs(epochs: int, clean_last: float) -> int:
    """How many of the last epochs use `clean_augment`: `round(epochs * clean_last)`."""
    return int(round(epochs * clean_last))
