"""The code laid out as Lambda runs it once `sam build` built it, for the cold-start measurement.

Lambda imports a handler from /var/task (the function's CodeUri) and the layer from /opt/python, both
read-only: Python cannot write __pycache__ there, so whatever the build ships without bytecode is
compiled again at every cold start. `built_copy` lays out the same in a temporary directory, with the
build's own steps (shared/Makefile, which `sam build` runs):

    <tmp>/opt/python/credits        shared/credits without its __pycache__, compiled (unchecked-hash)
    <tmp>/task/<function>/app.py    functions/<function>/, compiled the same way

`dependencies=True` copies the layer's dependencies (shared/requirements.txt and what they require)
there too, from this interpreter's site-packages: on Lambda they come from the layer (its boto3
before the runtime's), compiled with the rest; without them, they come from the venv, which has
its bytecode. `compiled=False` lays out what the build shipped before it compiled: no bytecode.

`lambda_environment` gives an interpreter what Lambda's has: the function's directory, then the
layer, then the runtime's site-packages (here the venv's: PYTHONPATH comes before it), and no
bytecode written.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ("use_credits", "balance")


def logical_id(function: str) -> str:
    """functions/use_credits -> UseCreditsFunction: the target SAM asks shared/Makefile for."""
    return "".join(part.title() for part in function.split("_")) + "Function"


def _make(root: Path, cwd: Path, artifacts: Path, *targets: str) -> None:
    if shutil.which("make") is None:
        raise RuntimeError("built_copy runs the build's own steps (shared/Makefile): it needs make")
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "--silent",
            "--makefile",
            str(root / "shared" / "Makefile"),
            "--directory",
            str(cwd),
            *targets,
            f"ARTIFACTS_DIR={artifacts}",
            f"PYTHON={sys.executable}",
        ],
        check=True,
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")},
    )


def dependencies_of(requirements: Path) -> list[importlib.metadata.Distribution]:
    """The installed distributions `requirements` names, with every one they require (extras too)."""
    wanted = [
        Requirement(line.split("#", 1)[0].strip())
        for line in requirements.read_text(encoding="utf-8").splitlines()
        if line.split("#", 1)[0].strip()
    ]
    found: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        extras = {""} | set(requirement.extras)
        if all((name, extra) in done for extra in extras):
            continue
        done.update((name, extra) for extra in extras)
        found[name] = distribution = importlib.metadata.distribution(name)
        for text in distribution.requires or []:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                wanted.append(needed)
    return [found[name] for name in sorted(found)]


def _copy_distributions(distributions: Iterable[importlib.metadata.Distribution], target: Path) -> None:
    """Their files as installed (modules, extensions, metadata), not their bytecode nor scripts."""
    for distribution in distributions:
        site = Path(str(distribution.locate_file(""))).resolve()
        for file in distribution.files or []:
            source = Path(str(distribution.locate_file(file))).resolve()
            if "__pycache__" in file.parts or file.suffix == ".pyc" or not source.is_relative_to(site):
                continue
            if source.is_file():
                destination = target / source.relative_to(site)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)


def built_copy(
    root: Path = ROOT,
    *,
    functions: Iterable[str] = FUNCTIONS,
    compiled: bool = True,
    dependencies: bool = False,
) -> Path:
    """A temporary directory: opt/python (the layer) and task/<function> for each of `functions`.
    The caller removes it (`remove`), or uses `built`."""
    tmp = Path(tempfile.mkdtemp(prefix="credits-built-"))
    try:
        layer = tmp / "opt" / "python"
        layer.mkdir(parents=True)
        if dependencies:
            _copy_distributions(dependencies_of(root / "shared" / "requirements.txt"), layer)
        _make(root, root / "shared", tmp / "opt", "layer-credits", *(("layer-bytecode",) if compiled else ()))
        for function in functions:
            task = tmp / "task" / function
            if compiled:
                _make(root, root / "functions" / function, task, f"build-{logical_id(function)}")
            else:
                shutil.copytree(root / "functions" / function, task, ignore=shutil.ignore_patterns("__pycache__"))
    except BaseException:
        remove(tmp)
        raise
    return tmp


def remove(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def built(
    root: Path = ROOT,
    *,
    functions: Iterable[str] = FUNCTIONS,
    compiled: bool = True,
    dependencies: bool = False,
) -> Iterator[Path]:
    """`built_copy`, removed on leaving."""
    tmp = built_copy(root, functions=functions, compiled=compiled, dependencies=dependencies)
    try:
        yield tmp
    finally:
        remove(tmp)


def lambda_path(tmp: Path, function: str | None = None) -> str:
    """PYTHONPATH in Lambda's order: /var/task, then /opt/python (the runtime's site-packages follow)."""
    layer = str(tmp / "opt" / "python")
    return layer if function is None else os.pathsep.join([str(tmp / "task" / function), layer])


def lambda_environment(tmp: Path, function: str | None = None) -> dict[str, str]:
    """What to lay over an environment for an interpreter that imports as Lambda's does: from the
    built copy, writing no bytecode (Lambda cannot)."""
    return {"PYTHONPATH": lambda_path(tmp, function), "PYTHONDONTWRITEBYTECODE": "1"}


# What Lambda's runtime does with Handler: app.lambda_handler (the function's directory first on sys.path).
IMPORT_HANDLER = "import importlib; importlib.import_module('app')"
