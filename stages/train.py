"""Stage 4, train: the model of `model` params with the recipe of `train` and `augment`; keeps the
best checkpoint by val accuracy.

Runs as one process (`python -m stages.train`) or data-parallel under torchrun
(`torchrun --standalone --nproc_per_node=N -m stages.train`), where rank 0 writes every output.
After every epoch it writes `<out>/resume.pt`; when the stage is killed and run again with the same
params, data and code, it continues after the last completed epoch, in the same MLflow run. The
file is deleted when training finishes.
"""

import contextlib
import csv
import resource
from pathlib import Path

import mlflow
import torch

from ferpipe.core import store, tracking
from ferpipe.core.codedeps import package_modules
from ferpipe.core.errors import run_main
from ferpipe.core.files import write_json
from ferpipe.core.outputs import stage_outputs
from ferpipe.core.params import Params, load_params, stage_args
from ferpipe.data.splits import CLASS_NAMES, class_counts, load_split, read_stats
from ferpipe.model.checkpoint import load_checkpoint, save_checkpoint
from ferpipe.model.device import StepContext, precision_name, resolve_amp
from ferpipe.model.network import build_model
from ferpipe.train.distributed import Dist, all_reduce, init_distributed, shutdown_distributed
from ferpipe.train.fit import fit
from ferpipe.train.resume import Resume, fingerprint
from ferpipe.train.teacher import check_distillation, load_targets

