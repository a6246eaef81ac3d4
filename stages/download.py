"""Stage 1, download: fetch FER2013 and normalize it into data/raw/images.zip."""

from pathlib import Path

from ferpipe.core.errors import run_main
from ferpipe.core.files import write_json
from ferpipe.core.outputs import stage_outputs
from ferpipe.core.params import load_params, stage_args
from ferpipe.data.fetch import fetch_raw


def main() -> None:
    cfg = load_params(stage_args(__doc__).params).download
    with stage_outputs() as outs:
        counts = fetch_raw(cfg.source, Path(cfg.local_archive), Path(cfg.out), sha256=cfg.sha256,
                           max_unpacked_bytes=int(cfg.max_unpacked_mb * 2**20),
                           max_members=cfg.max_members, outputs=outs)
        for split, per_class in counts.items():
            print(f"{split}: {sum(per_class.values())} files {per_class}")
        write_json({split: {"images": sum(c.values()), **c} for split, c in counts.items()},
                   outs.file("metrics/raw.json"))


if __name__ == "__main__":
    run_main(main)
