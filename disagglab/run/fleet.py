"""Which nodes a pattern runs on and the run-time values bound into its task definitions.

Local: node1 and node2 are 127.0.0.1 with fresh free ports per trial, reserved host-wide (local_ports). SSM: a pool of EC2
node pairs; a pattern leases one pair for its whole run (an flock on the control host, so
a crashed job never holds a lease), and the servers use the configured fixed ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disagglab import procs
from disagglab.deploy.storage import Storage, open_storage
from disagglab.plan import local_vllm
from disagglab.plan.topology import fixed_ports, instance_port_names
from disagglab.run.local_ports import reserved_ports
from disagglab.run.transport import LocalTransport, Node, Transport

BASE_PORT_NAMES = (
    "unified_port", "producer_port", "consumer_port", "proxy_port",
    "producer_side_channel_port", "consumer_side_channel_port", "preflight_port",
)
PORT_NAMES = (*BASE_PORT_NAMES, *instance_port_names())
"""Every port a pattern may bind: today's names (instance 0) and `<name>_<i>` for instances 1..15."""
LEASE_DIR = Path("results/.leases")
BAD_PAIRS = LEASE_DIR / "bad-pairs.json"


def snakemake_run_id() -> str:
    """The Snakemake process this job belongs to (pid + start time), standing for "this run".

    rules/common.smk passes it on in the environment (runledger.OWNER_ENV); failing that, a
    job is `sh -c ...` started by Snakemake, so the grandparent process is Snakemake.
    """
    from disagglab.run.ledger import OWNER_ENV

    if os.environ.get(OWNER_ENV):
        return os.environ[OWNER_ENV]
    ppid = os.getppid()
    parent = procs.stat_fields(ppid)
    start = procs.starttime(int(parent[procs.PPID])) if parent else None
    if parent is None or start is None:
        return f"pid-{ppid}"
    return f"{parent[procs.PPID]}-{start}"


def bad_pairs(run_id: str) -> dict[str, str]:
    try:
        doc = json.loads(BAD_PAIRS.read_text())
    except (OSError, ValueError):
        return {}
    return doc.get(run_id, {})


def mark_bad_pair(run_id: str, pair_key: str, reason: str) -> None:
    """Record a pair whose node failed its health check, so this run does not lease it again."""
    LEASE_DIR.mkdir(parents=True, exist_ok=True)
    with open(LEASE_DIR / "bad-pairs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            doc = json.loads(BAD_PAIRS.read_text())
        except (OSError, ValueError):
            doc = {}
        doc = {run_id: {**doc.get(run_id, {}), pair_key: reason}}  # older runs are forgotten
        tmp = BAD_PAIRS.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, BAD_PAIRS)


@dataclass(frozen=True)
class NodePair:
    node1: Node
    node2: Node
    ports: dict[str, int]
    index: int = 0

    @property
    def key(self) -> str:
        return f"{self.node1.instance_id or self.node1.address}+{self.node2.instance_id or self.node2.address}"

    def node(self, name: str) -> Node:
        return self.node1 if name == "node1" else self.node2

    def bindings(self, node: Node) -> dict[str, str]:
        return {
            "node1_host": self.node1.address,
            "node2_host": self.node2.address,
            "bind_host": node.address,
            **{k: str(v) for k, v in self.ports.items()},
        }


@dataclass
class Fleet:
    """The node pairs a run may lease, the transport that reaches them and the store they read."""

    transport: Transport
    storage: Storage
    cfg: dict[str, Any]
    pairs: list[Any] = field(default_factory=list)
    """For ssm: the discovered aws.PairSpec pool."""

    def report_bad_pair(self, pair: NodePair, reason: str) -> None:
        if self.cfg["executor"] != "local":
            mark_bad_pair(snakemake_run_id(), pair.key, reason)

    @contextlib.contextmanager
    def lease_pair(self, wait_s: float = 3600) -> Iterator[NodePair]:
        if self.cfg["executor"] == "local":
            host = self.cfg["local"]["host"]
            with reserved_ports(host, len(PORT_NAMES)) as ports:
                yield NodePair(Node("node1", host), Node("node2", host), dict(zip(PORT_NAMES, ports, strict=True)))
            return
        LEASE_DIR.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        run_id = snakemake_run_id()
        while True:
            bad = bad_pairs(run_id)
            usable = [p for p in self.pairs if f"{p.node1.instance_id}+{p.node2.instance_id}" not in bad]
            if not usable:
                raise RuntimeError("every node pair failed its health check in this run: " + "; ".join(f"{k}: {v}" for k, v in bad.items()))
            for spec in usable:
                fd = os.open(LEASE_DIR / f"pair-{spec.node1.instance_id}-{spec.node2.instance_id}.lock", os.O_CREAT | os.O_RDWR, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    ports = fixed_ports(self.cfg["aws"]["ports"])
                    yield NodePair(Node("node1", spec.node1.address, spec.node1.instance_id),
                                   Node("node2", spec.node2.address, spec.node2.instance_id), ports, spec.index)
                    return
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no node pair became free within {wait_s:g} s ({len(self.pairs)} pairs; run with --resources node_pair=<pairs>)")
            time.sleep(1.0)


def open_fleet(cfg: dict[str, Any]) -> Fleet:
    storage = open_storage(cfg)
    if cfg["executor"] == "local":
        # Real vLLM locally: node-side files run under the vLLM venv's python, as on a real node.
        python = local_vllm.runner_python(cfg)
        transport = LocalTransport(Path(cfg["local"]["nodes_dir"])) if python is None else LocalTransport(Path(cfg["local"]["nodes_dir"]), python)
        return Fleet(transport, storage, cfg)
    if cfg["executor"] == "ssm":
        from disagglab import aws

        pairs = aws.discover_pairs(cfg)
        return Fleet(ssm_transport(cfg, storage, adaptive=len(pairs) > 1), storage, cfg, pairs)
    raise ValueError(f"executor {cfg['executor']!r} is not available")


def ssm_transport(cfg: dict[str, Any], storage: Storage, adaptive: bool = False) -> Transport:
    """The SSM transport as configured (also used by `recover` to stop a killed run's servers)."""
    from disagglab import aws
    from disagglab.run.ssm import SsmTransport

    ssm_cfg = cfg["aws"]["ssm"]
    return SsmTransport(
        aws.client("ssm", cfg, mode="adaptive" if adaptive else None), storage, ssm_cfg["node_root"],
        execution_timeout_s=ssm_cfg["execution_timeout_s"], delivery_timeout_s=ssm_cfg["delivery_timeout_s"],
        invocation_grace_s=ssm_cfg["invocation_grace_s"], region=cfg["aws"].get("region"),
        poll_initial_s=ssm_cfg.get("poll_initial_s", 0.5), poll_max_s=ssm_cfg.get("poll_max_s", 5.0),
    )
