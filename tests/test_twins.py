"""Code that exists twice on purpose agrees: a node-side copy and the control-side original.

Node files never import `disagglab` (they run on the nodes, under another venv's python), so a
few helpers and constants are copied. Each copy carries a `# twin: <path>:<name>` line right
above its definition; this test finds every marker, checks that the other copy exists, and
that the two agree: equal values for constants, the same observable behaviour for functions.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from disagglab import hashing, procs
from disagglab.errors import Interrupted
from disagglab.plan import faults
from disagglab.run import ledger, transport
from disagglab.tasks import render

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^# twin: (?P<path>[^:]+):(?P<name>[\w.$]+)\s*$")


def node_module(rel: str) -> Any:
    """Load a node file the way the node does: entry files by path, parts as their package's module.

    sys.path and sys.modules are restored afterwards: a node part imports its entry file by name
    (`from task_runner import StepError`), and a copy left behind would hand later tests a
    second StepError class.
    """
    path = ROOT / rel
    tree = path.parent if path.parent.name in ("remote", "scripts") else path.parent.parent
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    sys.path.insert(0, str(tree))
    try:
        if tree != path.parent:
            return importlib.import_module(f"{path.parent.name}.{path.stem}")
        spec = importlib.util.spec_from_file_location("twin_" + path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            del sys.modules[name]


def twins() -> list[tuple[str, str, str, str]]:
    """(node file, node name, other file, other name) for every marker under scripts/ and remote/."""
    found = []
    for path in sorted([*ROOT.glob("scripts/**/*.py"), *ROOT.glob("remote/**/*.py")]):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = MARKER.match(line)
            if not m:
                continue
            following = next(ln for ln in lines[i + 1:] if not ln.startswith("@"))
            name = re.match(r"(?:async def|def|class)\s+(\w+)|(\w+)\s*[:=]", following)
            assert name, f"{path}:{i + 1}: a twin marker must sit right above a def, class or assignment"
            found.append((path.relative_to(ROOT).as_posix(), name.group(1) or name.group(2), m["path"], m["name"]))
    return found


def test_there_are_twins_and_each_names_an_existing_definition() -> None:
    pairs = twins()
    assert len(pairs) >= 10, pairs
    for node_file, node_name, other, other_name in pairs:
        target = ROOT / other
        assert target.is_file(), f"{node_file}:{node_name}: twin {other} does not exist"
        if target.suffix == ".json":
            continue
        tree = ast.parse(target.read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
        defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        defined |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        assert other_name in defined, f"{node_file}:{node_name}: {other} defines no {other_name}"


def schema_pattern_id() -> str:
    """The pattern-id rule of the plan schema (the node checks ids with the same rule)."""
    schema = json.loads((ROOT / "config/schemas/plan.schema.json").read_text())
    return schema["$defs"]["pattern"]["properties"]["id"]["pattern"]


def test_constants_agree() -> None:
    runner = node_module("remote/task_runner.py")
    bindings = node_module("remote/runner/bindings.py")
    node_faults = node_module("remote/runner/faults.py")
    node_preflight = node_module("remote/runner/preflight.py")
    nixl = node_module("remote/nixl_preflight.py")
    assert runner.RESULT_PREFIX == transport.RESULT_PREFIX
    assert set(bindings.BINDING_NAMES) == set(render.BINDINGS)
    assert bindings.TOKEN.pattern == render._TOKEN.pattern
    assert tuple(node_faults.RESERVED_ENV_PREFIXES) == tuple(faults.RESERVED_ENV_PREFIXES)
    samples = ["kill_after_s=1", "kill_after_s=0.25", "kill_after_s=", "kill_after_s=1.", "kill_after_s=-1", "kill_after_s=1\n", "x"]
    assert [bool(node_faults.KILL_FAULT.match(t)) for t in samples] == [bool(faults.KILL_FAULT.match(t)) for t in samples]
    assert node_preflight.ERROR_PREFIX == nixl.ERROR_PREFIX
    assert runner.PATTERN_ID.pattern == schema_pattern_id()


def test_the_file_writers_write_the_same_bytes(tmp_path: Path) -> None:
    runner = node_module("remote/task_runner.py")
    client_output = node_module("scripts/bench_client/output.py")
    doc = {"b": [1, 2.5, "x"], "a": {"nested": None}}
    hashing.atomic_write_json(tmp_path / "control.json", doc)
    runner.write_json(tmp_path / "node.json", doc)
    assert (tmp_path / "control.json").read_bytes() == (tmp_path / "node.json").read_bytes()
    for i, write in enumerate((hashing.atomic_write_bytes, runner.atomic_write, client_output.atomic_write_bytes)):
        write(tmp_path / "sub" / f"{i}.bin", b"\x00bytes\n")
    assert {(tmp_path / "sub" / f"{i}.bin").read_bytes() for i in range(3)} == {b"\x00bytes\n"}
    assert not list(tmp_path.rglob("*.tmp"))
    assert runner.sha256_file(tmp_path / "control.json") == hashing.sha256_file(tmp_path / "control.json")


def test_process_identity_agrees() -> None:
    runner = node_module("remote/task_runner.py")
    me = os.getpid()
    assert runner.proc_starttime(me) == procs.starttime(me) is not None
    assert runner.pid_alive(me, procs.starttime(me)) and ledger.alive(me, procs.starttime(me))
    assert not runner.pid_alive(me, "1") and not ledger.alive(me, "1")  # a recycled pid is not ours
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    gone = int(done.stdout)
    assert not runner.pid_alive(gone, None) and not ledger.alive(gone, None)
    assert runner.group_alive(os.getpgid(0)) and ledger.group_alive(os.getpgid(0))


@pytest.mark.parametrize("node_file", ["remote/task_runner.py"])
def test_interrupted_is_a_base_exception_on_both_sides(node_file: str) -> None:
    assert issubclass(node_module(node_file).Interrupted, BaseException) and not issubclass(Interrupted, Exception)


def test_the_binding_names_tie_together() -> None:
    """What the control side binds (a pair's addresses and ports) plus what only the node knows
    (its python and folders) is exactly what templates may use and what the runner accepts."""
    from disagglab.run.fleet import PORT_NAMES, NodePair
    from disagglab.run.transport import Node

    bindings = node_module("remote/runner/bindings.py")
    pair = NodePair(Node("node1", "127.0.0.1"), Node("node2", "127.0.0.1"), dict.fromkeys(PORT_NAMES, 1))
    control = set(pair.bindings(pair.node1))
    node_only = {"python", "node_dir", "out_dir"}
    assert control | node_only == set(render.BINDINGS) == set(bindings.BINDING_NAMES)
    assert not control & node_only
    assert bindings.given_bindings(json.dumps(pair.bindings(pair.node2))) == pair.bindings(pair.node2)
