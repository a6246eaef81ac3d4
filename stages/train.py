"""Stage 4, train: ResNet18 with a one-cycle schedule; keeps the best checkpoint by val accuracy."""

import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow  # noqa: E402
import torch  # noqa: E402

from ferpipe import tracking  # noqa: E402
from ferpipe.augment import AugmentConfig  # noqa: E402
from ferpipe.data import CLASS_NAMES, load_split, read_json, write_json  # noqa: E402
from ferpipe.model import build_model, save_checkpoint  # noqa: E402
from ferpipe.params import load_params, section, stage_args  # noqa: E402
from ferpipe.training import StepContext, fit, resolve_amp, resolve_device  # noqa: E402

TRAIN_KEYS = ("data", "stats", "out", "lr", "epochs", "batch_size", "optimizer", "weight_decay",
              "pct_start", "grad_clip", "label_smoothing", "class_weights", "seed", "device",
              "amp", "channels_last", "experiment")


def write_csv(rows: list[dict], path: Path) -> None:
    """Write dict rows to a CSV with a header (columns from the first row)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    args = stage_args(__doc__)
    params = load_params(args.params)
    cfg = section(params, "train", required=TRAIN_KEYS, path=args.params)
    model_cfg = section(params, "model", required=("stem", "pretrained", "hidden", "dropout"),
                        path=args.params)
    aug = AugmentConfig.from_params(section(params, "augment", path=args.params))
    used = {"train": cfg, "model": model_cfg, "augment": section(params, "augment")}

    torch.manual_seed(cfg["seed"])
    device = resolve_device(cfg["device"])
    amp = resolve_amp(cfg["amp"], device)
    stats = read_json(cfg["stats"])
    data_dir, out = Path(cfg["data"]), Path(cfg["out"])
    train, val = load_split(data_dir / "train.npz"), load_split(data_dir / "val.npz")
    model = build_model(len(CLASS_NAMES), stem=model_cfg["stem"],
                        pretrained=model_cfg["pretrained"], hidden=model_cfg["hidden"],
                        dropout=model_cfg["dropout"]).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    ctx = StepContext(device, stats["mean"], stats["std"], amp, cfg["channels_last"])
    precision = str(amp).removeprefix("torch.") if amp else "fp32"
    print(f"device {device}, precision {precision}, {len(train['labels'])} train / "
          f"{len(val['labels'])} val images")

    out.mkdir(parents=True, exist_ok=True)
    with tracking.start_run(cfg["experiment"], used, {
            "device": str(device), "precision": precision, "torch_version": torch.__version__}
    ) as run:
        tracking.write_run_ref(out / "mlflow_run.json", run, cfg["experiment"])

        def on_best(epoch: int, val_accuracy: float) -> None:
            save_checkpoint(out / "model.pt", model, class_names=list(CLASS_NAMES),
                            mean=stats["mean"], std=stats["std"],
                            image_size=train["images"].shape[-1], params=used,
                            extra={"epoch": epoch, "val_accuracy": val_accuracy})

        def on_epoch(row: dict) -> None:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

        start = time.perf_counter()
        result = fit(model, train, val, cfg, aug, ctx, on_best, on_epoch)
        wall = time.perf_counter() - start

        write_csv(result.history, Path("metrics/history.csv"))
        write_csv([{"step": i, "lr": lr} for i, lr in enumerate(result.lrs)], Path("metrics/lr.csv"))
        metrics = {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
                   "epochs": len(result.history), "train_minutes": wall / 60,
                   "images_per_s": result.images / result.step_seconds,
                   "device": str(device), "precision": precision}
        write_json(metrics, "metrics/train.json")
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        mlflow.log_artifact("metrics/history.csv")
        tracking.log_model(out / "model.pt")
    print(f"best val accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}; "
          f"{wall / 60:.1f} min")


if __name__ == "__main__":
    main()
