"""dvc.yaml lists, for every stage, exactly the package modules its script imports (directly or
through other package modules), so that DVC re-runs a stage whenever code it runs changes."""

from pathlib import Path

import yaml

from ferpipe.codedeps import direct_imports, package_modules

ROOT = Path(__file__).resolve().parents[1]


def test_every_stage_lists_exactly_the_package_modules_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {p.stem for p in (ROOT / "stages").glob("*.py")}
    for name, stage in stages.items():
        script = ROOT / "stages" / f"{name}.py"
        listed = {dep for dep in stage["deps"] if str(dep).startswith("ferpipe/")}
        needed = {f"ferpipe/{p.name}" for p in package_modules(script)}
        assert listed == needed, (f"stage {name}: dvc.yaml lists {sorted(listed - needed)} it does "
                                  f"not import, and misses {sorted(needed - listed)}")
        assert f"stages/{name}.py" in stage["deps"]


def test_imports_are_found_in_every_form_and_followed(tmp_path):
    pkg = tmp_path / "ferpipe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""no code"""\n')
    (pkg / "a.py").write_text("from ferpipe.b import x\n")
    (pkg / "b.py").write_text("def f():\n    import ferpipe.c\nx = 1\n")
    (pkg / "c.py").write_text("from ferpipe import d, CONSTANT\n")
    (pkg / "d.py").write_text("import os\n")
    (pkg / "unused.py").write_text("")
    script = tmp_path / "stage.py"
    script.write_text("import ferpipe.a\n")
    assert direct_imports(pkg / "c.py", pkg) == {"d"}  # CONSTANT is not a module
    assert [p.name for p in package_modules(script, pkg)] == ["a.py", "b.py", "c.py", "d.py"]


def test_the_package_init_holds_no_code():
    """`__init__` is imported by every stage but listed by none: it must stay a docstring."""
    tree = compile((ROOT / "ferpipe/__init__.py").read_text(), "__init__.py", "exec",
                   flags=0x400, dont_inherit=True)  # ast.PyCF_ONLY_AST
    assert len(tree.body) == 1 and isinstance(tree.body[0].value.value, str)


def test_the_resume_fingerprint_covers_the_train_stage_code():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_stage", ROOT / "stages/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {p.resolve() for p in module.CODE} == {
        (ROOT / "stages/train.py").resolve(),
        *(p.resolve() for p in package_modules(ROOT / "stages/train.py"))}
