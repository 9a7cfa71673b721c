"""The node's network link, shared by every stand-in the node runs.

A real node has one NIC (or one set of EFA devices): two decode servers on it pulling KV at the
same time share its bandwidth. Each stand-in is its own process, so the link's state (when it is
next free, on the machine-wide monotonic clock that asyncio's loop.time() reads) lives in a
small file the task names with `--node-link ${node_dir}/sim-node-link` (one per node), and is
read and advanced under an exclusive flock: transfers queue on the link in the order they
reach it, whichever server they belong to. Without the flag (a stand-in started by hand) the
link is the process's own, as before. The file names the boot it was written in:
the monotonic clock restarts with the machine, so a value from an earlier boot is ignored.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


class NodeLink:
    """Reserve wire time on the node's link; a reservation never overlaps another server's."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.boot = _boot_id()
        self._free_at = 0.0  # the process's own link (no file)

    def reserve(self, earliest: float, wire_s: float) -> float:
        """Book `wire_s` seconds starting no earlier than `earliest` (monotonic); return when it ends."""
        if self.path is None:
            self._free_at = max(earliest, self._free_at) + wire_s
            return self._free_at
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            boot, _, value = os.pread(fd, 128, 0).decode(errors="replace").strip().partition(" ")
            try:
                free_at = float(value) if boot == self.boot else 0.0
            except ValueError:
                free_at = 0.0
            done = max(earliest, free_at) + wire_s
            os.pwrite(fd, f"{self.boot} {done!r}".encode().ljust(128), 0)
            return done
        finally:
            os.close(fd)  # closing releases the lock
