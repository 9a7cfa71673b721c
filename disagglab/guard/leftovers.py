"""What a killed pipeline run left behind on one phase, and the one command that cleans it up.

Evidence of a killed run: the phase lock still names a process that is gone (a clean exit
empties it), or a run-ledger entry whose Snakemake is gone. Only then are Snakemake's lock
files and incomplete markers for the phase counted as leftovers: while the holder lives
they are simply a run in progress.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disagglab.guard import phaselock, snakestate
from disagglab.paths import pattern_of
from disagglab.run.ledger import alive, control_alive, fmt_time, load_entries, node_orphans, owner_alive

__all__ = ["Leftovers", "explain", "find", "fmt_time", "pattern_of", "recover_command", "stale_locks"]


@dataclass
class Leftovers:
    phase: str
    killed_holder: dict[str, Any] | None = None
    entries: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    orphans: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    """pattern -> node -> live process groups from the node's procs.json (local nodes)."""
    locks: dict[Path, list[str]] = field(default_factory=dict)
    incomplete: dict[Path, str] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.entries or self.locks or self.incomplete)

    @property
    def since(self) -> float | None:
        times = [e.get("started_at") for _, e in self.entries] + [(self.killed_holder or {}).get("started_at")]
        return min((t for t in times if t), default=None)


def recover_command(phase: str) -> str:
    exe = Path(sys.executable)
    with_cwd = os.path.relpath(exe) if exe.is_relative_to(Path.cwd()) else str(exe)
    return f"{shlex.quote(with_cwd)} -m disagglab recover {phase}"


def find(phase: str, workdir: Path = Path("."), previous: dict[str, Any] | None = None) -> Leftovers:
    """The leftovers of a killed run on the phase (empty when there are none).

    When this process holds the phase lock, `previous` is the record `phaselock.acquire`
    returned: the holder before us.
    """
    results = Path(workdir) / "results" / phase
    lo = Leftovers(phase)
    current = phaselock.holder(results)
    if current and current.get("pid") == os.getpid():
        current = previous
    holder_live = phaselock.holder_alive(current)
    if current and not holder_live:
        lo.killed_holder = current
    for path, entry in load_entries(results):
        if not owner_alive(entry):
            lo.entries.append((path, entry))
            orphans = node_orphans(entry)
            if orphans:
                lo.orphans[entry["pattern"]] = orphans
    if holder_live or not (lo.killed_holder or lo.entries):
        return Leftovers(phase)
    lo.locks = stale_locks(phase, workdir)
    lo.incomplete = snakestate.phase_incomplete(workdir, phase)
    return lo


def stale_locks(phase: str, workdir: Path = Path(".")) -> dict[Path, list[str]]:
    """Snakemake lock files on the phase's files that no live run holds.

    Called once the phase is known to be free. A lock file that also names a phase held by
    a live run belongs to that run and is kept.
    """
    out = {}
    for path, paths in snakestate.phase_lock_files(workdir, phase).items():
        others = snakestate.phases_in(paths) - {phase}
        if not any(phaselock.holder_alive(phaselock.holder(Path(workdir) / "results" / o)) for o in others):
            out[path] = paths
    return out


def _entry_lines(entry: dict[str, Any], orphans: dict[str, list[dict[str, Any]]]) -> list[str]:
    step = entry.get("step") or {}
    where = f" during step '{step['step']}' on {step['node']}" if step else ""
    trial = f"trial {entry.get('trial', 1)} of {entry['repeats']}, " if entry.get("repeats", 1) > 1 else ""
    lines = [f"  - {entry['pattern']} ({trial}started {fmt_time(entry.get('started_at'))}, cut short{where}):"]
    if control_alive(entry):
        lines.append(f"      its control job (pid {entry['control']['pid']}) is still running without Snakemake")
    live_steps = [p for p in entry.get("step_procs", []) if alive(p["pid"], p["starttime"])]
    for p in live_steps:
        lines.append(f"      step runner '{p['step']}' on {p['node']} still running (pid {p['pid']})")
    if entry.get("executor") == "local":
        for node in entry.get("nodes", []):
            procs = orphans.get(node["name"], [])
            if procs:
                lines.append(f"      orphaned on {node['name']}: " + ", ".join(f"{p['name']} pid {p['pid']}" for p in procs))
        if not orphans and not live_steps:
            lines.append("      no process of it is still running")
    else:
        nodes = ", ".join(f"{n['name']} ({n.get('instance_id') or n['address']})" for n in entry.get("nodes", []))
        lines.append(f"      its servers may still run on {nodes}")
    return lines


def explain(lo: Leftovers) -> str:
    """One message: what the killed run left and the single command that cleans it up."""
    if lo.killed_holder:
        lines = [f"{lo.phase}: an earlier pipeline run was killed and left things behind ({phaselock.describe(lo.killed_holder)}; it is gone):"]
    else:
        owner = (lo.entries[0][1].get("owner") or lo.entries[0][1].get("control") or {}) if lo.entries else {}
        lines = [f"{lo.phase}: an earlier pipeline run (pid {owner.get('pid', '?')}, now gone) did not stop everything it started:"]
    for _, entry in lo.entries:
        lines.extend(_entry_lines(entry, lo.orphans.get(entry["pattern"], {})))
    if lo.locks:
        lines.append("  - a stale Snakemake lock: " + ", ".join(str(p.relative_to(p.parent.parent.parent)) for p in lo.locks))
    if lo.incomplete:
        lines.append("  - incomplete outputs: " + ", ".join(sorted(lo.incomplete.values())))
    lines.append("Recover with one command (stops the orphaned servers, removes the stale lock and the incomplete outputs; "
                 "finished results are kept), then run your target again:")
    lines.append(f"  {recover_command(lo.phase)}")
    return "\n".join(lines)
