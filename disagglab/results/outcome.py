"""What one trial did, as plain data: the run stage fills it, records.py turns it into files.

Why a dataclass of its own: the code that runs a trial (disagglab/run/) and the code that
writes its result or failure record (records.py, failure.py) must not know each other's
classes, or they import each other in a circle. This module imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disagglab.plan.model import Pattern


@dataclass
class TrialOutcome:
    phase: str
    pattern: Pattern
    trial: int
    cfg: dict[str, Any]
    run_id: str
    started: float
    finished: float = 0.0
    task_sha: dict[str, str] = field(default_factory=dict)
    """sha256 of each role's task definition, as deployed."""
    nodes: dict[str, str] = field(default_factory=dict)
    """Node name -> address of the pair the trial leased (empty if none could be leased)."""
    ports: dict[str, int] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)
    """Each step's report from the node runner (start:<role>, bench, preflight)."""
    collected: dict[str, dict[str, Path]] = field(default_factory=dict)
    """Per node: the files brought back through the store (relative name -> local path)."""
    preflight: dict[str, Any] | None = None
    """The NIXL preflight marker of the pair (tcp/efa patterns)."""
    error: BaseException | None = None
    """Why the trial failed (None: it measured; its result may still turn out invalid)."""
    at: tuple[str, str] = ("prepare", "control")
    """The step and node in progress when the trial ended: what an interrupt cut short."""
    log_lines: list[str] = field(default_factory=list)
    """The trial's own log lines: a failure record's tail when the step left no output."""
