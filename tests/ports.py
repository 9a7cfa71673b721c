"""Ports for the tests' own servers, claimed in the local-mode port registry.

Under pytest-xdist several test processes run side by side, and trials in one of them reserve
ports through `disagglab.run.local_ports`. A port a test merely asked the kernel for is free
only until someone binds it: a trial in another worker could be handed it in between, and one
of the two servers would answer the other's requests. So the tests claim their ports in the
same registry and hold the claim until the test process exits (a port is never reused within
one worker; a run uses a few hundred of the ~28k ephemeral ports).
"""

from __future__ import annotations

import contextlib

from disagglab.run.local_ports import reserved_ports

HOST = "127.0.0.1"
_HELD = contextlib.ExitStack()  # never closed: the kernel drops the locks when the process exits


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct ports nothing listens on now and no trial or other test will be handed."""
    return _HELD.enter_context(reserved_ports(host, count))


def free_port(host: str = HOST) -> int:
    (port,) = free_ports(1, host)
    return port
