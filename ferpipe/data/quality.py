"""Data quality: exact duplicates, train/test leakage and blank images, found by decoded pixels.

FER2013 holds exact copies of the same face (the same 48 x 48 pixels under another file name,
sometimes with another label), across train and test too, and a few all-black images. Two images
are the same here when the hash of their decoded pixels is the same (blake2b, 128 bits).

`clean_splits` flags every train/val image with at most one reason, checked in this order, and
drops it when that reason's switch is on:

1. `test_overlap`: its pixels also appear in the test split (a leak from test into training);
2. `uniform`: all black, or near-uniform (pixel std below a threshold);
3. `duplicate`: a copy of an earlier image of the same split (the first, in the split's order,
   is kept), or a train image whose pixels are in val.

The test split is reported on (how many of its images are also in train/val, copies within it,
blank ones) and never altered, so test accuracy stays comparable with published FER2013 numbers
apart from the dropped training images.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np

from ferpipe.core.errors import DataError
from ferpipe.data.splits import CLASS_NAMES

REASONS = ("test_overlap", "uniform", "duplicate")


def pixel_hashes(images: np.ndarray) -> list[bytes]:
    """128-bit blake2b digest of each image's pixels.

    Args:
        images: uint8 (N, H, W).

    Returns:
        N digests of 16 bytes; equal pixels give equal digests.
    """
    return [hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=16).digest()
            for img in images]


def uniform_mask(images: np.ndarray, max_std: float) -> tuple[np.ndarray, np.ndarray]:
    """(all_black, near_uniform) boolean (N,) masks for uint8 (N, H, W) images.

    all_black: every pixel is 0. near_uniform: not all black, pixel std (0-255 units) below
    `max_std`.
    """
    flat = images.reshape(len(images), -1)
    black = flat.max(axis=1) == 0 if len(flat) else np.zeros(0, bool)
    std = flat.std(axis=1) if len(flat) else np.zeros(0)
    return black, (std < max_std) & ~black


def _per_class(labels: np.ndarray, mask: np.ndarray) -> dict[str, int]:
    counts = np.bincount(labels[mask], minlength=len(CLASS_NAMES))
    return {cls: int(n) for cls, n in zip(CLASS_NAMES, counts)}


def clean_splits(splits: dict[str, dict[str, np.ndarray]], *, drop_test_overlap: bool = True,
                 drop_uniform: bool = True, drop_duplicates: bool = True,
                 uniform_std: float = 2.0
                 ) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Find duplicates, test leakage and blank images; drop the flagged train/val images.

    Args:
        splits: {split: arrays} with `images` uint8 (N, H, W) and `labels` int64 (N,) (other
            arrays, e.g. `files`, are filtered alongside). Must contain `test`; `train` and an
            optional `val` are cleaned.
        drop_test_overlap, drop_uniform, drop_duplicates: switch each reason's dropping on/off
            (images are still counted in the report's `groups`).
        uniform_std: pixel std (0-255 units) under which an image counts as near-uniform.

    Returns:
        (cleaned splits, report). The report has `groups` (over all splits: duplicate_groups,
        duplicate_copies, test_overlap_groups, test_images_in_train (test images whose pixels
        are also in train or val), conflicting_groups (copies with different labels),
        all_black, near_uniform) and one entry per split: images, dropped per reason, dropped,
        kept, and the same per class. For test: images, in_train, duplicate, uniform (found,
        never dropped).

    Raises:
        KeyError: no `test` split.
    """
    hashes = {split: pixel_hashes(arrays["images"]) for split, arrays in splits.items()}
    members: dict[bytes, list[tuple[str, int]]] = defaultdict(list)
    for split in sorted(splits, key=("train", "val", "test").index):
        for h, label in zip(hashes[split], splits[split]["labels"]):
            members[h].append((split, int(label)))
    test_hashes = set(hashes["test"])
    val_hashes = set(hashes.get("val", ()))

    groups = [g for g in members.values() if len(g) > 1]
    leaking = [g for g in groups if any(s == "test" for s, _ in g)
               and any(s != "test" for s, _ in g)]
    summary = {
        "duplicate_groups": len(groups),
        "duplicate_copies": sum(len(g) - 1 for g in groups),
        "test_overlap_groups": len(leaking),
        "test_images_in_train": sum(sum(s == "test" for s, _ in g) for g in leaking),
        "conflicting_groups": sum(len({label for _, label in g}) > 1 for g in groups),
        "all_black": 0, "near_uniform": 0,
    }
    cleaned, report = {}, {"groups": summary}
    for split, arrays in splits.items():
        images, labels = arrays["images"], arrays["labels"]
        black, near = uniform_mask(images, uniform_std)
        summary["all_black"] += int(black.sum())
        summary["near_uniform"] += int(near.sum())
        seen: set[bytes] = set()
        first = np.zeros(len(labels), bool)
        for i, h in enumerate(hashes[split]):
            first[i] = h not in seen
            seen.add(h)
        if split == "test":
            others = {h for s, hs in hashes.items() if s != "test" for h in hs}
            in_train = np.array([h in others for h in hashes[split]], bool)
            report[split] = {"images": len(labels), "in_train": int(in_train.sum()),
                             "duplicate": int((~first).sum()),
                             "uniform": int((black | near).sum()), "dropped": 0,
                             "kept": len(labels),
                             "per_class": {cls: {"images": n} for cls, n in
                                           _per_class(labels, np.ones(len(labels), bool)).items()}}
            for key, mask in (("in_train", in_train), ("duplicate", ~first),
                              ("uniform", black | near)):
                for cls, n in _per_class(labels, mask).items():
                    report[split]["per_class"][cls][key] = n
            cleaned[split] = arrays
            continue
        found = {
            "test_overlap": np.array([h in test_hashes for h in hashes[split]], bool),
            "uniform": black | near,
            "duplicate": ~first | (np.array([h in val_hashes for h in hashes[split]], bool)
                                   if split == "train" else np.zeros(len(labels), bool)),
        }
        switches = {"test_overlap": drop_test_overlap, "uniform": drop_uniform,
                    "duplicate": drop_duplicates}
        dropped = np.zeros(len(labels), bool)
        reason_masks = {}
        for reason in REASONS:  # each image gets at most one reason, the first that applies
            mask = found[reason] & ~dropped if switches[reason] else np.zeros(len(labels), bool)
            reason_masks[reason] = mask
            dropped |= mask
        keep = ~dropped
        cleaned[split] = {key: value[keep] for key, value in arrays.items()}
        entry = {"images": len(labels),
                 **{reason: int(mask.sum()) for reason, mask in reason_masks.items()},
                 "dropped": int(dropped.sum()), "kept": int(keep.sum())}
        per_class = {cls: {"images": n} for cls, n in
                     _per_class(labels, np.ones(len(labels), bool)).items()}
        for key, mask in (*reason_masks.items(), ("dropped", dropped), ("kept", keep)):
            for cls, n in _per_class(labels, mask).items():
                per_class[cls][key] = n
        report[split] = {**entry, "per_class": per_class}
    return cleaned, report


def check_bad_fraction(splits: dict[str, dict[str, np.ndarray]], info: dict[str, dict],
                       max_fraction: float, show: int = 10) -> None:
    """Fail when a split has more undecodable files than `prepare.max_bad_fraction` allows.

    Args:
        splits: {split: arrays}, the decoded (good) images.
        info: {split: {"bad": [(file, reason), ...], ...}} from `raw.decode_archive`.
        max_fraction: the largest allowed share of bad files per split, in [0, 1].
        show: how many bad files the error lists.

    Raises:
        DataError: a split's bad share is above `max_fraction`; the message gives the split,
            the count, the share and the first `show` files with their reasons.
    """
    for split, entry in sorted(info.items()):
        bad = entry["bad"]
        total = len(bad) + len(splits[split]["labels"])
        if bad and len(bad) / total > max_fraction:
            listed = "; ".join(f"{file} ({reason})" for file, reason in bad[:show])
            raise DataError(
                f"prepare: {split}: {len(bad)} of {total} files ({len(bad) / total:.1%}) could "
                f"not be decoded, more than prepare.max_bad_fraction = {max_fraction}: {listed}"
                + (f"; and {len(bad) - show} more" if len(bad) > show else ""))
