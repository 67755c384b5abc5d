"""Code a newcomer can read: no function in src/ over 80 lines, no module over 600."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tirgrpo"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600



def long_functions() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lines = node.end_lineno - start + 1
                if lines > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{node.name} ({lines} lines)")
    return out


def long_modules() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            out.append(f"{rel} ({lines} lines)")
    return out


def test_no_function_over_80_lines():
    offenders = long_functions()
    assert not offenders, "functions over 80 lines: " + ", ".join(offenders)


def test_no_module_over_600_lines():
    offenders = long_modules()
    assert not offenders, "modules over 600 lines: " + ", ".join(offenders)
