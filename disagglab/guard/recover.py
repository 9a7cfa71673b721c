"""`python -m disagglab recover <phase>`: clean up after a pipeline run that was killed.

In order, holding the phase lock (so never while a run holds the phase):
1. control jobs that outlived their Snakemake get SIGTERM: they stop their own servers;
2. step runners still running on local nodes are stopped (they would start more);
3. the node-side `stop` step, through the same transport the run used (local or SSM),
   stops every process group of the pattern's node ledgers; the run-ledger entry is then
   removed and, unless the pattern has a result, a failure record says what was cut short;
4. Snakemake's lock files that lock only files of dead runs, the incomplete markers of the
   phase and the partial outputs they mark, and leftover temporary files are removed.
Finished results are never touched. Running it again finds nothing to do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from disagglab.guard import leftovers, phaselock, snakestate
from disagglab.paths import PhaseLayout
from disagglab.results.failure import failure_record, write_failure
from disagglab.run.ledger import alive, control_alive, fmt_time, group_alive, load_entries, owner_alive
from disagglab.run.transport import LocalTransport, Node, Transport

CONTROL_GRACE_S = 90.0
"""A control job that got SIGTERM stops its servers and collects logs; give it that long."""
STEP_GRACE_S = 15.0


class RecoverRefused(Exception):
    """A live run holds the phase."""


def _wait_gone(check: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while check() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not check()


def _terminate(pid: int, starttime: str | None, group: bool, grace_s: float) -> str:
    """SIGTERM (the group or the process), then SIGKILL after the grace period."""
    def running() -> bool:
        return group_alive(pid) if group else alive(pid, starttime)

    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM) if group else os.kill(pid, signal.SIGTERM)
    if _wait_gone(running, grace_s):
        return "SIGTERM"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)
    return "SIGKILL" if _wait_gone(running, 5.0) else "still running after SIGKILL"


def _transport(entry: dict[str, Any]) -> tuple[Transport, Any]:
    from disagglab.deploy.storage import open_storage

    cfg = entry["cfg"]
    storage = open_storage(cfg)
    if entry["executor"] == "local":
        return LocalTransport(Path(entry["local_nodes_dir"])), storage
    from disagglab.run.fleet import ssm_transport

    return ssm_transport(cfg, storage), storage


def _stop_nodes(entry: dict[str, Any], out: list[str]) -> bool:
    """The node-side stop step on every node of the entry; True when all succeeded."""
    transport, storage = _transport(entry)
    grace = str(entry["cfg"]["server"]["stop_grace_s"])
    ok = True
    for n in reversed(entry["nodes"]):
        node = Node(n["name"], n["address"], n.get("instance_id") or "")
        try:
            transport.prepare(node, entry["phase"], storage, entry["runner"]["key"], entry["runner"]["sha256"], entry["python"])
            outcome = transport.run_step(node, entry["phase"], ["stop", "--node-dir", n["node_dir"], "--pattern", entry["pattern"], "--grace", grace], 120.0)
        except Exception as exc:  # noqa: BLE001 - report, keep the entry, try the other node
            out.append(f"  {entry['pattern']}: {node.name}: stop failed: {type(exc).__name__}: {exc}")
            ok = False
            continue
        if not outcome.ok:
            out.append(f"  {entry['pattern']}: {node.name}: stop failed: {outcome.cause}")
            ok = False
            continue
        stopped = [s for s in outcome.report.get("stopped", []) if s.get("signal")]
        what = "stopped " + ", ".join(f"{s['name']} (pid {s['pid']}, {s['signal']})" for s in stopped) if stopped else "nothing was still running"
        out.append(f"  {entry['pattern']}: {node.name}: {what}")
    return ok


def _failure_record(results: Path, entry: dict[str, Any], owner: dict[str, Any]) -> Path | None:
    """Say what was cut short, in the same record a failed pattern leaves (unless it has a result)."""
    layout = PhaseLayout(results)
    pid = entry["pattern"]
    if layout.trial(pid, entry.get("trial", 1)).exists() or layout.result(pid).exists():
        return None
    step = entry.get("step") or {"step": "start", "node": "control"}
    cause = (f"the pipeline run was killed (Snakemake pid {owner.get('pid')} gone) during step '{step['step']}' on {step['node']}; "
             f"cleaned up by `disagglab recover` at {fmt_time(time.time())}")
    record = failure_record(entry["phase"], entry.get("layer"), pid, entry["cfg"].get("engine"), step["step"], step["node"], cause,
                            trial=(entry.get("trial", 1), entry.get("repeats", 1)), run_id=entry.get("run_id"),
                            started=entry.get("started_at", 0))
    path = layout.failure(pid)
    write_failure(path, record)
    return path


def _recover_entry(results: Path, path: Path, entry: dict[str, Any], out: list[str]) -> bool:
    pid = entry["pattern"]
    if control_alive(entry):
        control = entry["control"]
        how = _terminate(control["pid"], control.get("starttime"), group=False, grace_s=CONTROL_GRACE_S)
        out.append(f"  {pid}: control job pid {control['pid']} outlived its Snakemake: {how}")
    for proc in entry.get("step_procs", []):
        if alive(proc["pid"], proc.get("starttime")):
            how = _terminate(proc["pgid"], None, group=True, grace_s=STEP_GRACE_S)
            out.append(f"  {pid}: step runner '{proc['step']}' on {proc['node']} (pid {proc['pid']}) stopped by {how}; it stopped what it had started")
    if not _stop_nodes(entry, out):
        out.append(f"  {pid}: kept its run-ledger entry {path}: run recover again once the nodes answer")
        return False
    record = _failure_record(results, entry, entry.get("owner") or entry.get("control") or {})
    if record:
        out.append(f"  {pid}: failure record {record}")
    path.unlink(missing_ok=True)
    return True


def recover(phase: str, workdir: Path = Path(".")) -> tuple[bool, list[str]]:
    """Clean up the phase; returns (everything recovered, lines saying what was done)."""
    results = Path(workdir) / "results" / phase
    try:
        killed = phaselock.acquire(results, phase, "disagglab recover", ["python", "-m", "disagglab", "recover", phase])
    except phaselock.PhaseBusy as exc:
        raise RecoverRefused(f"{exc}\nrecover only cleans up after a run that was killed; it never touches a live run.") from None
    try:
        entries = [(p, e) for p, e in load_entries(results) if not owner_alive(e)]
        out: list[str] = []
        ok = True
        if killed:
            out.append(f"{phase}: the run of {phaselock.describe(killed)} was killed")
        for path, entry in entries:
            ok = _recover_entry(results, path, entry, out) and ok
        with contextlib.suppress(OSError):
            PhaseLayout(results).ledger_dir.rmdir()
        if killed or entries:
            locks = leftovers.stale_locks(phase, workdir)
            for lock in locks:
                lock.unlink(missing_ok=True)
            if locks:
                out.append("  removed the stale Snakemake lock: " + ", ".join(str(p.relative_to(Path(workdir))) for p in locks))
            root = Path(workdir) / ".snakemake" / "incomplete"
            for marker, output in snakestate.phase_incomplete(workdir, phase).items():
                target = Path(workdir) / output
                partial = target.is_file() and not target.is_symlink()
                if partial:
                    target.unlink()
                snakestate.remove_marker(marker, root)
                out.append(f"  removed the incomplete marker of {output}" + (" and its partial output" if partial else ""))
            for tmp in results.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                out.append(f"  removed the temporary file {tmp.relative_to(Path(workdir))}")
        if not out:
            return True, [f"{phase}: nothing to recover (no killed run left anything behind)"]
        out.append(f"{phase}: recovered; finished results were not touched. Run your target again." if ok
                   else f"{phase}: NOT fully recovered (see above)")
        return ok, out
    finally:
        phaselock.release(results)
