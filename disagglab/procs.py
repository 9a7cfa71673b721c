"""Process identity from /proc: the one reader of `/proc/<pid>/stat` on the control side.

The phase lock, the run ledger, the guard and `recover` all ask "is this still the process I
recorded?". A pid alone can be recycled, so a process is its pid plus its kernel start time.
Linux only (the control host and the nodes are Linux).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

# Fields after the `(comm)` part of /proc/<pid>/stat, 0-based (proc(5) numbers them 3, 4, 5, 22).
STATE, PPID, PGRP, STARTTIME = 0, 1, 2, 19
GONE = ("Z", "X")
"""Zombie or dead: holds no port, no GPU, no memory."""


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields after `(comm)` (comm may hold spaces and parentheses), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def starttime(pid: int) -> str | None:
    """Kernel start time of a pid (clock ticks since boot), so a recycled pid is never ours."""
    fields = stat_fields(pid)
    return fields[STARTTIME] if fields else None


def all_processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, stat fields) of every process that can still be read."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = stat_fields(stat.parent.name)
        if fields is not None:
            yield int(stat.parent.name), fields
