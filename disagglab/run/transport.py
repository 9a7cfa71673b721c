"""The transport interface: run one task-runner step on a node (a local subprocess, or SSM in run/ssm.py).

The orchestration code only ever calls `prepare` and `run_step`; which machine the node
is, and how a command reaches it, is the transport's business.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from disagglab.deploy.storage import Storage

RESULT_PREFIX = "RUNNER-RESULT "
RUNNER_PATH = "remote/task_runner.py"


@dataclass(frozen=True)
class Node:
    name: str
    """node1 / node2: the role of the machine in a pair."""
    address: str
    """Address other nodes use to reach it (private IP on AWS, 127.0.0.1 locally)."""
    instance_id: str = ""
    """EC2 instance id (ssm executor); empty for local nodes."""


@dataclass
class StepOutcome:
    node: str
    step: str
    ok: bool
    exit_status: int | None
    report: dict[str, Any] = field(default_factory=dict)
    output_tail: list[str] = field(default_factory=list)

    @property
    def cause(self) -> str:
        return str(self.report.get("cause") or f"runner exited with status {self.exit_status} without a report")


class Transport(Protocol):
    nodes_dir: Path | None
    """Local transports: the folder holding every node's folder (what `recover` needs); else None."""
    on_spawn: Callable[[Node, str, int], None] | None
    """Called with each step runner process a local transport starts (the run ledger notes it)."""

    def node_dir(self, node: Node, phase: str) -> str: ...

    def prepare(self, node: Node, phase: str, storage: Storage, runner_key: str, runner_sha256: str, python: str) -> None:
        """Make the task runner (verified by sha256) and the python that runs it ready on the node."""
        ...

    def run_step(self, node: Node, phase: str, args: list[str], timeout_s: float) -> StepOutcome: ...


def parse_runner_output(node: str, step: str, code: int | None, stdout: str) -> StepOutcome:
    report: dict[str, Any] = {}
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            with contextlib.suppress(json.JSONDecodeError):
                report = json.loads(line[len(RESULT_PREFIX):])
            break
    ok = code == 0 and bool(report.get("ok"))
    return StepOutcome(node, step, ok, code, report, stdout.splitlines()[-20:])


class LocalTransport:
    """Nodes are folders on this machine; steps are subprocesses in their own process group."""

    def __init__(self, nodes_dir: Path, python: str = sys.executable):
        self.nodes_dir = Path(nodes_dir).resolve()
        self.python = python
        self.spawned: list[int] = []
        self.on_spawn: Callable[[Node, str, int], None] | None = None
        """Told of each step runner started (the run ledger records it for `recover`)."""

    def node_dir(self, node: Node, phase: str) -> str:
        return str(self.nodes_dir / node.name / phase)

    def prepare(self, node: Node, phase: str, storage: Storage, runner_key: str, runner_sha256: str, python: str = "") -> None:
        """`python` is ignored: local nodes run the runner with this control host's python."""
        dest = Path(self.node_dir(node, phase)) / RUNNER_PATH
        got = storage.get_file(runner_key, dest)
        if got != runner_sha256:
            dest.unlink(missing_ok=True)
            raise RuntimeError(f"{node.name}: task runner in the store has sha256 {got}, deploy recorded {runner_sha256}")

    def run_step(self, node: Node, phase: str, args: list[str], timeout_s: float) -> StepOutcome:
        argv = [self.python, str(Path(self.node_dir(node, phase)) / RUNNER_PATH), *args]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.spawned.append(proc.pid)
        try:
            if self.on_spawn is not None:
                self.on_spawn(node, args[0], proc.pid)
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            outcome = parse_runner_output(node.name, args[0], None, out.decode(errors="replace"))
            outcome.report.setdefault("cause", f"step timed out after {timeout_s:g} s")
            outcome.ok = False
            return outcome
        except BaseException:
            # Interrupted while waiting: pass the signal on so the runner cleans up, then wait.
            _kill_group(proc, first=signal.SIGTERM, grace_s=15)
            raise
        return parse_runner_output(node.name, args[0], proc.returncode, out.decode(errors="replace"))


def _kill_group(proc: subprocess.Popen[bytes], first: int = signal.SIGTERM, grace_s: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, first)
    deadline = time.monotonic() + grace_s
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
