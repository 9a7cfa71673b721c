"""The control-side run ledger: which patterns have servers up, for which Snakemake run.

A Snakemake run that is SIGKILLed (kill -9, the OOM killer, a reboot of the control host)
runs no cleanup at all: its control jobs die with it, but the servers they started live on
in their own process groups on the nodes. The node-side ledgers (procs.json) say *what* to
stop; this ledger says *that* something must be stopped and where. One small JSON file per
in-flight pattern, `results/<phase>/.ledger/<pattern>.json`, written atomically when the
pattern's servers are about to start and removed once its stop steps have all succeeded.
An entry whose owner (the Snakemake process, by pid and kernel start time) is gone is the
trace of a killed run: the next run refuses to start and `disagglab recover` cleans up.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from disagglab import procs
from disagglab.hashing import atomic_write_json
from disagglab.paths import safe_join
from disagglab.run.transport import Transport

LEDGER_DIR = ".ledger"
OWNER_ENV = "DISAGGLAB_SNAKEMAKE"
"""`<pid>-<starttime>` of the Snakemake process; set by rules/common.smk, inherited by jobs."""


# ---------------------------------------------------------------------------- processes


proc_starttime = procs.starttime


def alive(pid: int | None, starttime: str | None = None) -> bool:
    """The process exists, is not a zombie, and (when given) started at `starttime`."""
    if not pid:
        return False
    fields = procs.stat_fields(pid)
    if fields is None or fields[procs.STATE] in procs.GONE:
        return False
    return starttime is None or fields[procs.STARTTIME] == starttime


def identity(pid: int | None = None) -> dict[str, Any]:
    pid = pid or os.getpid()
    return {"pid": pid, "starttime": proc_starttime(pid)}


def identity_text(ident: dict[str, Any]) -> str:
    return f"{ident['pid']}-{ident['starttime']}"


def parse_identity(text: str | None) -> dict[str, Any] | None:
    if not text or "-" not in text:
        return None
    pid, start = text.split("-", 1)
    return {"pid": int(pid), "starttime": start} if pid.isdigit() else None


def snakemake_owner() -> dict[str, Any] | None:
    """The Snakemake run this job belongs to (from the environment Snakemake passes on)."""
    return parse_identity(os.environ.get(OWNER_ENV))


def stop_when_orphaned(poll_s: float = 1.0) -> bool:
    """In a control job started by Snakemake: SIGTERM ourselves once Snakemake is gone.

    `kill -9 <snakemake pid>` kills Snakemake alone; the control job would go on measuring
    for nobody (Snakemake can no longer record the result) with its servers up. Interrupted
    instead, it stops them at once and writes its failure record, as on Ctrl-C.
    Returns whether the watch was started (only when Snakemake is our parent).
    """
    owner = snakemake_owner()
    if not owner or owner["pid"] != os.getppid():
        return False

    def watch() -> None:
        while alive(owner["pid"], owner["starttime"]):
            time.sleep(poll_s)
        print(f"[{time.strftime('%H:%M:%S')}] Snakemake (pid {owner['pid']}) is gone: stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="snakemake-watch", daemon=True).start()
    return True


def group_alive(pgid: int) -> bool:
    """A process group with at least one member that is not a zombie."""
    return any(int(f[procs.PGRP]) == pgid and f[procs.STATE] not in procs.GONE for _, f in procs.all_processes())


def fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "an unknown time"


# ---------------------------------------------------------------------------- entries


def ledger_dir(results_dir: Path) -> Path:
    return Path(results_dir) / LEDGER_DIR


@dataclass
class RunLedger:
    """One in-flight pattern's entry; every change is an atomic rewrite of the file."""

    path: Path
    entry: dict[str, Any]

    @classmethod
    def begin(cls, results_dir: Path, phase: str, pattern: str, layer: str, run_id: str, cfg: dict[str, Any],
              nodes: list[dict[str, Any]], runner: dict[str, str], python: str, local_nodes_dir: str | None,
              trial: int = 1, repeats: int = 1) -> RunLedger:
        entry = {
            "schema_version": 1, "phase": phase, "pattern": pattern, "trial": trial, "repeats": repeats, "layer": layer, "run_id": run_id,
            "started_at": time.time(), "cwd": os.getcwd(),
            "owner": snakemake_owner(), "control": identity(),
            "executor": cfg["executor"], "nodes": nodes, "local_nodes_dir": local_nodes_dir,
            "runner": runner, "python": python, "cfg": cfg,
            "step": None, "step_procs": [],
        }
        ledger = cls(safe_join(ledger_dir(results_dir), f"{pattern}.trial-{int(trial)}.json"), entry)
        ledger.write()
        return ledger

    def watch(self, transport: Transport) -> None:
        """Note every step runner a local transport starts until `clear`: recover stops them first."""
        transport.on_spawn = lambda node, step, pid: self.note_process(node.name, step, pid)

    def write(self) -> None:
        atomic_write_json(self.path, self.entry)

    def note_step(self, step: str, node: str) -> None:
        """The step in progress: what a recovery names as cut short."""
        self.entry["step"] = {"step": step, "node": node, "at": time.time()}
        self.write()

    def note_process(self, node: str, step: str, pid: int) -> None:
        """A local step runner (own process group): recover stops it before the stop step."""
        self.entry["step_procs"] = [p for p in self.entry["step_procs"] if alive(p["pid"], p["starttime"])]
        self.entry["step_procs"].append({"node": node, "step": step, "pid": pid, "pgid": pid, "starttime": proc_starttime(pid)})
        self.write()

    def clear(self, transport: Transport | None = None) -> None:
        """The stop steps all succeeded: nothing of this pattern runs any more."""
        if transport is not None:
            transport.on_spawn = None
        self.path.unlink(missing_ok=True)  # the folder stays: a parallel pattern may be writing into it


def load_entries(results_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(ledger_dir(results_dir).glob("*.json")):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # a half-written entry cannot exist (atomic writes); a foreign file is ignored
    return out


def owner_alive(entry: dict[str, Any]) -> bool:
    """Whether the run that wrote the entry still exists: its Snakemake, else its control job."""
    owner = entry.get("owner") or entry.get("control") or {}
    return alive(owner.get("pid"), owner.get("starttime"))


def control_alive(entry: dict[str, Any]) -> bool:
    control = entry.get("control") or {}
    return alive(control.get("pid"), control.get("starttime"))


def node_orphans(entry: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """node name -> live process groups in that node's procs.json (local nodes only)."""
    out: dict[str, list[dict[str, Any]]] = {}
    if entry.get("executor") != "local":
        return out
    for node in entry.get("nodes", []):
        procs = Path(node["node_dir"]) / "runs" / entry["pattern"] / "procs.json"
        try:
            recorded = json.loads(procs.read_text())
        except (OSError, ValueError):
            continue
        live = [p for p in recorded if group_alive(int(p["pgid"]))]
        if live:
            out[node["name"]] = live
    return out
