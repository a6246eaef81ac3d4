"""Which package modules a script depends on: its `ferpipe` imports, direct and indirect.

`dvc.yaml` lists, for each stage, the package modules its script imports, so that DVC re-runs the
stage when one of them changes; the train stage's resume fingerprint covers the same files.
Both come from `package_modules`, which reads the import statements (`import ferpipe.x.y`,
`from ferpipe.x.y import z`, `from ferpipe.x import y`, also inside functions) with Python's `ast`,
without importing anything; the tests check `dvc.yaml` against it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ferpipe.core.files import PACKAGE_DIR


def module_file(name: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The file of the package module with the dotted name `name` (`ferpipe.train.fit`), or None
    when `name` names no module file of the package (a sub-package, whose `__init__.py` holds no
    code, a name defined in a module, or something outside the package)."""
    parts = name.split(".")
    if parts[0] != package_dir.name or len(parts) < 2:
        return None
    path = package_dir.joinpath(*parts[1:-1], parts[-1] + ".py")
    return path if path.is_file() else None


def direct_imports(path: Path, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """Dotted names of the package modules (`ferpipe.data.splits` ...) the Python file `path`
    imports, at any depth of sub-package, also inside functions.

    `from ferpipe.x import y` counts `ferpipe.x.y` when that is a module file (`y` a module of the
    sub-package `x`), else `ferpipe.x` when that is one (`y` a name defined in it). Relative
    imports are not used in this package and are not resolved.

    Raises:
        SyntaxError: `path` is not valid Python.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            candidates = [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            candidates = [[f"{node.module}.{alias.name}", node.module] for alias in node.names]
        else:
            continue
        for names in candidates:
            name = next((n for n in names if module_file(n, package_dir)), None)
            if name:
                found.add(name)
    return found


def package_modules(script: Path, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Every package module `script` imports, directly or through other package modules.

    Returns:
        The module files (`<package_dir>/<sub-package>/<name>.py`), sorted by path; `script`
        itself is not included unless it is a package module imported by another.
    """
    seen: set[str] = set()
    todo = sorted(direct_imports(script, package_dir))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(direct_imports(module_file(name, package_dir), package_dir) - seen)
    return sorted(module_file(name, package_dir) for name in seen)
