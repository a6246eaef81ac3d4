"""Where a source keeps its images: the split and class folders found in a listing, whatever
their depth and spelling (`ferpipe.data.classes`), OS junk (`.DS_Store`, `__MACOSX`) skipped."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ferpipe.core.errors import DataError
from ferpipe.data.classes import SPLIT_ALIASES, map_class_folders
from ferpipe.data.splits import CLASS_NAMES

#: File and folder names (lower-cased) of OS junk that is skipped; so is every name starting with
#: a dot (`.DS_Store`, macOS `._*` files).
JUNK_NAMES = {"__macosx", "thumbs.db", "desktop.ini"}

def _is_junk(name: str) -> bool:
    """Whether a file or folder name is OS junk (`.DS_Store`, `Thumbs.db`, `__MACOSX` ...)."""
    return name.startswith(".") or name.lower() in JUNK_NAMES


def find_layout(files: list[PurePosixPath], where: Path, folders: Iterable[PurePosixPath] = (),
                max_depth: int = 3) -> dict[PurePosixPath, tuple[str, str]]:
    """Map each file of a FER2013 image-folder copy to its (split, class).

    The split folders (any spelling in SPLIT_ALIASES) are found at the top or under up to
    `max_depth` wrapping folders (`archive/`, `fer2013/`, `images/` ...); the shallowest folder
    holding a train split is used. Every file directly inside `<split>/<class>/` is mapped,
    whatever its type (a file that is not an image is reported when decoding), except OS junk
    (`.DS_Store`, `Thumbs.db`, anything under `__MACOSX/` or a hidden folder). A copy with a
    validation split but no test split (`images/train`, `images/validation`) uses it as the test
    split; next to a test split it is the val split.

    Args:
        files: the source's file paths.
        folders: its folder paths (folders that hold files need not be listed); they show empty
            splits and class folders.

    Raises:
        DataError: no train or no test split folder, two folders for one split, a split without
            class folders, an unknown class folder, a class folder without files, or a file in
            a subfolder of a class folder, naming it. Files directly in a split folder (a
            README) are left out with a printed note naming them.
    """
    def junk_in(parts: tuple[str, ...]) -> bool:
        return any(_is_junk(part) for part in parts)

    # Every folder, with those implied by file paths: a class folder holding only junk is empty.
    known: set[PurePosixPath] = set()
    for folder in [*folders, *(path.parent for path in files)]:
        if not junk_in(folder.parts):
            known.update([folder, *folder.parents])
    tree: dict[PurePosixPath, dict[str, dict[str, list[PurePosixPath]]]] = {}
    for folder in known:
        if folder.name.lower() in SPLIT_ALIASES and len(folder.parent.parts) <= max_depth:
            tree.setdefault(folder.parent, {})[folder.name] = {}
    for folder in known:
        root, split_dir = folder.parent.parent, folder.parent.name
        if split_dir in tree.get(root, {}):
            tree[root][split_dir][folder.name] = []
    for path in files:
        if len(path.parts) >= 3 and not junk_in(path.parts):
            root, split_dir, class_dir = path.parents[2], path.parts[-3], path.parts[-2]
            if split_dir in tree.get(root, {}):
                tree[root][split_dir][class_dir].append(path)

    roots = sorted((r for r, splits in tree.items()
                    if any(SPLIT_ALIASES[s.lower()] == "train" for s in splits)),
                   key=lambda r: (len(r.parts), str(r)))
    if not roots:
        raise DataError(f"{where}: no train/ folder found (expected train/<class>/ and "
                        f"test/<class>/, at the top or under up to {max_depth} folders)")
    root = roots[0]
    splits: dict[str, tuple[str, dict[str, list[PurePosixPath]]]] = {}
    for split_dir, classes in sorted(tree[root].items()):
        split = SPLIT_ALIASES[split_dir.lower()]
        if split in splits:
            raise DataError(f"{where / root}: folders '{splits[split][0]}' and '{split_dir}' "
                            f"are both the {split} split")
        splits[split] = (split_dir, classes)
    if "test" not in splits and "val" in splits:
        print(f"note: {where / root}: no test split; '{splits['val'][0]}/' is used as the test "
              f"split")
        splits["test"] = splits.pop("val")
    for required in ("train", "test"):
        if required not in splits:
            raise DataError(f"{where / root}: no {required}/ split folder; found "
                            f"{sorted(split_dir for split_dir, _ in splits.values())}")
    split_dirs = {root / split_dir for split_dir, _ in splits.values()}
    loose = []
    for path in sorted(files):
        if junk_in(path.parts) or not any(folder in path.parents for folder in split_dirs):
            continue
        depth = len(path.relative_to(root).parts)
        if depth == 2:
            loose.append(str(path))
        elif depth > 3:
            raise DataError(f"{where / path}: an image in a subfolder of a class folder; expected "
                            f"images directly in <split>/<class>/ (move it up or delete it)")
    if loose:
        print(f"note: {where}: {len(loose)} file(s) directly in a split folder, not in a class "
              f"folder, are left out: {', '.join(loose[:5])}" + (" ..." if len(loose) > 5 else ""))
    layout: dict[PurePosixPath, tuple[str, str]] = {}
    for split, (split_dir, classes) in splits.items():
        split_path = where / root / split_dir
        if not classes:
            raise DataError(f"{split_path}: empty split: no class folders (expected "
                            f"{list(CLASS_NAMES)})")
        mapping = map_class_folders(sorted(classes), str(split_path))
        for class_dir, paths in sorted(classes.items()):
            if not paths:
                raise DataError(f"{split_path / class_dir}: empty class folder (no files)")
            for path in paths:
                layout[path] = (split, mapping[class_dir])
    return layout
