"""Stage 3, stats: mean and std of the training pixels ([0, 1] units) to data/stats.json."""

from ferpipe.core.errors import run_main
from ferpipe.core.files import write_json
from ferpipe.core.outputs import stage_outputs
from ferpipe.core.params import load_params, stage_args
from ferpipe.data.splits import load_split, pixel_stats


def main() -> None:
    cfg = load_params(stage_args(__doc__).params).stats
    stats = pixel_stats(load_split(cfg.train)["images"])
    print(f"train pixels: mean {stats['mean']:.4f}, std {stats['std']:.4f} ({stats['pixels']})")
    with stage_outputs() as outs:
        write_json(stats, outs.file(cfg.out))


if __name__ == "__main__":
    run_main(main)
