"""Process-group and statistics helpers shared by bench/client_fidelity.py and bench/fidelity_peers.py.

Every process is started in its own session (process group) and registered, so
that ``Procs.stop_all`` can end it and everything it spawned (aiperf's ZMQ
services, guidellm's workers, pip's builds), also after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


class Procs:
    """Registry of the process groups this bench started; nothing else is ever signalled."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session, output appended to ``log_path``, optionally pinned to ``cpus``."""
        preexec = None
        if cpus:
            pinned = set(cpus)

            def preexec() -> None:
                os.sched_setaffinity(0, pinned)

        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=preexec,  # noqa: PLW1509 - the bench starts no threads
            )
        self.live.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        log_path: Path,
        timeout_s: float,
        env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
        cwd: Path | None = None,
    ) -> int | None:
        """Run to completion; return the exit status, or None if it was killed at ``timeout_s``."""
        proc = self.start(argv, log_path, env=env, cpus=cpus, cwd=cwd)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.stop(proc)  # also reaps helpers the leader left behind in its group

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``grace_s``; idempotent."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        """Stop every registered process group, newest first."""
        for proc in reversed(list(self.live)):
            self.stop(proc, grace_s=2.0)


def tail(path: Path, lines: int = 6, width: int = 300) -> str:
    """The last non-empty lines of a log, joined with ' | ' (for one-line reasons)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip()[:width] for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def pct(values: Iterable[float], q: float) -> float:
    """Linear-interpolation percentile; nan for no values."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return math.nan
    return float(np.percentile(arr, q))


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05) -> bool:  # noqa: ANN001 - any callable
    """Poll ``predicate`` until it is true or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
