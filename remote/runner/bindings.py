"""`${name}` tokens in a task definition, bound to this run's values on the node.

The control side renders the names and the node binds them, so the two lists must agree: a
token the runner does not know is refused, never passed on as text.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from task_runner import StepError, run_dir_for

# twin: disagglab/tasks/render.py:BINDINGS
BINDING_NAMES = frozenset(
    {
        "python", "node_dir", "out_dir", "bind_host", "node1_host", "node2_host",
        "unified_port", "producer_port", "consumer_port", "proxy_port",
        "producer_side_channel_port", "consumer_side_channel_port", "preflight_port",
        # instances 1..15 of a role (a pattern's topology); instance 0 uses the names above
        *(f"{base}_{i}" for base in ("unified_port", "producer_port", "consumer_port", "producer_side_channel_port",
                                     "consumer_side_channel_port") for i in range(1, 16)),
    }
)
# twin: disagglab/tasks/render.py:_TOKEN
TOKEN = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def bind(value: Any, bindings: dict[str, str]) -> Any:
    """Replace ${name} tokens word by word; an unknown token is an error, never left in."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in bindings:
                raise StepError(f"task uses ${{{name}}} but no value is bound for it")
            return bindings[name]
        return TOKEN.sub(sub, value)
    if isinstance(value, list):
        return [bind(v, bindings) for v in value]
    if isinstance(value, dict):
        return {k: bind(v, bindings) for k, v in value.items()}
    return value


def given_bindings(text: str) -> dict[str, Any]:
    """The --bindings JSON of a step; a name the runner does not know is refused."""
    given = json.loads(text)
    unknown = set(given) - BINDING_NAMES
    if unknown:
        raise StepError(f"unknown bindings: {', '.join(sorted(unknown))}")
    return given


def full_bindings(args: argparse.Namespace, task: dict[str, Any]) -> dict[str, str]:
    """The given values plus what only the node knows: its python and its folders."""
    given = given_bindings(args.bindings)
    node_dir = Path(args.node_dir).resolve()
    out_dir = run_dir_for(node_dir, task["pattern"]) / "out"
    return {**{k: str(v) for k, v in given.items()}, "python": sys.executable, "node_dir": str(node_dir), "out_dir": str(out_dir)}
