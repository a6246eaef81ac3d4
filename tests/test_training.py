import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from ferpipe.core.errors import ParamsError
from ferpipe.model.device import StepContext, resolve_amp, resolve_device
from ferpipe.model.inference import predict_log_proba
from ferpipe.model.network import build_model
from ferpipe.train import distributed
from ferpipe.train import fit as fit_module
from ferpipe.train import loop as training
from ferpipe.train.distributed import Dist, shard_indices
from ferpipe.train.fit import fit
from ferpipe.train.loop import validate
from ferpipe.train.recipe import TrainingError, class_weights, make_optimizer, make_recipe, one_cycle
from ferpipe.train.resume import Resume, fingerprint
from tests.fakedata import default_params, face_like

CFG = {"lr": 3e-3, "epochs": 3, "batch_size": 16, "optimizer": "adamw", "weight_decay": 0.0,
       "pct_start": 0.3, "grad_clip": 1.0, "label_smoothing": 0.0, "class_weights": "none",
       "seed": 0, "compile": False}
AUG = default_params(augment={"rotation": 5, "erasing": 0.3}).augment


def train_cfg(**values):
    """The project's train params with CFG and `values` applied."""
    return default_params(train={**CFG, **values}).train


def model_cfg(**values):
    return default_params(model={"stem": "standard", "hidden": 0, "dropout": 0.0, **values}).model


def test_one_cycle_shape():
    opt = make_optimizer(torch.nn.Linear(2, 2), train_cfg(optimizer="sgd", lr=0.1))
    sched = one_cycle(opt, max_lr=0.1, total_steps=100, pct_start=0.3)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert int(np.argmax(lrs)) == 29 and max(lrs) == pytest.approx(0.1)
    assert lrs[-1] < 1e-4 and lrs[-1] == pytest.approx(min(lrs))
    assert all(a <= b for a, b in zip(lrs[:29], lrs[1:30]))
    assert all(a >= b for a, b in zip(lrs[29:], lrs[30:]))


def test_class_weights_inverse_frequency():
    labels = np.array([0, 0, 0, 1])
    w = class_weights(labels, "inverse_frequency", 2)
    torch.testing.assert_close(w, torch.tensor([4 / 6, 2.0]))
    assert class_weights(labels, "none", 2) is None


