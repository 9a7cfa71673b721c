"""Reading a task definition from the node folder, and refusing one that could not be ours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from task_runner import StepError

from .faults import RESERVED_ENV_PREFIXES


def load_task(node_dir: Path, rel: str) -> dict[str, Any]:
    path = (node_dir / rel).resolve()
    if node_dir.resolve() not in path.parents:
        raise StepError(f"task path {rel!r} escapes the node folder")
    try:
        task = json.loads(path.read_text())
    except FileNotFoundError:
        raise StepError(f"task definition {rel} is not on this node (was it fetched?)") from None
    if task.get("kind") != "task" or task.get("schema_version") != 1:
        raise StepError(f"{rel} is not a schema_version 1 task definition")
    for i, server in enumerate(task.get("servers", [])):
        reserved = sorted(k for k in server.get("env", {}) if k.startswith(RESERVED_ENV_PREFIXES))
        if reserved:
            raise StepError(f"{rel}: servers[{i}].env sets {', '.join(reserved)}: DISAGG_*/DISAGGLAB_* variables are test-only "
                            "switches and cannot come from a task definition")
    return task
