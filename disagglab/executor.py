"""Which nodes a pattern runs on and the run-time values bound into its task definitions."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Any

from .storage import Storage, open_storage
from .transport import LocalTransport, Node, Transport

PORT_NAMES = (
    "unified_port", "producer_port", "consumer_port", "proxy_port",
    "producer_side_channel_port", "consumer_side_channel_port",
)


@dataclass(frozen=True)
class NodePair:
    node1: Node
    node2: Node
    ports: dict[str, int]

    def node(self, name: str) -> Node:
        return self.node1 if name == "node1" else self.node2

    def bindings(self, node: Node) -> dict[str, str]:
        return {
            "node1_host": self.node1.address,
            "node2_host": self.node2.address,
            "bind_host": node.address,
            **{k: str(v) for k, v in self.ports.items()},
        }


def free_ports(host: str, count: int) -> list[int]:
    """Ports the kernel says are free right now, all distinct (held open together, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


@dataclass
class Executor:
    transport: Transport
    storage: Storage

    def acquire_pair(self, cfg: dict[str, Any]) -> NodePair:
        host = cfg["local"]["host"]
        ports = dict(zip(PORT_NAMES, free_ports(host, len(PORT_NAMES)), strict=True))
        return NodePair(Node("node1", host), Node("node2", host), ports)


def open_executor(cfg: dict[str, Any]) -> Executor:
    if cfg["executor"] == "local":
        from pathlib import Path

        return Executor(LocalTransport(Path(cfg["local"]["nodes_dir"])), open_storage(cfg))
    raise ValueError(f"executor {cfg['executor']!r} is not available")
