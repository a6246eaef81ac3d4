"""Which package modules a script depends on: its `ferpipe` imports, direct and indirect.

`dvc.yaml` lists, for each stage, the package modules its script imports, so that DVC re-runs the
stage when one of them changes; the train stage's resume fingerprint covers the same files.
Both come from `package_modules`, which reads the import statements (`import ferpipe.x`,
`from ferpipe.x import y`, `from ferpipe import x`, also inside functions) with Python's `ast`,
without importing anything; the tests check `dvc.yaml` against it.
"""

from __future__ import annotations

import ast
from pathlib import Path

#: The package's folder.
PACKAGE_DIR = Path(__file__).resolve().parent


def direct_imports(path: Path, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """Names of the package modules (`data`, `model` ...) that the Python file `path` imports.

    `from ferpipe import x` counts `x` when `ferpipe/x.py` exists (else `x` is a name of the
    package's `__init__`, which holds no code).

    Raises:
        SyntaxError: `path` is not valid Python.
    """
    package = package_dir.name
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == package and len(parts) > 1 and (package_dir / f"{parts[1]}.py").is_file():
                found.add(parts[1])
    return found


def package_modules(script: Path, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Every package module `script` imports, directly or through other package modules.

    Returns:
        The module files (`<package_dir>/<name>.py`), sorted by name; `script` itself is not
        included unless it is a package module imported by another.
    """
    seen: set[str] = set()
    todo = sorted(direct_imports(script, package_dir))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(direct_imports(package_dir / f"{name}.py", package_dir) - seen)
    return [package_dir / f"{name}.py" for name in sorted(seen)]