def test_amp_and_device_choices():
    cpu = torch.device("cpu")
    assert resolve_amp("none", cpu) is None
    assert resolve_amp("bf16", cpu) == torch.bfloat16
    with pytest.raises(ParamsError, match="train.amp: fp16 needs a CUDA device"):
        resolve_amp("fp16", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(ParamsError, match="train.device: 'cuda' requested but CUDA"):
            resolve_device("cuda")


def tiny_split(n_per_class, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(7), n_per_class)
    images = np.stack([face_like(int(c), rng) for c in labels])
    return {"images": images, "labels": labels.astype(np.int64)}


def run_fit(epochs=3, resume=None, on_epoch=None, hidden=0, train=None, augment=None):
    torch.manual_seed(0)
    model = build_model(model_cfg(hidden=hidden, dropout=0.5 if hidden else 0.0))
    ctx = StepContext(torch.device("cpu"), 0.4, 0.2)
    best = []
    aug = default_params(augment={"rotation": 5, "erasing": 0.3, **(augment or {})}).augment
    result = fit(model, tiny_split(12, 0), tiny_split(4, 1),
                 train_cfg(epochs=epochs, **(train or {})), aug, ctx,
                 on_best=lambda e, acc, state: best.append((e, acc, state)),
                 on_epoch=on_epoch, resume=resume)
    return model, result, best


def test_fit_learns_and_is_deterministic():
    model, result, best = run_fit()
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert len(result.lrs) == 3 * (84 // 16)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert best and best[-1][:2] == (result.best_epoch, result.best_val_accuracy)
    assert result.best_val_accuracy == max(r["val_accuracy"] for r in result.history)
    assert result.images == 3 * 80 and result.step_seconds > 0
    _, again, _ = run_fit()
    assert [r["train_loss"] for r in again.history] == [r["train_loss"] for r in result.history]


def test_validate_matches_argmax_accuracy_and_cross_entropy():
    model = build_model(model_cfg()).eval()
    data = tiny_split(2, 3)
    ctx = StepContext(torch.device("cpu"), 0.4, 0.2)
    images, labels = torch.from_numpy(data["images"]), torch.from_numpy(data["labels"])
    out = validate(model, images, labels, ctx, batch_size=5)
    with torch.no_grad():
        logits = model((images.unsqueeze(1).float() / 255 - 0.4) / 0.2)
    assert logits.shape == (14, 7)
    torch.testing.assert_close(predict_log_proba(model, images, ctx, batch_size=3),
                               logits.log_softmax(1), atol=1e-5, rtol=1e-5)
    assert out["accuracy"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert out["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(),
                                        rel=1e-5)


def test_a_non_finite_loss_stops_training_before_anything_is_saved(tmp_path):
    torch.manual_seed(0)
    best, resume = [], Resume(tmp_path / "resume.pt", "fp")
    with pytest.raises(TrainingError, match="the training loss became (nan|inf)"):
        fit(build_model(model_cfg()), tiny_split(12, 0), tiny_split(4, 1),
            train_cfg(lr=1e30, grad_clip=0.0, epochs=2), AUG,
            StepContext(torch.device("cpu"), 0.4, 0.2), on_best=lambda *a: best.append(a),
            resume=resume)
    assert best == [] and not resume.path.exists()


class Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    """Stopped in epoch 3 (after epoch 2's checkpoint), a new process-like start resumes after
    epoch 2 and ends with the same history, LRs, best epoch and weights as a run never stopped
    (dropout and random erasing included, so every RNG state matters)."""
    _, full, full_best = run_fit(epochs=4, hidden=16)
    model_full = full_best[-1][2]

    def stop_in_epoch_3(row):
        if row["epoch"] == 3:
            raise Interrupt  # on_epoch runs before the epoch's checkpoint: epoch 2's is the last

    resume = Resume(tmp_path / "resume.pt", "fp-1", extra={"run_id": "abc"})
    with pytest.raises(Interrupt):
        run_fit(epochs=4, resume=resume, on_epoch=stop_in_epoch_3, hidden=16)
    state = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert state["epoch"] == 2 and state["extra"] == {"run_id": "abc"}
    assert len(state["result"]["history"]) == 2
    assert not (tmp_path / "resume.pt.tmp").exists()

    again = Resume(tmp_path / "resume.pt", "fp-1")
    assert again.load() is not None
    model, resumed, best = run_fit(epochs=4, resume=again, hidden=16)
    assert resumed.resumed_from == 2
    first_two = max(full.history[:2], key=lambda r: r["val_accuracy"])  # re-saved on resume
    assert best[0][:2] == (first_two["epoch"], first_two["val_accuracy"])
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(resumed.history, full.history):
        assert {k: v for k, v in a.items() if k not in ("seconds", "images_per_s")} == \
            {k: v for k, v in b.items() if k not in ("seconds", "images_per_s")}
    assert resumed.lrs == full.lrs and resumed.images == full.images
    assert (resumed.best_epoch, resumed.best_val_accuracy) == (full.best_epoch,
                                                               full.best_val_accuracy)
    for key, value in best[-1][2].items():
        torch.testing.assert_close(value, model_full[key], rtol=0, atol=0)


def test_resume_ignores_a_checkpoint_of_other_params(tmp_path, capsys):
    resume = Resume(tmp_path / "resume.pt", "fp-1")
    run_fit(epochs=1, resume=resume)
    assert Resume(tmp_path / "resume.pt", "fp-1").load()["epoch"] == 1
    other = Resume(tmp_path / "resume.pt", "fp-2")
    assert other.load() is None and other.state is None
    assert "other params or data; not resumed" in capsys.readouterr().out
    _, result, _ = run_fit(epochs=2, resume=other)
    assert result.resumed_from == 0 and len(result.history) == 2


def test_fingerprint_changes_with_params_data_and_processes(tmp_path):
    data = tmp_path / "train.npz"
    data.write_bytes(b"abc")
    base = fingerprint({"train": {"lr": 0.1}}, [data])
    assert base == fingerprint({"train": {"lr": 0.1}}, [data])
    assert base != fingerprint({"train": {"lr": 0.2}}, [data])
    assert base != fingerprint({"train": {"lr": 0.1}}, [data], world_size=2)
    data.write_bytes(b"abd")
    assert base != fingerprint({"train": {"lr": 0.1}}, [data])


def test_shard_indices_splits_every_global_batch_disjointly():
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    shards = [shard_indices(order, 8, Dist(rank, 2)) for rank in (0, 1)]
    assert [len(s) for s in shards] == [24, 24]  # 6 global batches of 8, 4 per rank each
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    for step in range(6):  # together, step s is the single-process batch s
        batch = torch.cat([s[step * 4:(step + 1) * 4] for s in shards])
        assert batch.tolist() == order[step * 8:(step + 1) * 8].tolist()
    assert shard_indices(order, 8, Dist()).tolist() == order[:48].tolist()
    with pytest.raises(ValueError, match="train.batch_size: 9 is not divisible by the 2"):
        shard_indices(order, 9, Dist(0, 2))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank of a gloo job: run `fit`, recording the sample indices each epoch trained on."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    dist, device = distributed.init_distributed("cpu")
    seen = []
    real_epoch = fit_module.train_one_epoch

    def recording_epoch(model, images, labels, indices, *args, **kwargs):
        seen.append(indices.tolist())
        return real_epoch(model, images, labels, indices, *args, **kwargs)

    fit_module.train_one_epoch = recording_epoch  # the name fit calls
    try:
        torch.manual_seed(0)
        model = build_model(model_cfg())
        best = []
        result = fit(model, tiny_split(12, 0), tiny_split(5, 1), train_cfg(epochs=2),
                     default_params(augment={"rotation": 5}).augment, StepContext(device, 0.4, 0.2),
                     on_best=lambda e, acc, state: best.append(e), dist=dist)
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
            "seen": seen, "history": result.history, "n_lrs": len(result.lrs), "best": best,
            "weights": weights[:200].tolist(), "weight_sum": weights.double().sum().item()}))
    finally:
        fit_module.train_one_epoch = real_epoch
        distributed.shutdown_distributed()


