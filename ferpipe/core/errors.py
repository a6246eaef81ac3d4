"""The project's errors, and how a command reports them: one line per problem, never a traceback.

Every error the pipeline raises on purpose is a `FerpipeError` whose message starts with the file,
member or params key it is about. `run_main` is how every stage script and user command starts:
it prints such an error as `error: <message>` on stderr and exits with status 1; with the
environment variable `FERPIPE_DEBUG=1` it shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

#: Set to 1 to see the traceback of a reported error.
DEBUG_ENV = "FERPIPE_DEBUG"


class FerpipeError(Exception):
    """An error the pipeline reports to the user; its message names the file or params key."""


class DataError(FerpipeError):
    """The data source is unreachable, malformed, or does not match what was expected."""


class ParamsError(FerpipeError, ValueError):
    """A params file is missing, unreadable, or has a value that is not allowed."""


class CheckpointError(FerpipeError):
    """A model checkpoint is missing, unreadable, or does not hold what a checkpoint must."""


class OutputError(FerpipeError):
    """An output path that must not be written or replaced (it holds files of the user's)."""


class TrackingError(FerpipeError):
    """The MLflow tracking store (`MLFLOW_TRACKING_URI`, or the default SQLite file) cannot be
    reached or written."""


def shorten(value: object, limit: int = 80) -> str:
    """`repr(value)` cut to at most `limit` characters (an error never repeats a huge value)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + " ...'"


def run_main(main: Callable[[], int | None]) -> None:
    """Run a command's `main()` and exit: its return code (None: 0), or 1 with one `error:` line
    per line of a `FerpipeError`'s message (the traceback only when FERPIPE_DEBUG=1)."""
    try:
        code = main()
    except FerpipeError as err:
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        for line in str(err).splitlines() or [type(err).__name__]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
