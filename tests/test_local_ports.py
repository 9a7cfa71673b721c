"""Local-mode ports: two trials on one host never share one, and a dead trial's ports come back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from disagglab.run import local_ports
from disagglab.run.fleet import PORT_NAMES
from disagglab.run.local_ports import reserved_ports

HOLDER = """
import sys
from pathlib import Path
from disagglab.run.local_ports import reserved_ports
with reserved_ports("127.0.0.1", int(sys.argv[2]), Path(sys.argv[1])) as ports:
    print(" ".join(map(str, ports)), flush=True)
    sys.stdin.readline()
"""


def claimable(registry: Path, port: int) -> bool:
    fd = local_ports._claim(registry, port)
    if fd is None:
        return False
    os.close(fd)
    return True


def test_nested_reservations_are_disjoint_and_bindable(tmp_path: Path) -> None:
    with reserved_ports("127.0.0.1", len(PORT_NAMES), tmp_path) as first, reserved_ports("127.0.0.1", len(PORT_NAMES), tmp_path) as second:
        assert len(set(first)) == len(first) == len(PORT_NAMES)
        assert set(first).isdisjoint(second)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", first[0]))  # the offered sockets are closed: a server can bind
        assert not any(claimable(tmp_path, port) for port in first + second)


def test_a_port_held_by_another_process_is_not_handed_out_until_that_process_ends(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "50"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = [int(p) for p in holder.stdout.readline().split()]
        assert len(held) == 50
        assert not any(claimable(tmp_path, port) for port in held)
        with reserved_ports("127.0.0.1", 200, tmp_path) as mine:
            assert set(mine).isdisjoint(held)
    finally:
        holder.kill()  # no clean exit: the kernel must drop the locks of a dead process
        holder.wait(timeout=10)
    deadline = time.monotonic() + 10
    free = []
    while time.monotonic() < deadline and len(free) < len(held):
        free = [port for port in held if claimable(tmp_path, port)]
    assert free == held


def test_a_registry_full_of_held_ports_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_ports, "EXTRA_OFFERS", 0)
    monkeypatch.setattr(local_ports, "_claim", lambda registry, port: None)  # every offer is held elsewhere
    with pytest.raises(RuntimeError, match="could reserve only 0 of 3 ports on 127.0.0.1") as caught, reserved_ports("127.0.0.1", 3, tmp_path):
        pass
    assert str(tmp_path) in str(caught.value)