def test_ddp_ranks_train_on_disjoint_shards_and_stay_in_sync(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    steps = 84 // 16  # tiny_split(12): 84 images, global batch 16
    order_gen = torch.Generator().manual_seed(CFG["seed"])
    for epoch in range(2):
        a, b = (set(r["seen"][epoch]) for r in ranks)
        assert len(a) == len(b) == steps * 8 and not a & b
        # Together the ranks see exactly the images a single process would see that epoch.
        expected = torch.randperm(84, generator=order_gen)[:steps * 16].tolist()
        assert a | b == set(expected)
    assert ranks[0]["n_lrs"] == ranks[1]["n_lrs"] == 2 * steps
    # Gradients were all-reduced: both ranks end with the same weights.
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], abs=1e-6)
    assert ranks[0]["weight_sum"] == pytest.approx(ranks[1]["weight_sum"], rel=1e-6)
    # Metrics are reduced over ranks: every rank logs the same history; only rank 0 saves.
    for row0, row1 in zip(ranks[0]["history"], ranks[1]["history"]):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert row0[key] == pytest.approx(row1[key])
    assert ranks[0]["best"] and ranks[1]["best"] == []


RECIPE = {"train": {"ema_decay": 0.9}, "augment": {"crop": 40, "mixup_alpha": 0.4,
                                                   "cutmix_alpha": 1.0, "mix_prob": 0.8}}


