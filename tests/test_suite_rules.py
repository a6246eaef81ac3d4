"""Rules the code and the tests keep, checked on their source: no package module over 450 lines,
and no test command without a time limit."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_package_module_is_over_450_lines():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
             for p in (ROOT / "ferpipe").rglob("*.py")}
    assert len(sizes) > 40
    assert {name: n for name, n in sizes.items() if n > 450} == {}


def test_every_command_a_test_runs_has_a_time_limit():
    """`subprocess.run` (and its relatives) in the tests always get `timeout=`: one hung command
    must fail its test, not block the whole run until CI's own limit. (`Popen` is waited for with
    a timeout and cleaned up in `finally`, which review checks.)"""
    unbounded = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"
                    and node.func.attr in ("run", "call", "check_call", "check_output")
                    and not any(k.arg == "timeout" for k in node.keywords)):
                unbounded.append(f"{path.name}:{node.lineno}")
    assert unbounded == []
