"""Does a whole-image view help ten-crop TTA? Val only, never test.

For a model trained on random crops (`augment.crop`, 40 of 48 pixels), ten-crop TTA averages the
softmax of ten 40-pixel crops (4 corners, centre, and their mirrors): no view sees the whole
face. This adds the whole 48-pixel image, resized to the model's input side (bilinear, antialiased), and its
mirror, and scores every combination on val with the evaluation's logit adjustments; each gain
over plain ten-crop has its paired bootstrap interval (the evaluate stage's rule: a lower bound
above 0 is a gain beyond val's noise).

    python scripts/tta_views.py [--model models/model.pt] [--val data/prepared/val.npz]

Prints a Markdown table (docs/recipe.md holds the committed one, with its command).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from ferpipe.data.splits import load_split
from ferpipe.evaluate.metrics import paired_gain_interval
from ferpipe.model.device import autocast
from ferpipe.model.inference import Classifier, adjust_logits, normalize, predict_log_proba


@torch.no_grad()
def whole_views(classifier: Classifier, images: np.ndarray, batch_size: int = 512
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-softmax float32 (N, C) of the whole image resized to the input side, and of its
    mirror."""
    model, ctx = classifier.model.eval(), classifier.ctx
    side = ctx.input_size
    out: tuple[list, list] = ([], [])
    for start in range(0, len(images), batch_size):
        x = normalize(torch.as_tensor(images[start:start + batch_size]), ctx.mean, ctx.std)
        x = F.interpolate(x, size=[side, side], mode="bilinear", align_corners=False,
                          antialias=True)
        for i, view in enumerate((x, TF.horizontal_flip(x))):
            with autocast(ctx.device, ctx.amp_dtype):
                logits = model(ctx.prepare(view))
            out[i].append(F.log_softmax(logits.float(), dim=1))
    return torch.cat(out[0]), torch.cat(out[1])


def mean_softmax(parts: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Log of the mean softmax over views, each part (log of a mean over `n` views, n)."""
    total = sum(n for _, n in parts)
    return torch.logsumexp(torch.stack([lp + np.log(n) for lp, n in parts]), 0) - np.log(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--val", default="data/prepared/val.npz")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.5])
    args = parser.parse_args()
    classifier = Classifier.from_checkpoint(args.model)
    val = load_split(args.val)
    labels = val["labels"]
    ctx = classifier.ctx
    ten = predict_log_proba(classifier.model, val["images"], ctx, "ten_crop")
    centre = predict_log_proba(classifier.model, val["images"], ctx, "none")
    whole, whole_flip = whole_views(classifier, val["images"])
    settings = {
        "centre crop (none)": centre,
        "whole image": whole,
        "ten-crop": ten,
        "ten-crop + whole": mean_softmax([(ten, 10), (whole, 1)]),
        "ten-crop + whole + mirror": mean_softmax([(ten, 10), (whole, 1), (whole_flip, 1)]),
        "ten-crop + whole x5 + mirror x5": mean_softmax([(ten, 10), (whole, 5),
                                                        (whole_flip, 5)]),
    }
    print(f"model {args.model}, {len(labels)} val images")
    print("| views | tau | val accuracy | gain over ten-crop (95% paired interval) |")
    print("|---|---|---|---|")
    for tau in args.taus:
        reference = adjust_logits(ten, classifier.class_counts, tau).argmax(1).numpy()
        for name, scores in settings.items():
            pred = adjust_logits(scores, classifier.class_counts, tau).argmax(1).numpy()
            accuracy = float((pred == labels).mean())
            if name == "ten-crop":
                gain = ""
            else:
                g = paired_gain_interval(labels, reference, pred)
                low, high = g["interval"]
                gain = f"{100 * g['gain']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
            print(f"| {name} | {tau:g} | {100 * accuracy:.2f}% | {gain} |")


if __name__ == "__main__":
    main()
