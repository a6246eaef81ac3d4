"""Collect finished DVC experiments of a recipe study: `python scripts/study_table.py NAME ...`.

For each experiment (a name as `dvc exp run -n` gave it, found among the local `refs/exps`) it
reads the train stage's `metrics/train.json`, `metrics/history.csv` and `params.yaml` from the
experiment's commit, takes its best checkpoint (`models/model.pt`) from the DVC cache by the hash in
the experiment's `dvc.lock`, and scores that checkpoint on the val split (never test) without TTA
and with hflip TTA: accuracy, macro-F1 and balanced accuracy (`ferpipe.evaluate.metrics`).

Writes `<out>/<name>.json` (the params that differ from the baseline commit's, the train
summary, the val scores) and `<out>/<name>.history.csv`, and prints one markdown table row per
experiment. Run it in the repo that ran the experiments (it needs their refs and its DVC cache);
the val split is this checkout's `data/prepared/val.npz`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferpipe.core.params import flatten, load_params  # noqa: E402
from ferpipe.data.splits import load_split  # noqa: E402


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def experiment_ref(name: str) -> str:
    """The `refs/exps/...` ref of the experiment `name`."""
    refs = [r for r in git("for-each-ref", "refs/exps", "--format=%(refname)").split()
            if r.rsplit("/", 1)[-1] == name]
    if len(refs) != 1:
        raise SystemExit(f"error: experiment {name}: {len(refs)} refs found under refs/exps")
    return refs[0]


def cached_model(ref: str) -> Path:
    """The DVC cache file of the experiment's models/model.pt."""
    lock = yaml.safe_load(git("show", f"{ref}:dvc.lock"))
    outs = {o["path"]: o for o in lock["stages"]["train"]["outs"]}
    md5 = outs["models/model.pt"]["md5"]
    path = ROOT / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    if not path.is_file():
        raise SystemExit(f"error: {ref}: models/model.pt ({md5}) is not in the DVC cache")
    return path


def val_scores(ref: str, model: Path) -> dict[str, dict[str, float]]:
    """Val accuracy, macro-F1 and balanced accuracy of the checkpoint, per TTA (none, hflip)."""
    from stages.evaluate import REPORTED, Scorer

    with tempfile.TemporaryDirectory() as tmp:
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(git("show", f"{ref}:params.yaml"))
        cfg = load_params(params_file).evaluate.model_copy(update={"model": str(model)})
    scorer = Scorer(cfg)
    val = load_split(ROOT / cfg.val)
    out = {}
    for tta in ("none", "hflip"):
        scored = scorer.score(scorer.log_probs(val, tta), val, 0.0)
        out[tta] = {k: scored[k] for k in REPORTED}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+")
    parser.add_argument("--out", default="docs/study", help="folder for the per-experiment files")
    args = parser.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        ref = experiment_ref(name)
        parts = ref.split("/")  # refs/exps/<2 hex digits>/<the other 38>/<name>
        baseline = parts[2] + parts[3]
        params = flatten(yaml.safe_load(git("show", f"{ref}:params.yaml")))
        base = flatten(yaml.safe_load(git("show", f"{baseline}:params.yaml")))
        differ = {k: v for k, v in params.items() if base.get(k) != v}
        train = json.loads(git("show", f"{ref}:metrics/train.json"))
        history = git("show", f"{ref}:metrics/history.csv")
        rows = list(csv.DictReader(io.StringIO(history)))
        scores = val_scores(ref, cached_model(ref))
        record = {"experiment": name, "commit": git("rev-parse", ref).strip(),
                  "baseline": baseline, "params_that_differ": differ, "train": train,
                  "val": scores, "epochs": len(rows)}
        (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        (out / f"{name}.history.csv").write_text(history)
        shown = ", ".join(f"`{k}={v}`" for k, v in differ.items() if k != "train.epochs")
        print(f"| {name} | {shown or '(none)'} | {100 * train['best_val_accuracy']:.2f}% | "
              f"{train['best_epoch']} | {100 * scores['hflip']['accuracy']:.2f}% | "
              f"{scores['hflip']['macro_f1']:.3f} | {train['train_minutes']:.1f} | "
              f"{train['images_per_s']:.0f} |")


if __name__ == "__main__":
    main()
