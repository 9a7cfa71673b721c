"""Test-only fault injection (`--fault ROLE=SPEC`, produced only by the control side's
DISAGGLAB_FAULTS, disagglab/faults.py) and the environment names reserved for such switches.

Nothing else enables a fault: a task whose env names DISAGG_*/DISAGGLAB_* variables is refused,
and such variables inherited from the caller never reach a child (runner/procs.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from task_runner import StepError

# twin: disagglab/plan/faults.py:RESERVED_ENV_PREFIXES
RESERVED_ENV_PREFIXES = ("DISAGG_", "DISAGGLAB_")
"""Test-only switches (fault injection, control-side config): never from a task, never inherited."""
# twin: disagglab/plan/faults.py:KILL_FAULT
KILL_FAULT = re.compile(r"^kill_after_s=([0-9]+(?:\.[0-9]+)?)$")


def parse_faults(items: list[str] | None, allowed: set[str]) -> dict[str, str]:
    """--fault ROLE=SPEC arguments (test-only fault injection) -> {role: spec}."""
    faults: dict[str, str] = {}
    for item in items or []:
        role, sep, spec = item.partition("=")
        if not sep or not spec:
            raise StepError(f"--fault {item!r}: expected ROLE=SPEC")
        if role not in allowed:
            raise StepError(f"--fault {item!r}: this step has no role {role!r} (roles here: {', '.join(sorted(allowed))})")
        if role in faults:
            raise StepError(f"--fault: role {role!r} given twice")
        if role in ("proxy", "benchmark") and not KILL_FAULT.match(spec):
            raise StepError(f"--fault {item!r}: the {role} supports only kill_after_s=SECONDS")
        faults[role] = spec
    return faults


def kill_after_s(spec: str) -> float:
    """The delay of a kill_after_s=S fault (parse_faults has checked its form)."""
    return float(KILL_FAULT.match(spec).group(1))  # type: ignore[union-attr]


def kill_later(entry: dict[str, Any], after_s: float, log: Path) -> threading.Timer:
    """Fault injection: SIGKILL a process group after a delay, saying so in its log."""
    def fire() -> None:
        with contextlib.suppress(OSError), log.open("ab") as fh:
            fh.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} fault injection (DISAGGLAB_FAULTS): the runner sends SIGKILL "
                     f"to {entry['name']}'s process group {entry['pgid']} after {after_s:g} s\n".encode())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry["pgid"], signal.SIGKILL)

    timer = threading.Timer(after_s, fire)
    timer.daemon = True
    timer.start()
    return timer
