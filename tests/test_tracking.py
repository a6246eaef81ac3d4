"""The MLflow store set-up the stages share (`ferpipe.tracking.setup`)."""

import mlflow

from ferpipe import tracking


def test_setup_takes_the_experiment_another_process_created_meanwhile(tmp_path, monkeypatch):
    """Two queued experiments starting at once on a fresh tracking server both find no
    experiment and both create it; the second create fails with RESOURCE_ALREADY_EXISTS (seen
    with PostgreSQL: a unique-constraint violation), and that stage must use the experiment
    the other made instead of stopping. Here the other process's create happens between this
    process's lookup and its create."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    try:
        other = mlflow.create_experiment("fer-race", artifact_location=(tmp_path / "a").as_uri())
        lookup = mlflow.get_experiment_by_name
        calls = []

        def late(name):  # the first lookup ran before the other process's create
            calls.append(name)
            return None if len(calls) == 1 else lookup(name)

        monkeypatch.setattr(mlflow, "get_experiment_by_name", late)
        assert tracking.setup("fer-race") == other
        assert calls == ["fer-race", "fer-race"]
        tags = mlflow.MlflowClient().get_experiment(other).tags
        assert {k: tags.get(k) for k in tracking.EXPERIMENT_KIND} == tracking.EXPERIMENT_KIND
        assert len(mlflow.search_experiments(filter_string="name = 'fer-race'")) == 1
    finally:
        mlflow.set_tracking_uri(None)
