"""Choose the face crop's framing by measured accuracy: FER2013's val faces, each upscaled and
put back into a photo-like frame, go through the predict path (detector, alignment, crop with a
margin) and are classified; the framing whose crops score best is the one closest to FER2013's
own. Val only, never test.

Each 48 x 48 val image is upscaled `--upscale` times (bicubic) and surrounded by a border of
half its side (replicated), so the detector sees a face inside a larger picture. Rows: the
detector, the margin, with or without alignment; columns: faces found, accuracy on all images
(a miss counts as the whole-image prediction, as `ferpipe-predict` does), and, for reference,
the classifier on the original 48 x 48 images.

    python scripts/framing.py [--model REF] [--margins -0.1 0 0.1 0.2] [--limit N]

Prints a Markdown table (docs/faces.md holds the committed one, with its command).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ferpipe.model.inference import probabilities
from ferpipe.model.released import RELEASED_MODEL
from ferpipe.predict.detectors import make_detector
from ferpipe.predict.faces import Face, align_face, opencv
from ferpipe.predict.predictor import load_classifier


def photo_like(image: np.ndarray, upscale: int) -> np.ndarray:
    """A uint8 (48, 48) face upscaled (bicubic) and framed by a replicated border of half its
    new side: uint8 (2 x 48 x upscale, same)."""
    cv2 = opencv()
    big = cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    border = big.shape[0] // 2
    return cv2.copyMakeBorder(big, border, border, border, border, cv2.BORDER_REPLICATE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(RELEASED_MODEL))
    parser.add_argument("--val", default="data/prepared/val.npz")
    parser.add_argument("--margins", type=float, nargs="+", default=[-0.1, 0.0, 0.1, 0.2])
    parser.add_argument("--upscale", type=int, default=4)
    parser.add_argument("--limit", type=int, default=0, help="first N val images (0: all)")
    parser.add_argument("--tta", default="hflip")
    args = parser.parse_args()
    val = np.load(args.val)
    images, labels = val["images"], val["labels"]
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    classifier = load_classifier(args.model)
    size = classifier.image_size

    def accuracy(crops: np.ndarray) -> float:
        probs = probabilities(classifier, crops, args.tta, 0.0)
        return float((probs.argmax(1) == labels).mean())

    print(f"model {args.model}, {len(images)} val images, TTA {args.tta}, upscale "
          f"{args.upscale}\n")
    print("| detector | margin | aligned | faces found | val accuracy |")
    print("|---|---|---|---|---|")
    print(f"| none (the 48 x 48 image) | | | | {100 * accuracy(images):.2f}% |")
    for name in ("yunet", "haar"):
        detector = make_detector(name)
        photos = [photo_like(image, args.upscale) for image in images]
        start = time.perf_counter()
        found = [detector.detect(photo) for photo in photos]
        seconds = time.perf_counter() - start
        hits = sum(bool(faces) for faces in found)
        cv2 = opencv()
        for margin in args.margins:
            for aligned in ((False, True) if name == "yunet" else (False,)):
                crops = []
                for photo, faces in zip(photos, found):
                    if not faces:
                        crops.append(cv2.resize(photo, (size, size),
                                                interpolation=cv2.INTER_AREA))
                        continue
                    face = faces[0] if aligned else Face(faces[0].box)
                    crops.append(align_face(photo, face, margin, size))
                print(f"| {name} | {margin:g} | {'yes' if aligned else 'no'} | "
                      f"{hits}/{len(images)} | {100 * accuracy(np.stack(crops)):.2f}% |",
                      flush=True)
        print(f"<!-- {name}: {1000 * seconds / len(images):.1f} ms per photo -->", flush=True)


if __name__ == "__main__":
    main()
