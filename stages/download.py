"""Stage 1, download: fetch FER2013 and unpack it into data/raw/<split>/<class>/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferpipe.data import write_json  # noqa: E402
from ferpipe.raw import fetch_raw  # noqa: E402
from ferpipe.params import load_params, section, stage_args  # noqa: E402


def main() -> None:
    args = stage_args(__doc__)
    cfg = section(load_params(args.params), "download",
                  required=("source", "local_archive", "sha256", "out"), path=args.params)
    counts = fetch_raw(cfg["source"], Path(cfg["local_archive"]), Path(cfg["out"]),
                       sha256=cfg["sha256"])
    for split, per_class in counts.items():
        print(f"{split}: {sum(per_class.values())} images {per_class}")
    write_json({split: {"images": sum(c.values()), **c} for split, c in counts.items()},
               "metrics/raw.json")


if __name__ == "__main__":
    main()
