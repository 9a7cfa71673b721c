"""Running one task-runner step on a node for a trial: the log line, the ledger note, the verdict.

The trial orchestration (trial.py) and the NIXL preflight (preflight.py) both run steps; they
share this object instead of the preflight reaching into the trial.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from disagglab.errors import StepFailed
from disagglab.run.ledger import RunLedger
from disagglab.run.transport import Node, Transport


@dataclass
class StepRunner:
    transport: Transport
    phase: str
    label: str
    """Prefix of every log line, e.g. `p14-tcp-1k-c1 trial 2`."""
    lines: list[str] = field(default_factory=list)
    """The trial's own log lines: the failure record's tail when the step left no output."""
    current: tuple[str, str] = ("prepare", "control")
    """The step and node in progress, so an interrupt can say what it cut short."""
    ledger: RunLedger | None = None
    """The run-ledger entry while servers may be up (what `recover` needs after a kill -9)."""

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {self.label}: {msg}"
        self.lines.append(line)
        print(line, file=sys.stderr, flush=True)

    def at(self, step: str, node: str) -> None:
        self.current = (step, node)

    def run(self, node: Node, args: list[str], timeout_s: float) -> dict[str, Any]:
        """Run `args` (step name first) on `node`; the step's report, or StepFailed with its cause."""
        self.current = (args[0], node.name)
        if self.ledger is not None:
            self.ledger.note_step(args[0], node.name)
        outcome = self.transport.run_step(node, self.phase, args, timeout_s)
        if not outcome.ok:
            tail = outcome.report.get("log_tail") or outcome.output_tail
            raise StepFailed(args[0], node.name, outcome.cause, outcome.report.get("exit_status", outcome.exit_status), tail)
        return outcome.report
