"""The modules of local/ import each other in one direction only: no cycle, lazy imports (inside a
function, under TYPE_CHECKING) included, since a lazy import only hides a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from local.template import ROOT

LOCAL = ROOT / "local"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module of local/ and the modules of local/ it imports anywhere in it (a package's own
    submodules, as `from local.stripe_emulator import objects` names one, count as themselves)."""
    modules = {module_name(path): path for path in LOCAL.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph, if it has one."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            found = visit(target, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for node in sorted(graph):
        found = visit(node, [])
        if found:
            return found
    return None


def test_no_module_of_local_imports_one_that_imports_it_back() -> None:
    graph = imports()
    assert "local.gateway" in graph["local.dev"]  # the graph sees imports inside functions
    assert graph["local.stripe_emulator.server"] >= {"local.stripe_emulator.api", "local.serving"}
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_the_containers_do_not_load_the_gateway() -> None:
    """A container process imports local.containers, then the function's handler: not the gateway
    (nor, through it, the ledger) before the function's own cold start."""
    code = "import sys, local.containers; print(sorted(m for m in sys.modules if m.startswith(('local.', 'credits'))))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "local.gateway" not in loaded.stdout and "'credits" not in loaded.stdout, loaded.stdout
