"""Functions a reader can hold: no function over 80 lines and no file over 600 lines in the
control side (`disagglab/`), the node programs (`scripts/`) and the node runner (`remote/`)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 600
TREES = ("disagglab", "scripts", "remote")


def python_files() -> list[Path]:
    return sorted(p for tree in TREES for p in (ROOT / tree).rglob("*.py"))


def too_long(source: str, name: str) -> list[str]:
    """`<name>:<line> <function> is N lines` for every function over the limit, and the file itself."""
    found = []
    lines = len(source.splitlines())
    if lines > MAX_FILE_LINES:
        found.append(f"{name} is {lines} lines")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name} is {length} lines")
    return found


def test_the_trees_have_files_to_measure() -> None:
    assert len(python_files()) > 50


def test_no_function_over_80_lines_and_no_file_over_600() -> None:
    found = [hit for path in python_files() for hit in too_long(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


def test_the_measure_finds_a_long_function_and_a_long_file() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert too_long(f"def f():\n{body}\n", "m.py") == ["m.py:1 f is 81 lines"]
    assert too_long("x = 1\n" * (MAX_FILE_LINES + 1), "m.py") == [f"m.py is {MAX_FILE_LINES + 1} lines"]
    assert too_long(f"def f():\n{body[: body.rindex(chr(10))]}\n", "m.py") == []
