"""The node-side files (scripts/, remote/) and which of them each pattern runs.

A pattern's result depends on the bytes of the node-side files it ran, so editing the
proxy makes the disaggregated patterns out of date and leaves the unified ones alone.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from disagglab.hashing import sha256_file
from disagglab.paths import NODE_TREES, ROOT
from disagglab.plan.model import Pattern

# Files only some patterns run, by path prefix: a node program's entry file and the folder of
# its parts. Every other node-side file is run by all patterns.
ONLY_FOR: dict[str, Callable[[Pattern, str], bool]] = {
    "scripts/disagg_proxy_server.py": lambda p, engine: p.uses_proxy,
    "scripts/proxy/": lambda p, engine: p.uses_proxy,
    "scripts/vllm_sim.py": lambda p, engine: engine == "sim",
    "scripts/sim/": lambda p, engine: engine == "sim",
    "remote/nixl_preflight.py": lambda p, engine: p.disaggregated,
    "remote/preflight/": lambda p, engine: p.disaggregated,
    "scripts/benchmark_workload.py": lambda p, engine: p.workload_kind != "random",
    "scripts/bench_client/workloads/": lambda p, engine: p.workload_kind != "random",
}


def runs_file(rel: str, pattern: Pattern, engine: str) -> bool:
    """Does `pattern` run the node file `rel`? (the longest matching prefix decides)."""
    prefixes = [k for k in ONLY_FOR if rel == k or (k.endswith("/") and rel.startswith(k))]
    return ONLY_FOR[max(prefixes, key=len)](pattern, engine) if prefixes else True


def list_node_files(root: Path = ROOT) -> list[str]:
    """Every deployable file below scripts/ and remote/, as sorted posix paths."""
    out = []
    for tree in NODE_TREES:
        for path in sorted((root / tree).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out.append(path.relative_to(root).as_posix())
    return out


@cache
def _digest(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(ROOT / path)


def node_file_digests(root: Path = ROOT) -> dict[str, str]:
    digests = {}
    for rel in list_node_files(root):
        st = (root / rel).stat()
        digests[rel] = _digest(rel, st.st_mtime_ns, st.st_size) if root == ROOT else sha256_file(root / rel)
    return digests


def files_for_pattern(pattern: Pattern, engine: str, digests: dict[str, str]) -> dict[str, str]:
    """The node files the pattern runs, plus the trace it replays (deployed as plans/<file>)."""
    files = {rel: sha for rel, sha in digests.items() if runs_file(rel, pattern, engine)}
    workload = pattern.spec.get("workload") or {}
    if workload.get("kind") == "trace":
        files[f"plans/{workload['file']}"] = workload["sha256"]
    return files
