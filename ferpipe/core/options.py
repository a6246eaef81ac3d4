"""Values that several commands and the served model take from the user, checked once, here, so
that each is refused by the same rule and in the same words wherever it is given.

The logit adjustment tau (`ferpipe.model.inference.probabilities`) is given as `--logit-adjustment`
to `ferpipe-predict`, `python -m ferpipe.serve.pyfunc` and `python -m ferpipe.tools.release`
(`logit_adjustment_type`, an argparse type), and as `params.logit_adjustment` of a request to the
served model (`check_logit_adjustment`); `probabilities` checks it too. Each refuses a negative,
infinite or NaN value, or one that is not a number, with one line:
`<name>: got <value>; expected a finite number >= 0`.

This module is in the lowest layer (`ferpipe.core`), so every command may import it; it imports
nothing of the package outside `ferpipe.core`.
"""

from __future__ import annotations

import argparse
import math
import numbers

from ferpipe.core.errors import shorten

#: What a logit adjustment tau must be: the end of every refusal.
LOGIT_ADJUSTMENT_EXPECTED = "expected a finite number >= 0"


def check_logit_adjustment(value: object, name: str = "logit adjustment") -> float:
    """A post-hoc logit adjustment tau as a float: a finite real number >= 0 (0: no adjustment).

    Args:
        value: an int, float or NumPy number (a bool is refused: `True` is not a strength).
        name: what the error line calls the value (`params.logit_adjustment`, ...).

    Returns:
        `float(value)`.

    Raises:
        ValueError: negative, infinite, NaN or not a number, as one line
            `<name>: got <value>; expected a finite number >= 0`.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and number >= 0:
            return number
        got = str(int(value)) if isinstance(value, numbers.Integral) else repr(number)
    else:
        got = shorten(value)
    raise ValueError(f"{name}: got {got}; {LOGIT_ADJUSTMENT_EXPECTED}")


def logit_adjustment_type(text: str) -> float:
    """The argparse `type=` of a `--logit-adjustment TAU` option: `text` as a finite float >= 0.

    argparse reports a refusal as the usage and one line, `<prog>: error: argument
    --logit-adjustment: got <text>; expected a finite number >= 0`, and exits with status 2.

    Raises:
        argparse.ArgumentTypeError: `text` is not a number, or is negative, `inf` or `nan`.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {shorten(text)}; {LOGIT_ADJUSTMENT_EXPECTED}") \
            from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"got {text}; {LOGIT_ADJUSTMENT_EXPECTED}")
    return value
