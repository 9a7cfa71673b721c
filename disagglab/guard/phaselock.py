"""One pipeline run per phase: an flock on `.snakemake/disagglab-locks/<phase>.lock`, with a record of the holder.

Snakemake's own directory lock only says "Directory cannot be locked" and who holds it is
left to guess; and since it locks the files of a DAG, it does not stop two runs whose DAGs
differ but share a phase (a layer and a pattern of it). This lock is taken while Snakemake
parses the workflow, for the phases its targets name, and held by the Snakemake process until
it exits: the kernel drops it when the process dies, however it dies, so a killed run never
blocks the next one. The file names the holder (pid, start time, command line); a normal
exit empties it, so a record whose process is gone is the trace of a killed run.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from disagglab.run.ledger import alive, fmt_time, proc_starttime

LOCK_DIR = Path(".snakemake") / "disagglab-locks"
"""Run state beside Snakemake's own, never under results/: a refused run (bad config, target or
fault variable, or a bucket that does not resolve at onstart) leaves nothing under results/."""
_held: dict[str, int] = {}
"""Resolved lock path -> open descriptor, for this process's lifetime."""


class PhaseBusy(Exception):
    """Another live process holds the phase."""


def lock_path(results_dir: Path) -> Path:
    """results/<phase> -> .snakemake/disagglab-locks/<phase>.lock (relative to the working folder of results/)"""
    return Path(results_dir).parent.parent / LOCK_DIR / f"{Path(results_dir).name}.lock"


def holder(results_dir: Path) -> dict[str, Any] | None:
    """The recorded holder, or None when the file is missing or empty (a clean exit)."""
    try:
        text = lock_path(results_dir).read_text()
    except OSError:
        return None
    try:
        doc = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def holder_alive(doc: dict[str, Any] | None) -> bool:
    return bool(doc) and alive(doc.get("pid"), doc.get("starttime"))


def describe(doc: dict[str, Any] | None) -> str:
    if not doc:
        return "an unknown process"
    cmd = " ".join(doc.get("argv") or [])
    return f"{doc.get('what', 'process')} pid {doc.get('pid')}, started {fmt_time(doc.get('started_at'))}" + (f", `{cmd}`" if cmd else "")


def acquire(results_dir: Path, phase: str, what: str, argv: list[str]) -> dict[str, Any] | None:
    """Take the phase for this process; returns the previous holder's record (None if clean).

    Raises PhaseBusy naming the live holder. Idempotent within one process.
    """
    path = lock_path(results_dir).resolve()
    if str(path) in _held:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        current = holder(results_dir)
        raise PhaseBusy(
            f"{phase} is locked by another pipeline run: {describe(current)}, in {Path(results_dir).resolve().parent.parent}.\n"
            f"Only one run per phase at a time; wait for it to finish or stop it (Ctrl-C in its terminal, or kill -INT {current.get('pid') if current else '<pid>'}). "
            "Runs on other phases are not affected."
        ) from None
    previous = holder(results_dir)
    record = {"pid": os.getpid(), "starttime": proc_starttime(os.getpid()), "started_at": time.time(),
              "what": what, "argv": argv, "phase": phase}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record, sort_keys=True) + "\n").encode(), 0)
    _held[str(path)] = fd
    if len(_held) == 1:
        atexit.register(release_all)
    return previous if previous and not holder_alive(previous) else None


def release(results_dir: Path, restore: dict[str, Any] | None = None) -> None:
    """Give the phase back; `restore` puts a killed holder's record back (still to recover)."""
    fd = _held.pop(str(lock_path(results_dir).resolve()), None)
    if fd is not None:
        _release_fd(fd, restore)


def release_all() -> None:
    """A clean exit: empty each record (nothing to recover), then unlock."""
    while _held:
        _, fd = _held.popitem()
        _release_fd(fd)


def _release_fd(fd: int, restore: dict[str, Any] | None = None) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        if restore:
            os.pwrite(fd, (json.dumps(restore, sort_keys=True) + "\n").encode(), 0)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)