#: The code a resume checkpoint must have been written by (with the same params and data): this
#: script and every package module it imports (the list dvc.yaml's deps are checked against).
CODE = [Path(__file__), *package_modules(Path(__file__))]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_csv(rows: list[dict], path: Path) -> None:
    """Write dict rows to a CSV with a header (columns from the first row)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    params = load_params(stage_args(__doc__).params)
    dist, device = init_distributed(params.train.device)
    try:
        train_model(params, dist, device)
    finally:
        shutdown_distributed()


def train_model(params: Params, dist: Dist, device: torch.device) -> None:
    """Build, train and save the model; only rank 0 writes files and logs to MLflow."""
    cfg = params.train
    used = {"train": cfg.model_dump(), "model": params.model.model_dump(),
            "augment": params.augment.model_dump()}
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    amp = resolve_amp(cfg.amp, device)
    stats = read_stats(cfg.stats)  # checked before anything is built or trained
    check_distillation(cfg, params.augment)
    if dist.is_main:
        store.check_store()  # a tracking server that is down: one line, before anything else
    data_dir, out = Path(cfg.data), Path(cfg.out)
    train, val = load_split(data_dir / "train.npz"), load_split(data_dir / "val.npz")
    size = train["images"].shape[-1]
    teacher = load_targets(cfg, data_dir / "train.npz", train["labels"])
    teacher_tags = {} if teacher is None else {
        f"teacher/{k}": str(v) for k, v in teacher[1].items() if not isinstance(v, (dict, list))}
    counts = list(class_counts(train["labels"]).values())  # the prior of evaluate.logit_adjustment
    input_size = min(params.augment.crop, size)  # what the model sees: the crop, or the image
    model = build_model(params.model, len(CLASS_NAMES), input_size).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ctx = StepContext(device, stats["mean"], stats["std"], amp, cfg.channels_last)
    precision = precision_name(amp)
    if dist.is_main:
        print(f"device {device} x {dist.world_size} process(es), precision {precision}, "
              f"{len(train['labels'])} train / {len(val['labels'])} val images")
        out.mkdir(parents=True, exist_ok=True)
    resume = None
    if cfg.resume:
        resume = Resume(out / "resume.pt", fingerprint(
            used, [data_dir / "train.npz", data_dir / "val.npz", cfg.stats, *CODE,
                   *([cfg.teacher] if teacher else [])],
            dist.world_size, device=device.type, precision=precision))
        resume.load()
    run_id = resume.state["extra"].get("run_id") if resume and resume.state else None
    # What a failing tracking store leaves, as its error line says (ferpipe/core/tracking.py).
    relog = ("the outputs are written and models/resume.pt is kept: run `dvc repro train` again "
             "to log them (it resumes after the last epoch, without training)" if resume else
             "the outputs are written; `dvc repro train` logs them only by training again "
             "(train.resume is false)")
    run_context: contextlib.AbstractContextManager = contextlib.nullcontext()
    if dist.is_main:
        with store.store_errors("cannot start the run", "nothing was trained", cfg.experiment):
            run_context = tracking.closing(tracking.start_run(cfg.experiment, used, {
                "device": str(device), "precision": precision,
                "torch_version": torch.__version__, "world_size": str(dist.world_size),
                **teacher_tags},
                run_id=run_id), relog)
    # Epochs whose metrics the store did not take; kept in the resume checkpoint, logged at the end
    missed = list(resume.state["extra"].get("unlogged_epochs", [])) if run_id else []
    if resume is not None:
        resume.extra["unlogged_epochs"] = missed
    epoch_log = tracking.EpochLog(missed)
    with run_context as run, stage_outputs() as outs:
        # Only rank 0 writes; all its outputs are renamed into place at the end.
        checkpoint = outs.file(out / "model.pt") if dist.is_main else None
        if dist.is_main:
            tracking.write_run_ref(outs.file(out / "mlflow_run.json"), run, cfg.experiment)
            if resume is not None:
                resume.extra["run_id"] = run.info.run_id

        def on_best(epoch: int, val_accuracy: float, state_dict: dict) -> None:
            save_checkpoint(checkpoint, state_dict, class_names=list(CLASS_NAMES),
                            mean=stats["mean"], std=stats["std"],
                            image_size=size, params=used,
                            extra={"epoch": epoch, "val_accuracy": val_accuracy,
                                   "input_size": input_size,
                                   "class_counts": counts})

        result = fit(model, train, val, cfg, params.augment, ctx, on_best, epoch_log, dist,
                     resume, teacher[0] if teacher else None)
        wall = result.wall_seconds
        # The largest peak over the ranks (each holds its own copy of the arrays).
        peak = all_reduce(torch.tensor([peak_rss_mb()], dtype=torch.float64, device=device),
                          dist, op="max").item()
        if not dist.is_main:
            return
        write_csv(result.history, outs.file("metrics/history.csv"))
        write_csv([{"step": i, "lr": lr} for i, lr in enumerate(result.lrs)],
                  outs.file("metrics/lr.csv"))
        metrics = {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
                   "epochs": len(result.history), "train_minutes": wall / 60,
                   "images_per_s": result.images / result.step_seconds,
                   "peak_rss_mb": round(peak, 1), "world_size": dist.world_size,
                   "resumed_after_epoch": result.resumed_from,
                   "device": str(device), "precision": precision}
        write_json(metrics, outs.file("metrics/train.json"))
    # Every file is in place: log them into the run, then drop the resume checkpoint.
    with store.store_errors("the run's summaries, history and model were not logged", relog,
                            cfg.experiment), \
            tracking.resume_run(out / "mlflow_run.json"):
        # Run summaries under summary/: they must not share a key with a per-epoch series
        # (epoch/images_per_s) and are grouped after the curves in MLflow's charts.
        mlflow.log_metrics({f"summary/{k}": v for k, v in metrics.items()
                            if isinstance(v, (int, float))})
        epoch_log.flush(result.history)
        mlflow.log_artifact("metrics/history.csv")
        best, ckpt = load_checkpoint(out / "model.pt")
        tracking.log_model(out / "model.pt", best, int(ckpt.get("input_size", ckpt["image_size"])))
    if resume is not None:
        resume.remove()
    print(f"best val accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}; "
          f"{wall / 60:.1f} min, peak memory {peak:.0f} MiB")


if __name__ == "__main__":
    run_main(main)
