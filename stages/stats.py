"""Stage 3, stats: mean and std of the training pixels ([0, 1] units) to data/stats.json."""

from ferpipe.data import load_split, pixel_stats, write_json
from ferpipe.errors import run_main
from ferpipe.outputs import stage_outputs
from ferpipe.params import load_params, stage_args


def main() -> None:
    cfg = load_params(stage_args(__doc__).params).stats
    stats = pixel_stats(load_split(cfg.train)["images"])
    print(f"train pixels: mean {stats['mean']:.4f}, std {stats['std']:.4f} ({stats['pixels']})")
    with stage_outputs() as outs:
        write_json(stats, outs.file(cfg.out))


if __name__ == "__main__":
    run_main(main)
