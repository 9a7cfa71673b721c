"""The control side's imports run one way, stage by stage, and never in a circle.

Every import counts, including those inside functions and under TYPE_CHECKING: a cycle held
together by a lazy import is still a cycle for the reader. The order is docs/ARCHITECTURE.md's
"Module map"; a module may import its own layer and the layers before it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "disagglab"

# Earlier first. A module belongs to the layer of the longest prefix naming it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("disagglab.__init__", "disagglab.errors", "disagglab.paths", "disagglab.hashing", "disagglab.procs", "disagglab.aws")),
    ("plan", ("disagglab.plan",)),
    ("tasks", ("disagglab.tasks",)),
    ("results data model", ("disagglab.results.__init__", "disagglab.results.outcome", "disagglab.results.records",
                            "disagglab.results.fold", "disagglab.results.failure", "disagglab.results.read",
                            "disagglab.results.prefix_cache")),
    ("deploy", ("disagglab.deploy",)),
    ("run", ("disagglab.run",)),
    ("guard", ("disagglab.guard",)),
    ("results readers", ("disagglab.results.status", "disagglab.results.sweeps", "disagglab.results.accept")),
    ("report", ("disagglab.report",)),
    ("estimate", ("disagglab.estimate",)),
    ("cli", ("disagglab.cli", "disagglab.__main__")),
]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module an import names: `disagglab.plan` is the package's __init__."""
    if name in known:
        return name
    if f"{name}.__init__" in known:
        return f"{name}.__init__"
    return None


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the package uses absolute imports"
            base = node.module or ""
            names = [f"{base}.{a.name}" if resolve(f"{base}.{a.name}", known) else base for a in node.names]
        else:
            continue
        found.update(m for n in names if n.startswith("disagglab") and (m := resolve(n, known)))
    return found


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer of tests/test_layering.py (and docs/ARCHITECTURE.md's module map)"
    return rank


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(p, known) - {m} for m, p in known.items()}


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_no_import_from_a_later_stage() -> None:
    wrong = []
    for module, targets in graph().items():
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                wrong.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert wrong == []


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


@pytest.mark.parametrize("edges, cyclic", [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True), ({"a": {"b"}, "b": {"c"}, "c": set()}, False)])
def test_the_cycle_finder_finds_cycles(edges: dict[str, set[str]], cyclic: bool) -> None:
    assert (find_cycle(edges) is not None) is cyclic
