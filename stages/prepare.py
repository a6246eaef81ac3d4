"""Stage 2, prepare: decode every image once into data/prepared/<split>.npz and carve val."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferpipe.data import class_counts, save_split, stratified_split, write_json  # noqa: E402
from ferpipe.raw import RAW_ARCHIVE, decode_archive  # noqa: E402
from ferpipe.params import load_params, section, stage_args  # noqa: E402


def main() -> None:
    args = stage_args(__doc__)
    cfg = section(load_params(args.params), "prepare",
                  required=("raw", "out", "val_fraction", "seed", "image_size"), path=args.params)
    raw, out = Path(cfg["raw"]), Path(cfg["out"])
    decoded = decode_archive(raw / RAW_ARCHIVE, cfg["image_size"])
    splits = {split: arrays for split, (arrays, _) in decoded.items()}
    converted = {split: n for split, (_, n) in decoded.items()}
    if "val" not in splits:
        splits["train"], splits["val"] = stratified_split(splits["train"], cfg["val_fraction"],
                                                          cfg["seed"])
    report = {}
    for split in ("train", "val", "test"):
        arrays = splits[split]
        save_split(arrays, out / f"{split}.npz")
        counts = class_counts(arrays["labels"])
        report[split] = {"images": len(arrays["labels"]), "converted": converted.get(split, 0),
                         **counts}
        print(f"{split}: {report[split]}")
    write_json(report, "metrics/data.json")


if __name__ == "__main__":
    main()
