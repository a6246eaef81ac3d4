"""The released model: a trained model shipped inside the package (`ferpipe/released/`), so
that `ferpipe-predict photo.jpg` (and a served model, `ferpipe.serve.pyfunc.save_serving_model`)
works right after the install, before any training. `python -m ferpipe.tools.release` writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ferpipe.core.errors import CheckpointError
from ferpipe.core.files import PACKAGE_DIR

#: Where the released model lives: package data, installed with the package.
RELEASED_DIR = PACKAGE_DIR / "released"
RELEASED_MODEL = RELEASED_DIR / "model.onnx"
RELEASED_INFO = RELEASED_DIR / "model.json"
#: Its model card, a copy of the repo's docs/model-card.md (`ferpipe.tools.release`).
RELEASED_CARD = RELEASED_DIR / "model-card.md"
def read_info(path: str | Path = RELEASED_INFO) -> dict[str, Any] | None:
    """The released model's record (`model.json`), or None when there is none.

    Raises:
        CheckpointError: the file exists but is not a JSON object with a `val` accuracy.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        float(info["val"]["accuracy_released"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: not a released-model record ({err!r}); expected the JSON "
                              f"written by python -m ferpipe.tools.release") from None
    return info
