"""dvc.yaml lists, for every stage, exactly the package modules its script imports (directly or
through other package modules), so that DVC re-runs a stage whenever code it runs changes."""

from pathlib import Path

import yaml

from ferpipe.core.codedeps import direct_imports, package_modules

ROOT = Path(__file__).resolve().parents[1]


def test_every_stage_lists_exactly_the_package_modules_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {p.stem for p in (ROOT / "stages").glob("*.py")}
    for name, stage in stages.items():
        script = ROOT / "stages" / f"{name}.py"
        listed = {dep for dep in stage["deps"] if str(dep).startswith("ferpipe/")}
        needed = {p.relative_to(ROOT).as_posix() for p in package_modules(script)}
        assert listed == needed, (f"stage {name}: dvc.yaml lists {sorted(listed - needed)} it does "
                                  f"not import, and misses {sorted(needed - listed)}")
        assert f"stages/{name}.py" in stage["deps"]


def test_imports_are_found_in_every_form_and_followed(tmp_path):
    pkg = tmp_path / "ferpipe"
    (pkg / "core").mkdir(parents=True)
    (pkg / "train").mkdir()
    for init in (pkg, pkg / "core", pkg / "train"):
        (init / "__init__.py").write_text('"""no code"""\n')
    (pkg / "a.py").write_text("from ferpipe.b import x\n")
    (pkg / "b.py").write_text("def f():\n    import ferpipe.c\nx = 1\n")
    (pkg / "c.py").write_text("from ferpipe import d, CONSTANT\n")
    (pkg / "d.py").write_text("from ferpipe.train import fit\n")
    (pkg / "train" / "fit.py").write_text("from ferpipe.core.errors import Error\n")
    (pkg / "core" / "errors.py").write_text("import ferpipe.core\nclass Error(Exception): ...\n")
    (pkg / "unused.py").write_text("")
    (pkg / "core" / "unused.py").write_text("")
    script = tmp_path / "stage.py"
    script.write_text("import ferpipe.a\n")
    assert direct_imports(pkg / "c.py", pkg) == {"ferpipe.d"}  # CONSTANT is not a module
    assert direct_imports(pkg / "d.py", pkg) == {"ferpipe.train.fit"}  # a module of a sub-package
    assert direct_imports(pkg / "train" / "fit.py", pkg) == {"ferpipe.core.errors"}  # a name in one
    assert direct_imports(pkg / "core" / "errors.py", pkg) == set()  # a sub-package has no code
    assert [p.relative_to(pkg).as_posix() for p in package_modules(script, pkg)] == [
        "a.py", "b.py", "c.py", "core/errors.py", "d.py", "train/fit.py"]


def test_the_train_stage_depends_on_the_training_loop_files():
    """After the move into sub-packages the deps must still reach the modules that train: a
    resolver that saw only `ferpipe/<name>.py` would find none, and dvc.yaml would list none."""
    deps = {p.relative_to(ROOT).as_posix() for p in package_modules(ROOT / "stages/train.py")}
    assert {"ferpipe/train/loop.py", "ferpipe/train/fit.py", "ferpipe/train/recipe.py",
            "ferpipe/train/augment.py", "ferpipe/model/network.py", "ferpipe/core/params.py"} <= deps
    train = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    assert "ferpipe/train/loop.py" in train


def test_every_package_init_holds_no_code():
    """`__init__` files are imported by every stage but listed by none: each must stay empty or a
    docstring, so each stage's dependencies stay per file."""
    inits = sorted((ROOT / "ferpipe").rglob("__init__.py"))
    assert len(inits) >= 9  # the package and its sub-packages
    for init in inits:
        tree = compile(init.read_text(), str(init), "exec", flags=0x400, dont_inherit=True)
        assert not tree.body or (len(tree.body) == 1 and isinstance(tree.body[0].value.value, str)), init


def test_the_resume_fingerprint_covers_the_train_stage_code():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_stage", ROOT / "stages/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {p.resolve() for p in module.CODE} == {
        (ROOT / "stages/train.py").resolve(),
        *(p.resolve() for p in package_modules(ROOT / "stages/train.py"))}
