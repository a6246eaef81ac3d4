"""End to end: the real `dvc repro`, `dvc exp run` and `dvc plots diff` on a tiny generated dataset."""

import json
import re
import shutil
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage import data as skdata

from ferpipe.core import store
from ferpipe.model.inference import Classifier
from ferpipe.predict.predictor import Predictor
from tests.browser import render
from tests.fakedata import face_like, learnable_face, make_image_folders, make_zip
from tests.fakerepo import in_terminal, make_repo, read_csv, sh, store_runs
from tests.servers import free_port, server_on

# End to end: each test starts real DVC, MLflow or server processes; longer than the default limit
pytestmark = pytest.mark.timeout(1800)

EPOCHS = 3
#: Chance on the 7 balanced classes is 1/7 (14%). The generated classes differ in brightness and
#: where a band sits (`learnable_face`), which a ResNet18 learns in 3 epochs (100% on val and test
#: on the generated images here): the tiny pipeline must score at least this on val and test, so
#: that a label or class-order mistake anywhere from the archive to the metrics fails the tests
#: (two classes swapped would score 5/7, 71%).
ABOVE_CHANCE = 0.85


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A temp git + DVC repo holding a copy of the project, params set for a 3-epoch run, and
    what that first `dvc repro` wrote, kept aside (`first`): later tests run experiments that
    change the workspace, and each test must pass in any order."""
    tmp = tmp_path_factory.mktemp("e2e")
    counts = make_image_folders(tmp / "images", n_train=30, n_test=6, image=learnable_face)
    archive = make_zip(tmp / "images", tmp / "fer_tiny.zip")
    repo = tmp / "repo"
    # the generated test images, in their class folders, as an external labelled folder
    env = make_repo(repo, archive, model={"stem": "standard"},
                    train={"epochs": EPOCHS, "batch_size": 16, "lr": 0.003},
                    plot={"grid_images": 16},
                    evaluate={"external": [str(tmp / "images" / "test")]})
    out = sh(["dvc", "repro"], repo, env)
    first = tmp / "first"
    for folder in ("metrics", "models"):
        shutil.copytree(repo / folder, first / folder)
    run_id = json.loads((repo / "models/mlflow_run.json").read_text())["run_id"]
    return {"path": repo, "env": env, "counts": counts, "repro_log": out, "first": first,
            "run_id": run_id, "outputs": output_files(repo)}


def output_files(repo_path):
    """Every file under models/ and metrics/, relative to the repo."""
    return sorted(str(p.relative_to(repo_path)) for folder in ("models", "metrics")
                  for p in (repo_path / folder).rglob("*") if p.is_file())


def test_repro_writes_sane_outputs(repo):
    r, first = repo["path"], repo["first"]
    for stage in ("download", "prepare", "stats", "train", "evaluate", "plot"):
        assert f"Running stage '{stage}'" in repo["repro_log"]
    assert sorted(p.name for p in (r / "data/raw").iterdir()) == [".ferpipe-output.json",
                                                              "images.zip"]
    data = json.loads((first / "metrics/data.json").read_text())
    assert data["train"]["images"] + data["val"]["images"] == repo["counts"]["train"]
    assert data["test"]["images"] == repo["counts"]["test"]
    stats = json.loads((r / "data/stats.json").read_text())
    assert 0 < stats["mean"] < 1 and 0 < stats["std"] < 0.5

    history = read_csv(first / "metrics/history.csv")
    assert [int(row["epoch"]) for row in history] == list(range(1, EPOCHS + 1))
    for row in history:
        assert 0 <= float(row["val_accuracy"]) <= 1 and float(row["images_per_s"]) > 0
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])  # it learns
    steps = (data["train"]["images"] // 16) * EPOCHS
    assert len(read_csv(first / "metrics/lr.csv")) == steps

    train = json.loads((first / "metrics/train.json").read_text())
    assert train["epochs"] == EPOCHS and 1 <= train["best_epoch"] <= EPOCHS
    assert train["best_val_accuracy"] == max(float(h["val_accuracy"]) for h in history)
    test = json.loads((first / "metrics/eval.json").read_text())["test"]
    # far above chance on val (model selection) and test (the evaluate stage's own scoring)
    assert train["best_val_accuracy"] >= ABOVE_CHANCE, train
    for key in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert test[key] >= ABOVE_CHANCE, (key, test)
    # the confusion matrix's diagonal is where the predictions agree with the true labels
    rows = read_csv(first / "metrics/confusion.csv")
    assert sum(row["actual"] == row["predicted"] for row in rows) == round(test["accuracy"] * len(rows))
    assert test["top2_accuracy"] >= test["accuracy"]
    assert test["n"] == repo["counts"]["test"]
    assert sum(c["support"] for c in test["per_class"].values()) == test["n"]
    summary = json.loads((first / "metrics/summary.json").read_text())
    assert summary == {
        "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
        "test_balanced_accuracy": test["balanced_accuracy"],
        "test_accuracy_no_tta": summary["test_accuracy_no_tta"],
        "best_val_accuracy": train["best_val_accuracy"],
        "train_minutes": train["train_minutes"], "images_per_s": train["images_per_s"],
        "train_images": data["train"]["images"], "test_images": repo["counts"]["test"]}
    assert len(read_csv(first / "metrics/confusion.csv")) == repo["counts"]["test"]
    assert "macro avg" in (first / "metrics/classification_report.txt").read_text()

    ckpt = torch.load(first / "models/model.pt", map_location="cpu", weights_only=True)
    assert ckpt["class_names"][0] == "angry" and ckpt["epoch"] == train["best_epoch"]
    assert ckpt["mean"] == pytest.approx(stats["mean"])
    pngs = sorted((first / "metrics/plots").glob("*.png"))
    assert [p.name for p in pngs] == ["accuracy.png", "confusion.png", "loss.png", "lr.png",
                                      "per_class_f1.png", "reliability.png"]
    grid = first / "metrics/predictions.png"  # holds dataset images: DVC-cached, git-ignored
    assert "/predictions.png" in (first / "metrics/.gitignore").read_text()
    for png in pngs + [grid]:
        assert png.stat().st_size > 5000 and Image.open(png).size[0] > 300


def test_mlflow_holds_one_complete_run(repo):
    """The first `dvc repro`'s run, found by the id it wrote (other tests add runs)."""
    r, first = repo["path"], repo["first"]
    client, runs = store_runs(r)
    (run,) = [run for run in runs if run.info.run_id == repo["run_id"]]
    assert sum(run.info.run_name == other.info.run_name for other in runs) == 1
    assert run.data.params["train.epochs"] == str(EPOCHS)
    assert run.data.params["model.stem"] == "standard"
    assert run.data.tags["device"] == "cpu" and run.data.tags["torch_version"]
    history = client.get_metric_history(run.info.run_id, "epoch/val_accuracy")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))
    # per-epoch series hold only the epochs; the run's summaries have keys of their own
    speeds = client.get_metric_history(run.info.run_id, "epoch/images_per_s")
    assert [m.step for m in speeds] == list(range(1, EPOCHS + 1))
    train = json.loads((first / "metrics/train.json").read_text())
    assert run.data.metrics["summary/images_per_s"] == pytest.approx(train["images_per_s"])
    # a plain dvc repro run is named <commit>-<params hash>; no tag is empty
    assert run.info.run_name == f"{run.data.tags['git_commit'][:7]}-{run.data.tags['params_hash']}"
    assert all(run.data.tags.values()) and "dvc_exp_name" not in run.data.tags
    # run summaries under summary/, named as in metrics/summary.json; no other key scheme
    summary = json.loads((first / "metrics/summary.json").read_text())
    for key, value in summary.items():
        assert run.data.metrics[f"summary/{key}"] == pytest.approx(value)
    assert run.data.metrics["summary/test_recall_disgust"] >= 0
    per_epoch = {f"epoch/{k}" for k in ("train_loss", "train_accuracy", "val_loss",
                                        "val_accuracy", "val_balanced_accuracy", "lr",
                                        "seconds", "images_per_s")}
    assert {k for k in run.data.metrics if not k.startswith("summary/")} == per_epoch
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/reliability.png" in artifacts and len(artifacts) == 7
    assert client.get_experiment(run.info.experiment_id).artifact_location.startswith(
        (r / "mlartifacts").as_uri())

    mlflow.set_tracking_uri(f"sqlite:///{r / 'mlflow.db'}")
    assert client.get_experiment(run.info.experiment_id).tags[
        "mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert type(model).__name__ == "ResNet"  # the module itself, not a torch.export graph
    # the model takes the training crop (augment.crop, 40 by default), normalized
    assert model(torch.zeros(3, 1, 40, 40)).shape == (3, 7)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert np.asarray(pyfunc.predict(np.zeros((5, 1, 40, 40), np.float32))).shape == (5, 7)


def test_second_repro_runs_nothing(repo):
    out = sh(["dvc", "repro"], repo["path"], repo["env"])
    assert "Running stage" not in out
    assert "up to date" in sh(["dvc", "status"], repo["path"], repo["env"])


def find_experiment(shown, lr):
    """In `dvc exp show --json` output (baselines with their experiments' revs), return
    (name, data) of the experiment whose params.yaml has train.lr == lr."""
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                params = rev["data"]["params"]["params.yaml"]["data"]
                if params["train"]["lr"] == lr:
                    return rev["name"], rev["data"]
    return None


def test_experiment_shows_up_and_plots_diff(repo, tmp_path):
    r, env = repo["path"], repo["env"]
    sh(["git", "add", "-A"], r, env)
    sh(["git", "commit", "-qm", "baseline run"], r, env)
    sh(["dvc", "exp", "run", "-S", "train.lr=0.01"], r, env)
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], r, env, stdout_only=True))
    found = find_experiment(shown, 0.01)
    assert found, "experiment with train.lr=0.01 not in dvc exp show"
    name, data = found
    # the headline figures are the one DVC metrics file
    assert list(data["metrics"]) == ["metrics/summary.json"]
    shown_accuracy = data["metrics"]["metrics/summary.json"]["data"]["test_accuracy"]

    _, runs = store_runs(r)
    (run,) = [run for run in runs if run.info.run_name == name]  # one MLflow run, named after it
    assert run.data.metrics["summary/test_accuracy"] == pytest.approx(shown_accuracy)
    assert run.data.params["train.lr"] == "0.01"

    out = sh(["dvc", "plots", "diff", "HEAD", name, "-o", "plots_diff"], r, env)
    assert "failed to load" not in out  # no plot depends on a file only DVC's cache holds
    html = (r / "plots_diff" / "index.html").read_text()
    assert "Confusion matrix" in html and "Accuracy per epoch" in html
    assert "cdn.jsdelivr" not in html
    # Opened with no network, every vega chart renders (a canvas per chart): 4 charts.
    dom = render((r / "plots_diff" / "index.html").as_uri())
    assert dom.count("<canvas") == 4, dom[-3000:]
    assert '"title": "accuracy"' in html and '"format": ".0%"' in html  # no "y"; percent
    # DVC's default page loads vega from a CDN: offline its charts do not render at all.
    default_page = tmp_path / "default.html"
    default_page.write_text("<html><head>{scripts}</head><body>{plot_divs}</body></html>")
    sh(["dvc", "plots", "diff", "HEAD", name, "-o", str(tmp_path / "plots_cdn"),
        "--html-template", str(default_page)], r, env)
    assert render((tmp_path / "plots_cdn" / "index.html").as_uri()).count("<canvas") == 0


