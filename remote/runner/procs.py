"""Starting a process so that `stop` can always find it again.

Every process is written to the ledger (runs/<pattern>/procs.json) before anything waits on
it, whoever calls `stop` later and however this step ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from task_runner import Ledger, StepError, proc_starttime

from .faults import RESERVED_ENV_PREFIXES

GATE = 'read -r _ || exit 125; exec 0</dev/null; exec "$@"'
"""sh script a spawned process passes first: the program runs only once the ledger names it."""


def spawn(name: str, argv: list[str], env: dict[str, str], run_dir: Path, ledger: Ledger) -> subprocess.Popen[bytes]:
    """Start argv detached in its own session/process group, logging to logs/<name>.log."""
    log_path = run_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(RESERVED_ENV_PREFIXES)}
    full_env = {**inherited, **env}
    # The child waits at a gate (its stdin) until its ledger entry is written: if this runner is
    # killed in between, the gate reads EOF and the child exits before running anything, so no
    # process can exist that `stop` does not know about.
    if shutil.which(argv[0], path=full_env.get("PATH", os.defpath)) is None:
        raise StepError(f"cannot start {name}: {argv[0]} is not an executable file (or not on PATH)", log_path)
    gate_r, gate_w = os.pipe()
    with log_path.open("ab") as log:
        log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}: {json.dumps(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", GATE, name, *argv], stdin=gate_r, stdout=log, stderr=subprocess.STDOUT,
                env=full_env, cwd=run_dir, start_new_session=True,
            )
        except OSError as exc:
            os.close(gate_w)
            raise StepError(f"cannot start {name}: {exc}", log_path) from None
        finally:
            os.close(gate_r)
    try:
        ledger.add({
            "name": name, "pid": proc.pid, "pgid": proc.pid, "starttime": proc_starttime(proc.pid),
            "argv": argv, "log": str(log_path), "started_at": time.time(),
        })
        os.write(gate_w, b"go\n")
    finally:
        os.close(gate_w)
    return proc


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name} (exit status {code})"
    return f"exited with status {code}"
