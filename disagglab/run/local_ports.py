"""Local-mode ports, reserved host-wide for as long as a trial runs.

A port the kernel calls free is free only until someone binds it. Two trials on one machine
(`snakemake -j N`, or two phases side by side) that each asked the kernel could be handed the
same port once the first let go of it, and the second trial's health check would then be
answered by the first trial's server. So every local port is also claimed in a registry of
lock files shared by every project on the host: an flock held until the trial ends, released
by the kernel if the process dies, so a crashed run never keeps a port.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

REGISTRY = Path(tempfile.gettempdir()) / "disagglab-local-ports"
EXTRA_OFFERS = 256
"""Kernel offers beyond `count` before giving up: each is a port another trial holds (and an
open socket until the choice is made, so this also bounds the fds a call uses)."""


def _claim(registry: Path, port: int) -> int | None:
    """The fd holding port's lock, or None when another trial holds it."""
    fd = os.open(registry / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def reserved_ports(host: str, count: int, registry: Path = REGISTRY) -> Iterator[list[int]]:
    """`count` distinct ports free on host and held by no other trial, until the block ends.

    Offered sockets stay open until the choice is made, so the kernel never offers one twice
    in a call; they are closed before the yield so the servers can bind the ports.
    """
    registry.mkdir(parents=True, exist_ok=True)
    socks: list[socket.socket] = []
    locks: list[int] = []
    ports: list[int] = []
    try:
        for _ in range(count + EXTRA_OFFERS):
            if len(ports) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            fd = _claim(registry, port)
            if fd is not None:
                locks.append(fd)
                ports.append(port)
        if len(ports) < count:
            raise RuntimeError(f"could reserve only {len(ports)} of {count} ports on {host}: the rest the kernel offered are held "
                               f"by other trials (registry {registry})")
        for sock in socks:
            sock.close()
        yield ports
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
        for fd in locks:
            os.close(fd)