def test_plain_exp_show_is_readable_in_a_200_column_terminal(repo):
    """A plain `dvc exp show` pages through `less -S`: the first screen of a 200-column
    terminal holds the experiment and the headline metrics, and the params people tune come
    next, whole (DVC collapses what does not fit its 1024-column table into "…", from the
    right: the plumbing params and the file hashes)."""
    r, env = repo["path"], repo["env"]
    sh(["dvc", "exp", "run", "-S", "train.lr=0.02"], r, env)  # a row with an experiment name
    lines = in_terminal(["dvc", "exp", "show"], r, env, columns=200)
    header = next(line for line in lines if line.lstrip().startswith("Experiment"))
    first_screen = header[:200]
    summary = json.loads((r / "metrics/summary.json").read_text())
    def whole(name, text):
        return re.search(rf"(?<!\S){re.escape(name)}(?!\S)", text) is not None
    for key in summary:
        assert whole(key, first_screen), (key, first_screen)
    tuned = ["train.lr", "train.epochs", "train.batch_size", "train.optimizer",
             "train.weight_decay", "train.label_smoothing", "train.ema_decay", "model.arch",
             "model.stem", "model.pretrained", "augment.crop", "augment.hflip",
             "augment.rotation", "augment.erasing"]
    for name in tuned:
        assert whole(name, header), (name, header)
    experiments = [line for line in lines if "├──" in line or "└──" in line]
    column = header.index("train.lr")  # each experiment's lr sits under its column
    assert "0.02" in {row[column:].split()[0] for row in experiments}, experiments


