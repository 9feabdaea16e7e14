"""No function in the package is over 80 lines: a stage body is split into plan -> compute ->
write helpers that each fit on a screen (issue 21)."""

from __future__ import annotations

import ast
from pathlib import Path

import lensfinder

PACKAGE = Path(lensfinder.__file__).parent
MAX_LINES = 80


def long_functions(source: str, name: str, limit: int = MAX_LINES) -> list[str]:
    """``name:line function (n lines)`` for every function (nested ones and methods too) whose
    definition, decorators excluded, spans more than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                found.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_the_checker_finds_a_planted_long_function():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    source = (
        "def short():\n    return 1\n\n\n"
        f"def planted():\n{body}\n\n"
        f"class Holder:\n    def method(self):\n{body.replace('    ', '        ')}"
    )
    found = long_functions(source, "planted.py")
    assert found == [
        f"planted.py:5 planted ({MAX_LINES + 1} lines)",
        f"planted.py:{MAX_LINES + 9} method ({MAX_LINES + 1} lines)",
    ]
    assert long_functions(source, "planted.py", limit=MAX_LINES + 1) == []


def test_no_function_in_the_package_is_over_80_lines():
    found = [
        item
        for path in sorted(PACKAGE.rglob("*.py"))
        for item in long_functions(path.read_text(), str(path.relative_to(PACKAGE)))
    ]
    assert found == [], "split these into plan -> compute -> write helpers:\n" + "\n".join(found)
