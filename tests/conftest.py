"""Shared test set-up: every test starts with the environment the session started with.

The tests run on every core (pytest-xdist, `--dist loadgroup` in pyproject.toml): each test goes
to whichever worker is free, except that the tests of a module marked
`pytestmark = pytest.mark.xdist_group(...)` all run on one worker, so that its module-scoped
fixtures (a trained tiny pipeline, a running server) are built once."""

import os

import pytest


@pytest.fixture(autouse=True)
def _environment_restored():
    """Undo what a test left in `os.environ`. `mlflow.set_tracking_uri` sets MLFLOW_TRACKING_URI
    there, and the stage processes a later test starts would inherit it and log to a store
    that is gone (with pytest-xdist, any test file can follow any other on a worker)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
