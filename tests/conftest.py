"""Shared test set-up: every test starts with the environment the session started with.

The tests run on every core (pytest-xdist, `--dist loadfile` in pyproject.toml): each test file
goes to whichever worker is free and runs there whole, in order, so that its module-scoped
fixtures (a trained tiny pipeline, a running server) are built once."""

import os

import pytest
from hypothesis import settings

# Hypothesis explores new examples on every local run; CI (HYPOTHESIS_PROFILE=ci, .ci/run)
# replays a fixed, derandomized set, so a CI run fails only on what a local run could repeat.
# An example found failing locally is pinned with @example in the test.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# One thread per process under pytest-xdist: with a worker per core, each test's stage processes
# (PyTorch, OpenMP) would otherwise start a thread per core too, and OpenMP threads that wait by
# spinning on an oversubscribed CPU made a tiny training stage about 5x slower (two copies of
# test_faults' other-params test at once: 171 s each with the default threads, 36 s with one).
# A value the user set is kept.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _environment_restored():
    """Undo what a test left in `os.environ`. `mlflow.set_tracking_uri` sets MLFLOW_TRACKING_URI
    there, and the stage processes a later test starts would inherit it and log to a store
    that is gone (with pytest-xdist, any test file can follow any other on a worker)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
