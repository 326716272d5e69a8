"""The layer's size limits: no module of shared/credits over 500 lines, no class over 300.

A module past them is split by topic (docs/design.md section 2 maps the package); `make complexity`
runs this with radon's check that no function is ranked D or worse.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "shared" / "credits"
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300


def modules() -> list[Path]:
    found = sorted(PACKAGE.rglob("*.py"))
    assert found, f"no modules under {PACKAGE}"
    return found


def test_no_module_of_the_layer_is_over_500_lines() -> None:
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in modules()}
    over = [f"{path.relative_to(ROOT)}: {lines} lines" for path, lines in sizes.items() if lines > MAX_MODULE_LINES]
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them): {over}"


def test_no_class_of_the_layer_is_over_300_lines() -> None:
    over = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ClassDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = (node.end_lineno or node.lineno) - start + 1
                if lines > MAX_CLASS_LINES:
                    over.append(f"{path.relative_to(ROOT)}:{node.lineno} class {node.name}: {lines} lines")
    assert not over, f"classes over {MAX_CLASS_LINES} lines (split them): {over}"