def test_crops_mixing_and_ema_train_and_the_best_model_is_the_average():
    model, result, best = run_fit(epochs=2, **RECIPE)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"], result.history  # it learns
    assert 0 <= result.history[-1]["val_balanced_accuracy"] <= 1
    # The best state is the averaged model's, not the trained one's.
    best_state = best[-1][2]
    trained = model.state_dict()
    assert best_state.keys() == trained.keys()
    assert any(not torch.equal(best_state[k], trained[k]) for k in trained
               if trained[k].is_floating_point())
    _, again, _ = run_fit(epochs=2, **RECIPE)
    assert [r["train_loss"] for r in again.history] == [r["train_loss"] for r in result.history]


def test_ema_follows_the_weights_with_its_decay():
    from ferpipe.train.recipe import make_ema

    model = torch.nn.Linear(2, 1, bias=False)
    ema = make_ema(model, 0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 0.9 * 1 + 0.1 * 2))
    assert make_ema(model, 0.0) is None


def test_the_plateau_scheduler_cuts_the_lr_when_val_loss_stalls():
    _, result, _ = run_fit(epochs=4, train={"scheduler": "plateau", "lr": 1e-3,
                                            "plateau_patience": 0, "plateau_factor": 0.5})
    lrs = [row["lr"] for row in result.history]
    losses = [row["val_loss"] for row in result.history]
    assert lrs[0] == pytest.approx(1e-3)
    for epoch in range(1, 4):  # an epoch runs at the LR set after the previous one's val loss
        stalled = losses[epoch - 1] >= min(losses[:epoch - 1], default=float("inf"))
        expected = lrs[epoch - 1] * (0.5 if stalled else 1.0)
        assert lrs[epoch] == pytest.approx(expected)
    assert len(set(result.lrs[:len(result.lrs) // 4])) == 1  # constant within an epoch


def test_resume_with_ema_and_mixing_equals_an_uninterrupted_run(tmp_path):
    _, full, full_best = run_fit(epochs=3, **RECIPE)

    def stop_in_epoch_2(row):
        if row["epoch"] == 2:
            raise Interrupt

    resume = Resume(tmp_path / "resume.pt", "fp-1")
    with pytest.raises(Interrupt):
        run_fit(epochs=3, resume=resume, on_epoch=stop_in_epoch_2, **RECIPE)
    again = Resume(tmp_path / "resume.pt", "fp-1")
    assert again.load()["epoch"] == 1
    _, resumed, resumed_best = run_fit(epochs=3, resume=again, **RECIPE)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    for key, value in full_best[-1][2].items():
        torch.testing.assert_close(resumed_best[-1][2][key], value)


def ids(params):
    return {id(p) for p in params}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_backbone_lr_scale_holds_through_the_one_cycle_schedule(optimizer):
    """Seed 002's differential rates: the head (fc) at train.lr, the rest at lr x scale."""
    model = build_model(model_cfg())
    cfg = train_cfg(optimizer=optimizer, lr=0.1, backbone_lr_scale=0.1)
    recipe = make_recipe(model, cfg, np.arange(7), StepContext(torch.device("cpu"), 0.4, 0.2),
                         total_steps=20)
    head, backbone = recipe.optimizer.param_groups
    assert ids(head["params"]) == ids(model.fc.parameters())
    assert ids(backbone["params"]) == ids(model.parameters()) - ids(model.fc.parameters())
    peaks = []
    for _ in range(20):
        assert backbone["lr"] == pytest.approx(0.1 * head["lr"], rel=1e-9)
        peaks.append(head["lr"])
        recipe.optimizer.step()
        recipe.scheduler.step()
    assert max(peaks) == pytest.approx(0.1)
    assert len(one_cycle(recipe.optimizer, [0.2, 0.05], 20, 0.3).optimizer.param_groups) == 2


def test_a_backbone_lr_scale_of_one_keeps_a_single_group_of_all_parameters():
    model = build_model(model_cfg())
    (group,) = make_optimizer(model, train_cfg()).param_groups
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]
    assert group["lr"] == CFG["lr"]


def test_small_cnn_head_is_its_mlp():
    model = build_model(default_params(model={"arch": "small_cnn"}).model)
    head, backbone = make_optimizer(model, train_cfg(backbone_lr_scale=0.5)).param_groups
    assert ids(head["params"]) == ids(model.fc.parameters())
    assert ids(backbone["params"]) == ids(model.features.parameters())
    assert backbone["lr"] == pytest.approx(0.5 * head["lr"])


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_frozen_parameters_are_left_out_of_the_optimizer(scale):
    model = build_model(model_cfg(freeze=3))  # stem, layer1, layer2
    optimizer = make_optimizer(model, train_cfg(backbone_lr_scale=scale))
    optimized = set().union(*(ids(g["params"]) for g in optimizer.param_groups))
    trainable = ids(p for p in model.parameters() if p.requires_grad)
    assert optimized == trainable
    assert not optimized & ids([*model.conv1.parameters(), *model.layer1.parameters(),
                                *model.layer2.parameters()])
    assert ids(model.layer3.parameters()) <= optimized
    head_only = build_model(model_cfg(freeze=5))
    (group,) = make_optimizer(head_only, train_cfg(backbone_lr_scale=scale)).param_groups
    assert ids(group["params"]) == ids(head_only.fc.parameters())


def test_fit_trains_only_the_unfrozen_stages_at_their_rates():
    torch.manual_seed(0)
    model = build_model(model_cfg(freeze=4))  # stem and layer1-3 frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, tiny_split(12, 0), tiny_split(2, 1),
                 train_cfg(epochs=1, backbone_lr_scale=0.1), AUG,
                 StepContext(torch.device("cpu"), 0.4, 0.2), on_best=lambda *a: None)
    assert len(result.history) == 1
    after = model.state_dict()
    for name, param in model.named_parameters():
        assert torch.equal(after[name], before[name]) == (not param.requires_grad), name
    assert not torch.equal(after["layer4.0.conv1.weight"], before["layer4.0.conv1.weight"])


def test_fit_trains_the_small_cnn_with_autoaugment():
    torch.manual_seed(0)
    model = build_model(default_params(model={"arch": "small_cnn", "dropout": 0.5}).model)
    aug = default_params(augment={"autoaugment": True, "crop": 48}).augment
    result = fit(model, tiny_split(12, 0), tiny_split(4, 1), train_cfg(epochs=2), aug,
                 StepContext(torch.device("cpu"), 0.4, 0.2), on_best=lambda *a: None)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in result.history)


