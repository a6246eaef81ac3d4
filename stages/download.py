"""Stage 1, download: fetch FER2013 and normalize it into data/raw/images.zip."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferpipe.data import write_json  # noqa: E402
from ferpipe.raw import fetch_raw  # noqa: E402
from ferpipe.params import load_params, section, stage_args  # noqa: E402


def main() -> None:
    args = stage_args(__doc__)
    cfg = section(load_params(args.params), "download")
    counts = fetch_raw(cfg["source"], Path(cfg["local_archive"]), Path(cfg["out"]),
                       sha256=cfg["sha256"],
                       max_unpacked_bytes=int(cfg["max_unpacked_mb"] * 2**20),
                       max_members=cfg["max_members"])
    for split, per_class in counts.items():
        print(f"{split}: {sum(per_class.values())} files {per_class}")
    write_json({split: {"images": sum(c.values()), **c} for split, c in counts.items()},
               "metrics/raw.json")


if __name__ == "__main__":
    main()
