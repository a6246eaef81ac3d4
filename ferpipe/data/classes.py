"""FER2013 class and split folder names as they are spelled in the wild, mapped to the canonical ones."""

from __future__ import annotations

import re

from ferpipe.core.errors import DataError
from ferpipe.data.splits import CLASS_NAMES

#: Class-folder spellings seen in FER2013 copies, lower-cased, mapped to the canonical names.
CLASS_ALIASES: dict[str, str] = {
    **{name: name for name in CLASS_NAMES},
    "anger": "angry", "disgusted": "disgust", "fearful": "fear", "afraid": "fear",
    "happiness": "happy", "neutrality": "neutral", "sadness": "sad", "surprised": "surprise",
}

#: Split-folder spellings mapped to the normalized split names.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}


def canonical_class(folder_name: str) -> str | None:
    """Map a class-folder name (`Angry`, `happiness`, `3_sad` ...) to a canonical class, or None."""
    key = re.sub(r"[^a-z]", "", folder_name.lower())
    return CLASS_ALIASES.get(key)


def map_class_folders(names: list[str], where: str) -> dict[str, str]:
    """Map every folder name in `names` to a canonical class.

    Raises:
        DataError: a folder name is not a known spelling, or two folders map to one class; the
            message lists what was found and the 7 expected classes.
    """
    mapping: dict[str, str] = {}
    unknown = [name for name in names if canonical_class(name) is None]
    if unknown:
        raise DataError(
            f"{where}: unknown class folder(s) {sorted(unknown)}; found {sorted(names)}, "
            f"expected the 7 FER2013 classes {list(CLASS_NAMES)} (or spellings such as "
            f"'Angry', 'happiness', 'sadness')")
    for name in names:
        cls = canonical_class(name)
        if cls in mapping.values():
            raise DataError(f"{where}: two folders map to class '{cls}': {sorted(names)}")
        mapping[name] = cls
    return mapping
