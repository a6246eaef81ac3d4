"""Stage 3, stats: mean and std of the training pixels ([0, 1] units) to data/stats.json."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferpipe.data import load_split, pixel_stats, write_json  # noqa: E402
from ferpipe.params import load_params, section, stage_args  # noqa: E402


def main() -> None:
    args = stage_args(__doc__)
    cfg = section(load_params(args.params), "stats")
    stats = pixel_stats(load_split(cfg["train"])["images"])
    print(f"train pixels: mean {stats['mean']:.4f}, std {stats['std']:.4f} ({stats['pixels']})")
    write_json(stats, cfg["out"])


if __name__ == "__main__":
    main()
