"""The `preflight` step: one role of the NIXL transport preflight (remote/nixl_preflight.py).

`target` starts in the background, `initiator` runs to the end and reports bandwidth and the
transport the library says it used. Both go into the pattern's ledger like its servers, so
`stop` (always sent) ends a target that never got its notification.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from task_runner import Ledger, StepError, run_dir_for, stop_entries

from .bindings import given_bindings
from .health import wait_healthy
from .procs import spawn

SCRIPT = Path(__file__).resolve().parent.parent / "nixl_preflight.py"
"""Fetched only for the disaggregated patterns, the only ones that run this step."""
# twin: remote/nixl_preflight.py:ERROR_PREFIX
ERROR_PREFIX = "PREFLIGHT-ERROR "


def _preflight_error(log: Path, offset: int) -> str | None:
    """The role's own one-line reason (nixl_preflight.py prints it with a fixed prefix)."""
    with contextlib.suppress(OSError):
        with log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        for line in reversed(text.splitlines()):
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX):]
    return None


def _transport(log: Path, offset: int, backend: str, op: str) -> dict[str, Any]:
    """What the initiator's log (from `offset`) shows of the transport NIXL used."""
    with log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    sys.path.insert(0, str(SCRIPT.parent))
    from nixl_preflight import classify  # noqa: PLC0415 - a node-side sibling, found beside this file

    transport = classify(text, backend, op)
    transport.pop("tables", None)
    return transport


def step_preflight(args: argparse.Namespace) -> dict[str, Any]:
    """One role of the NIXL preflight, with the pattern's backend and transport environment."""
    node_dir = Path(args.node_dir).resolve()
    run_dir = run_dir_for(node_dir, args.pattern)
    ledger = Ledger(run_dir)
    bindings = given_bindings(args.bindings)
    if not SCRIPT.is_file():
        raise StepError(f"{SCRIPT} is not on this node (was it fetched?)")
    env = {str(k): str(v) for k, v in json.loads(args.env).items()}
    port = str(bindings["preflight_port"])
    common = ["--port", port, "--backend", args.backend, "--timeout", f"{args.timeout:g}"]
    name = f"preflight-{args.role}"
    log = run_dir / "logs" / f"{name}.log"
    offset = log.stat().st_size if log.exists() else 0

    def fail(cause: str, exit_status: int | None = None) -> StepError:
        entries = ledger.load()
        stop_entries(entries, args.grace, only={name})
        ledger.update(entries)
        own = _preflight_error(log, offset)
        return StepError(f"NIXL preflight {args.role}: {own or cause}", log, exit_status)

    if args.role == "target":
        host = bindings["bind_host"]
        proc = spawn(name, [sys.executable, str(SCRIPT), "target", "--host", host, *common, "--bytes", str(args.bytes)], env, run_dir, ledger)
        try:
            ready = wait_healthy(f"http://{host}:{port}/health", args.timeout, proc, name, log)
        except StepError as exc:
            raise fail(exc.cause, exc.exit_status) from None
        return {"role": "target", "pid": proc.pid, "ready_after_s": round(ready, 3)}
    report_path = run_dir / "preflight-report.json"
    report_path.unlink(missing_ok=True)
    argv = [sys.executable, str(SCRIPT), "initiator", "--host", bindings[f"{args.peer}_host"], *common,
            "--iterations", str(args.iterations), "--report", str(report_path)]
    proc = spawn(name, argv, env, run_dir, ledger)
    try:
        code = proc.wait(timeout=args.timeout + 30)
    except subprocess.TimeoutExpired:
        raise fail(f"did not finish within {args.timeout + 30:g} s") from None
    if code != 0 or not report_path.exists():
        raise fail(f"exited with status {code}" + ("" if report_path.exists() else " and wrote no report"), code)
    report = json.loads(report_path.read_text())
    report["transport"] = _transport(log, offset, args.backend, report.get("op", "READ"))
    return {"role": "initiator", "preflight": report}
