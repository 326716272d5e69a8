"""The build ships bytecode Python uses as it is: Lambda's /opt and /var/task are read-only, so what
ships without it is compiled again at every cold start (SAM's python3.12 builder ships none).

`sam build` is too slow for the suite: these run the build's own steps (shared/Makefile, through
benchmarks.built) and read what `sam build` runs (template.yaml, `make -n`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.built import FUNCTIONS, built, lambda_environment, logical_id
from local.template import ROOT, load

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="the build runs make")

MAKEFILE = ROOT / "shared" / "Makefile"
UNCHECKED_HASH = 0b01  # the pyc's flags: hash-based, source not checked (PEP 552)

# In a fresh interpreter as Lambda's (no bytecode written): import every module of the layer and
# the handler, and list the files Python compiled from source to do it.
PROBE = """
import importlib, importlib._bootstrap_external as external, json, pkgutil, sys
compiled = []
to_code = external.SourceLoader.source_to_code
def spy(self, data, path, *args, **kwargs):
    compiled.append(str(path))
    return to_code(self, data, path, *args, **kwargs)
external.SourceLoader.source_to_code = spy
import credits
names = [m.name for m in pkgutil.walk_packages(credits.__path__, "credits.") if not m.name.endswith("__main__")]
modules = [importlib.import_module(name) for name in ["credits", *names, "app"]]
print(json.dumps({
    "compiled": compiled,
    "files": {m.__name__: m.__file__ for m in modules},
    "cached": {m.__name__: m.__cached__ for m in modules},
    "dont_write_bytecode": sys.flags.dont_write_bytecode,
}))
"""


@pytest.fixture(scope="module")
def copy() -> Iterator[Path]:
    with built(ROOT) as tmp:
        yield tmp


def sources(tmp: Path, functions: tuple[str, ...] = FUNCTIONS) -> list[Path]:
    found = sorted((tmp / "opt" / "python" / "credits").rglob("*.py"))
    assert len(found) > 10
    return found + [tmp / "task" / function / "app.py" for function in functions]


def probe(tmp: Path, function: str) -> dict:
    env = {**os.environ, **lambda_environment(tmp, function)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=tmp, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_copy_holds_the_layer_and_the_functions_without_the_trees_own_bytecode(copy: Path) -> None:
    assert (copy / "opt" / "python" / "credits" / "__init__.py").is_file()
    for function in FUNCTIONS:
        assert (copy / "task" / function / "app.py").read_bytes() == (
            ROOT / "functions" / function / "app.py"
        ).read_bytes()
    shipped = {p.relative_to(copy / "opt" / "python" / "credits") for p in (copy / "opt/python/credits").rglob("*.py")}
    assert shipped == {p.relative_to(ROOT / "shared" / "credits") for p in (ROOT / "shared/credits").rglob("*.py")}


def test_every_module_ships_unchecked_hash_bytecode_of_its_own_source(copy: Path) -> None:
    for source in sources(copy):
        cached = Path(importlib.util.cache_from_source(str(source)))
        assert cached.is_file(), f"no bytecode for {source}"
        data = cached.read_bytes()
        assert data[:4] == importlib.util.MAGIC_NUMBER, cached
        assert int.from_bytes(data[4:8], "little") == UNCHECKED_HASH, cached
        assert data[8:16] == importlib.util.source_hash(source.read_bytes()), f"{cached} is not {source}'s"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_python_imports_the_layer_and_the_handler_without_compiling_anything(copy: Path, function: str) -> None:
    seen = probe(copy, function)
    assert seen["dont_write_bytecode"] == 1
    assert seen["files"]["app"] == str(copy / "task" / function / "app.py")
    assert all(
        path.startswith(str(copy / "opt" / "python" / "credits"))
        for name, path in seen["files"].items()
        if name != "app"
    )
    assert [path for path in seen["compiled"] if path.startswith(str(copy))] == []
    assert all(Path(cached).is_file() for cached in seen["cached"].values())


def test_without_the_bytecode_every_cold_start_compiles_the_layer() -> None:
    """What the probe sees is real: the layout the python3.12 builder shipped compiles every module."""
    function = FUNCTIONS[0]
    with built(ROOT, functions=[function], compiled=False) as tmp:
        seen = probe(tmp, function)
        imported = {str(p) for p in sources(tmp, (function,)) if p.name != "__main__.py"}
        assert set(seen["compiled"]) >= imported
        assert not list(tmp.rglob("__pycache__"))  # nor could it keep what it compiled


def dry_run(target: str, cwd: Path) -> list[str]:
    done = subprocess.run(
        ["make", "--dry-run", "--makefile", str(MAKEFILE), target, "ARTIFACTS_DIR=/artifacts"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")},
    )
    commands = done.stdout.replace("\\\n", " ")  # a command continued over lines is one step
    return [" ".join(line.split()) for line in commands.splitlines() if line.strip()]


def test_the_layer_target_installs_for_arm64_python_3_12_then_compiles_everything_unchecked() -> None:
    steps = dry_run("build-CreditsLayer", ROOT / "shared")
    pip = next(i for i, step in enumerate(steps) if " -m pip install " in step)
    for option in ("--requirement requirements.txt", '--target "/artifacts/python"', "--python-version 3.12"):
        assert option in steps[pip]
    assert "--platform manylinux2014_aarch64" in steps[pip] and "--only-binary=:all:" in steps[pip]
    assert "--no-compile" in steps[pip]  # pip's own bytecode is timestamp-checked: the zip's mtimes break it
    copy = next(i for i, step in enumerate(steps) if step.startswith("cp -R credits"))
    compile_ = next(i for i, step in enumerate(steps) if " -m compileall " in step)
    assert pip < copy < compile_ == len(steps) - 1
    assert "--invalidation-mode unchecked-hash" in steps[compile_]
    assert steps[compile_].endswith('"/artifacts/python"')


def test_the_function_target_compiles_the_handler_the_same_way() -> None:
    steps = dry_run(f"build-{logical_id('use_credits')}", ROOT / "functions" / "use_credits")
    assert "--invalidation-mode unchecked-hash" in steps[-1] and steps[-1].endswith('"/artifacts"')


def test_sam_builds_the_layer_and_every_function_with_the_makefile() -> None:
    resources = load()["Resources"]
    layer = resources["CreditsLayer"]
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    assert layer["Properties"]["ContentUri"] == "shared/"
    functions = {
        name: resource
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Serverless::Function"
        and resource["Properties"]["CodeUri"].startswith("functions/")
    }
    assert len(functions) == len(list((ROOT / "functions").glob("*/app.py")))
    for name, resource in functions.items():
        assert resource.get("Metadata") == {"BuildMethod": "makefile", "ContextPath": "shared/"}, name
        assert name.endswith("Function"), name  # the Makefile's target is build-%Function