def test_temp_experiment_logs_into_the_main_store(repo):
    """`dvc exp run --temp` runs in .dvc/tmp/exps/...; its run must land in the main mlflow.db."""
    r, env = repo["path"], repo["env"]
    _, runs_before = store_runs(r)
    sh(["dvc", "exp", "run", "--temp", "-S", "train.lr=0.005"], r, env)
    _, runs = store_runs(r)
    assert len(runs) == len(runs_before) + 1
    newest = max(runs, key=lambda run: run.info.start_time)
    assert newest.data.params["train.lr"] == "0.005"
    assert "summary/test_accuracy" in newest.data.metrics
    assert newest.info.artifact_uri.startswith((r / "mlartifacts").as_uri())
    assert not list(r.glob(".dvc/tmp/exps/**/mlflow.db"))


def test_torchrun_launcher_trains_data_parallel_with_the_same_outputs(repo):
    """`-S train.launcher=torchrun ...` runs the train stage as 2 gloo processes on the CPU."""
    r, env = repo["path"], repo["env"]
    _, runs_before = store_runs(r)
    single_lrs = len(read_csv(r / "metrics/lr.csv"))
    launcher = "train.launcher='torchrun --standalone --nproc_per_node=2'"
    out = sh(["dvc", "exp", "run", "-S", launcher], r, env)
    assert "torchrun --standalone --nproc_per_node=2 -m stages.train" in out
    assert output_files(r) == repo["outputs"]
    train = json.loads((r / "metrics/train.json").read_text())
    assert train["world_size"] == 2 and train["epochs"] == EPOCHS and train["peak_rss_mb"] > 0
    assert len(read_csv(r / "metrics/history.csv")) == EPOCHS
    assert len(read_csv(r / "metrics/lr.csv")) == single_lrs  # global batch: same steps
    _, runs = store_runs(r)
    assert len(runs) == len(runs_before) + 1  # rank 0 alone logs
    newest = max(runs, key=lambda run: run.info.start_time)
    assert newest.data.tags["world_size"] == "2" and "summary/test_accuracy" in newest.data.metrics
    ckpt = torch.load(r / "models/model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])


REGISTERED = "models:/fer2013-resnet18@candidate"


def test_evaluate_reports_tta_and_registers_the_model(repo):
    """The first `dvc repro`'s evaluation and the model version its run registered (later
    experiments register versions too and move the alias)."""
    r, first = repo["path"], repo["first"]
    evaluation = json.loads((first / "metrics/eval.json").read_text())
    cfg = yaml.safe_load((r / "params.yaml").read_text())["evaluate"]
    assert (evaluation["tta"], evaluation["logit_adjustment"]) == (
        cfg["tta"], cfg["logit_adjustment"]) == ("ten_crop", 0.5)
    assert set(evaluation["test_no_tta"]) == {"accuracy", "balanced_accuracy", "macro_f1",
                                              "top2_accuracy", "loss"}
    # val, every TTA mode x logit adjustment: what evaluate.tta/logit_adjustment are chosen on
    table = evaluation["val_settings"]
    assert {(row["tta"], row["logit_adjustment"]) for row in table} == {
        (tta, tau) for tta in ("none", "hflip", "ten_crop")
        for tau in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert all(row["val_accuracy"] >= ABOVE_CHANCE for row in table), table
    # the choice leaves the plain setting only for a gain beyond val's noise
    rule = evaluation["val_choice_rule"]
    assert (rule["plain"]["tta"], rule["plain"]["logit_adjustment"]) == ("none", 0.0)
    if rule["gain_interval"] is None:
        assert evaluation["val_choice"] == rule["plain"] == rule["candidate"]
    else:
        low, high = rule["gain_interval"]["interval"]
        assert low <= rule["gain_interval"]["gain"] <= high
        assert evaluation["val_choice"] == (rule["candidate"] if low > 0 else rule["plain"])
    summary = json.loads((first / "metrics/summary.json").read_text())
    assert summary["test_accuracy_no_tta"] == evaluation["test_no_tta"]["accuracy"]
    # the test figures' 95% bootstrap intervals hold the figures themselves
    interval = evaluation["test_interval"]
    assert interval["confidence"] == 0.95 and interval["resamples"] == 1000
    for metric in ("accuracy", "macro_f1"):
        low, high = interval[metric]
        assert 0 <= low <= evaluation["test"][metric] <= high <= 1
    client, _ = store_runs(r)
    (version,) = client.search_model_versions(
        f"name = 'fer2013-resnet18' and run_id = '{repo['run_id']}'")
    run = client.get_run(version.run_id)
    assert version.tags["test_accuracy"] == f"{evaluation['test']['accuracy']:.4f}"
    assert (version.tags["tta"], version.tags["logit_adjustment"]) == ("ten_crop", "0.5")
    assert run.data.metrics["summary/test_accuracy_no_tta"] == pytest.approx(
        evaluation["test_no_tta"]["accuracy"])
    assert run.data.metrics["summary/test_macro_f1_ci_high"] == pytest.approx(
        interval["macro_f1"][1])
    # the ONNX export is registered beside it, from the same run
    (onnx_version,) = client.search_model_versions(
        f"name = 'fer2013-resnet18-onnx' and run_id = '{repo['run_id']}'")
    # the alias names the newest registered version: the last run's
    newest = max(client.search_model_versions("name = 'fer2013-resnet18'"), key=lambda v: int(v.version))
    assert client.get_model_version_by_alias("fer2013-resnet18", "candidate").version == newest.version




def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


def test_the_external_folder_is_scored_as_the_evaluate_folder_command_scores_it(repo):
    """evaluate.external: the stage's report of the folder (metrics/eval.json, MLflow) is the
    one `ferpipe-evaluate-folder` gives for the same checkpoint, with the evaluation's TTA,
    logit adjustment and temperature (read back from eval.json)."""
    first, folder = repo["first"], str(repo["path"].parent / "images" / "test")
    external = json.loads((first / "metrics/eval.json").read_text())["external"]
    staged = external["folders"][folder]
    assert staged["photos"] == repo["counts"]["test"]
    assert staged["skipped_classes"] == [] and staged["unreadable"] == []
    out = sh([sys.executable, "-m", "ferpipe.tools.evaluate_folder", folder, "--model",
              "models/model.pt", "--json"], first, repo["env"], stdout_only=True)
    command = json.loads(out)
    assert command["detector"] == external["detector"] and command["align"] == external["align"]
    assert command["temperature"] != 1.0  # the fitted one, found by the checkpoint's sha256
    for key in ("photos", "per_class_photos", "confusion", "no_face_found", "several_faces"):
        assert command[key] == staged[key], key
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "ece"):
        assert command[key] == pytest.approx(staged[key], abs=1e-6), key
    client, _ = store_runs(repo["path"])
    logged = client.get_run(repo["run_id"]).data.metrics
    assert logged["summary/external_test_accuracy"] == pytest.approx(staged["accuracy"])
    assert logged["summary/external_test_no_face_found"] == staged["no_face_found"]


def test_served_model_answers_like_the_predict_command(repo, tmp_path):
    """`mlflow models serve` of the registered model on a free loopback port: the logged serving
    example, a generated 48 x 48 image and the face the predict command crops from a real photo
    (skimage's astronaut); both answers equal `ferpipe.predict.cli`'s."""
    r = repo["path"]
    env = {**repo["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{r / 'mlflow.db'}"}
    image = face_like(5, np.random.default_rng(7))
    Image.fromarray(image).save(tmp_path / "face.png")
    Image.fromarray(skdata.astronaut()).save(tmp_path / "astronaut.png")
    out = sh([sys.executable, "-m", "ferpipe.predict.cli", str(tmp_path / "face.png"),
              str(tmp_path / "astronaut.png"), "--model", REGISTERED, "--json", "--tta", "none"],
             r, env, stdout_only=True)
    predicted, on_photo = [json.loads(line) for line in out.splitlines()]
    out = sh([sys.executable, "-m", "ferpipe.predict.cli", str(tmp_path / "face.png"), "--model",
              REGISTERED, "--json"], r, env, stdout_only=True)  # defaults: ten_crop, tau 0.5
    predicted_default = json.loads(out)
    assert predicted["whole_image"] is True  # a 48 x 48 crop: classified whole
    assert on_photo["whole_image"] is False
    gray = np.asarray(Image.open(tmp_path / "astronaut.png").convert("L"))
    # the predict command's crop: its default detector, alignment and margin
    faces, crops, whole = Predictor(Classifier.from_checkpoint(r / "models/model.pt")).crops(gray)
    assert list(faces[0].box) == on_photo["box"] and not whole
    face = crops[0]

    port = free_port()
    with server_on(["mlflow", "models", "serve", "-m", REGISTERED, "--env-manager", "local",
                    "-h", "127.0.0.1", "-p", str(port)], port, "/ping", r, env) as url:
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        model_dir = Path(mlflow.artifacts.download_artifacts(REGISTERED, dst_path=str(tmp_path)))
        example = json.loads((model_dir / "serving_input_example.json").read_text())
        answers = post(f"{url}/invocations", example)
        assert len(answers) == len(example["inputs"]) == 2
        for answer in answers:
            assert set(answer) == set(predicted["probabilities"])
            assert sum(answer.values()) == pytest.approx(1, abs=1e-5)
        served, served_photo = post(f"{url}/invocations",
                                    {"inputs": [image.tolist(), face.tolist()],
                                     "params": {"tta": "none"}})
        for name, p in predicted["probabilities"].items():
            assert served[name] == pytest.approx(p, abs=1e-5)
        for name, p in on_photo["probabilities"].items():
            assert served_photo[name] == pytest.approx(p, abs=1e-5)  # batch of 2 vs 1
        (default,) = post(f"{url}/invocations", {"inputs": [image.tolist()]})
        for name, p in predicted_default["probabilities"].items():
            assert default[name] == pytest.approx(p, abs=1e-5)
        # without the logit adjustment: the plain probabilities, as the predict command's
        (plain,) = post(f"{url}/invocations", {"inputs": [image.tolist()],
                                               "params": {"tta": "none", "logit_adjustment": 0}})
        out = sh([sys.executable, "-m", "ferpipe.predict.cli", str(tmp_path / "face.png"), "--model",
                  REGISTERED, "--json", "--tta", "none", "--logit-adjustment", "0"], r, env,
                 stdout_only=True)
        for name, p in json.loads(out)["probabilities"].items():
            assert plain[name] == pytest.approx(p, abs=1e-5)


def test_mlflow_ui_opens_on_the_runs_table_with_the_headline_columns(repo):
    """`mlflow ui` from the repo root, no arguments, in headless Chromium: the address the
    evaluate stage prints shows the training runs with the summaries and recipe params."""
    r, env = repo["path"], repo["env"]
    client, runs = store_runs(r)
    experiment = runs[0].info.experiment_id
    port = free_port()
    with server_on(["mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)], port,
                   "/health", r, env) as url:
        # wide enough that the grid renders every column (it leaves out those off-screen)
        dom = render(store.ui_url(experiment, url), budget_ms=40000, width=5000)
        charts = render(store.ui_url(experiment, url) + "&compareRunsMode=CHART",
                        budget_ms=40000)
    columns = set(re.findall(r'col-id="([^"]+)"', dom))
    assert set(store.VIEW_COLUMNS) <= columns, sorted(columns)
    for run in runs:
        assert run.info.run_name in dom
    # in the UI's "Model training" mode (its menu), not the GenAI one (traces, judges, prompts)
    assert ">Model registry<" in dom and ">Judges<" not in dom
    # The charts view: the per-epoch curves' section first, the run summaries after it.
    sections = re.findall(r'>([^<>]+)</div><div[^>]*>\((\d+)\)</div>', charts)
    assert [name for name, _ in sections][:2] == ["epoch", "summary"], sections