def test_update_ema_is_averaged_models_update_without_device_syncs():
    """`update_ema` gives AveragedModel.update_parameters' weights and buffers (BatchNorm's
    running stats and its int64 counter included) step after step, and keeps n_averaged on the
    CPU."""
    from ferpipe.train.recipe import make_ema, update_ema

    torch.manual_seed(0)
    model = build_model(model_cfg(), 7, 48)
    ours, torchs = make_ema(model, 0.9), make_ema(model, 0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        model.train()
        loss = model(torch.randn(4, 1, 48, 48)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_ema(ours, model)
        torchs.update_parameters(model)
    for (name, a), b in zip(ours.module.state_dict().items(), torchs.module.state_dict().values()):
        assert torch.equal(a, b), name
    assert ours.n_averaged.item() == 4 and ours.n_averaged.device.type == "cpu"
    assert not torch.equal(ours.module.conv1.weight, model.conv1.weight)  # an average, not a copy


def test_optimizers_are_fused_on_the_cpu_and_match_the_per_tensor_update():
    torch.manual_seed(0)
    for optimizer in ("adamw", "sgd"):
        a, b = torch.nn.Linear(8, 3), torch.nn.Linear(8, 3)
        b.load_state_dict(a.state_dict())
        fused = make_optimizer(a, train_cfg(optimizer=optimizer, weight_decay=0.05))
        plain = make_optimizer(b, train_cfg(optimizer=optimizer, weight_decay=0.05, fused=False))
        assert fused.defaults["fused"] is True and not plain.defaults["fused"]
        for _ in range(5):
            x = torch.randn(16, 8)
            for net, opt in ((a, fused), (b, plain)):
                opt.zero_grad()
                net(x).square().mean().backward()
                opt.step()
        torch.testing.assert_close(a.weight, b.weight, atol=1e-6, rtol=1e-5)


def test_compile_auto_is_on_for_cuda_only_and_auto_amp_avoids_emulated_bf16(monkeypatch):
    from ferpipe.model import device as device_module
    from ferpipe.model.device import resolve_compile

    assert resolve_compile("auto", torch.device("cuda")) == "default"
    assert resolve_compile("auto", torch.device("cpu")) is None
    assert resolve_compile(True, torch.device("cpu")) == "default"
    assert resolve_compile(False, torch.device("cuda")) is None
    assert resolve_compile("reduce-overhead", torch.device("cpu")) == "reduce-overhead"
    with pytest.raises(ParamsError, match="train.compile"):
        train_cfg(compile="fast")
    cuda = torch.device("cuda")
    # A V100 or T4 emulates bf16: auto takes fp16 there, bf16 where it is native.
    monkeypatch.setattr(device_module, "cuda_supports_bf16", lambda device: False)
    assert resolve_amp("auto", cuda) == torch.float16
    monkeypatch.setattr(device_module, "cuda_supports_bf16", lambda device: True)
    assert resolve_amp("auto", cuda) == torch.bfloat16


def test_fingerprint_covers_the_resolved_device_and_precision(tmp_path):
    """A resume checkpoint written on the CPU (train.device: auto) is not continued on a GPU."""
    data = tmp_path / "train.npz"
    data.write_bytes(b"abc")
    params = {"train": {"device": "auto", "amp": "auto"}}
    cpu = fingerprint(params, [data], device="cpu", precision="bfloat16")
    assert cpu == fingerprint(params, [data], device="cpu", precision="bfloat16")
    assert cpu != fingerprint(params, [data], device="cuda", precision="bfloat16")
    assert cpu != fingerprint(params, [data], device="cpu", precision="fp32")


def test_epoch_seconds_are_read_after_the_device_finishes(monkeypatch):
    """train_one_epoch waits for the device before it reads the clock (on a GPU the loop only
    queues work), and reads device values once per epoch."""
    calls = []
    real_perf_counter = training.time.perf_counter
    monkeypatch.setattr(training, "synchronize", lambda device: calls.append("sync"))
    monkeypatch.setattr(training.time, "perf_counter",
                        lambda: calls.append("clock") or real_perf_counter())
    images = torch.randint(0, 256, (32, 48, 48), dtype=torch.uint8)
    labels = torch.arange(32) % 7
    model = build_model(model_cfg(), 7, 48)
    opt = make_optimizer(model, train_cfg())
    stats = training.train_one_epoch(model, images, labels, torch.arange(32), opt, None,
                                     torch.nn.CrossEntropyLoss(),
                                     StepContext(torch.device("cpu"), 0.5, 0.25), AUG, 16,
                                     torch.Generator().manual_seed(0))
    assert calls[:2] == ["sync", "clock"] and calls[-2:] == ["sync", "clock"]
    assert stats["images"] == 32 and stats["seconds"] > 0
