"""Stage 2, prepare: decode every image once, drop leaks and copies, carve val, write the arrays.

Writes data/prepared/<split>.npz, metrics/data.json (images per split and class),
metrics/quality.json (duplicates, test leakage, blank, bad and converted images per split and
class) and metrics/bad_files.csv (every file that could not be decoded, with the reason).
Nothing is written when a check fails: every output goes to a temp name first and all are
renamed into place at the end (see ferpipe.core.outputs).
"""

import csv
from pathlib import Path

from ferpipe.core.errors import DataError, run_main
from ferpipe.core.files import write_json
from ferpipe.core.outputs import Outputs, stage_outputs
from ferpipe.core.params import Prepare, load_params, stage_args
from ferpipe.data.decode import decode_archive
from ferpipe.data.quality import check_bad_fraction, clean_splits
from ferpipe.data.splits import RAW_ARCHIVE, class_counts, save_split, stratified_split

SPLITS = ("train", "val", "test")


def main() -> None:
    cfg = load_params(stage_args(__doc__).params).prepare
    with stage_outputs() as outs:
        prepare(cfg, outs.folder(cfg.out, "prepare", {f"{s}.npz" for s in SPLITS}), outs)


def prepare(cfg: Prepare, out: Path, outs: Outputs) -> None:
    """Decode, check, clean and split; write the arrays to `out` and the metrics to temp names."""
    decoded = decode_archive(Path(cfg.raw) / RAW_ARCHIVE, cfg.image_size)
    splits = {split: arrays for split, (arrays, _) in decoded.items()}
    info = {split: info for split, (_, info) in decoded.items()}
    check_bad_fraction(splits, info, cfg.max_bad_fraction)
    splits, quality = clean_splits(
        splits, drop_test_overlap=cfg.drop_test_overlap, drop_uniform=cfg.drop_uniform,
        drop_duplicates=cfg.drop_duplicates, uniform_std=cfg.uniform_std)
    for split, entry in info.items():
        quality[split].update(bad=len(entry["bad"]), converted=entry["converted"])
    if "val" not in splits:
        splits["train"], splits["val"] = stratified_split(splits["train"], cfg.val_fraction,
                                                          cfg.seed)
    for split in SPLITS:
        if len(splits[split]["labels"]) == 0:
            raise DataError(f"prepare: no images left in split '{split}' after cleaning "
                            f"(see the prepare.drop_* params)")

    report = {}
    for split in SPLITS:
        save_split(splits[split], out / f"{split}.npz")
        report[split] = {"images": len(splits[split]["labels"]),
                         **class_counts(splits[split]["labels"])}
        print(f"{split}: {report[split]}")
    write_json(report, outs.file("metrics/data.json"))
    write_json(quality, outs.file("metrics/quality.json"))
    with open(outs.file("metrics/bad_files.csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "file", "reason"])
        writer.writerows((split, file, reason) for split, entry in sorted(info.items())
                         for file, reason in entry["bad"])
    print("quality: " + ", ".join(f"{k} {v}" for k, v in quality["groups"].items()))
    for split in quality:
        if split != "groups":
            print(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in quality[split].items()
                                             if k != "per_class"))


if __name__ == "__main__":
    run_main(main)
