"""The NIXL transport preflight, control side: measure once, record, judge, copy into results.

Before the servers of a tcp or efa pattern start, a real NIXL READ moves host memory from
node1 to node2 with the pattern's NIXL backend and transport environment (the node side is
remote/nixl_preflight.py, run through the same transport and runner steps as the servers).
The outcome is a marker, results/<phase>/preflight/<pair>-<backend>.json: bandwidth, the
transport the library says it used and the lines that say so, the environment, the nodes,
and the Snakemake run that measured it.

Once per Snakemake invocation per (node pair, pattern backend, environment digest): nodes may
be replaced between invocations, so a marker from an earlier invocation is measured again;
later patterns on the pair in the same invocation reuse it. A lock per marker makes parallel
jobs on different pairs independent and jobs on the same pair measure once.

Judgement: an efa pattern whose preflight shows anything but EFA without emulation fails at
step "preflight" with the evidence in the cause when `preflight.require_efa` is true (the
default on AWS); otherwise the marker, and so the result, says `efa_verified: false`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from disagglab.errors import StepFailed
from disagglab.hashing import atomic_write_json
from disagglab.paths import PhaseLayout
from disagglab.plan.model import DISAGGREGATED, Pattern
from disagglab.run.fleet import NodePair, snakemake_run_id
from disagglab.run.steps import StepRunner

SCHEMA_VERSION = 1
PREFLIGHT_BACKENDS = DISAGGREGATED
# What makes each NIXL backend say which transport it used (a user's own setting wins).
EVIDENCE_ENV = {
    "UCX": {"UCX_PROTO_INFO": "y", "NIXL_LOG_LEVEL": "INFO"},
    "LIBFABRIC": {"NIXL_LOG_LEVEL": "INFO"},
}


@dataclass(frozen=True)
class Setup:
    """What the preflight runs with for one pattern backend under one configuration."""

    pattern_backend: str
    nixl_backend: str
    env: dict[str, str]
    evidence_env: dict[str, str]
    local_substitute: str | None

    @property
    def digest(self) -> str:
        doc = {"nixl_backend": self.nixl_backend, "env": self.env, "evidence_env": self.evidence_env}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def setup_for(cfg: dict[str, Any], backend: str) -> Setup:
    """The pattern's NIXL backend and transports.<backend>.env; locally UCX with preflight.local_env."""
    if cfg["executor"] == "local":
        nixl, env = "UCX", dict(cfg["preflight"]["local_env"])
        note = (f"executor local: NIXL UCX with {json.dumps(env, sort_keys=True)} (preflight.local_env) on {cfg['local']['host']} "
                f"stands in for transports.{backend} ({'/'.join(cfg['transports'][backend]['nixl_backends'])}); there is no EFA here")
    else:
        nixl, env, note = cfg["transports"][backend]["nixl_backends"][0], dict(cfg["transports"][backend]["env"]), None
    evidence = {k: v for k, v in EVIDENCE_ENV.get(nixl, {}).items() if k not in env}
    return Setup(backend, nixl, env, evidence, note)


def require_efa(cfg: dict[str, Any]) -> bool:
    value = cfg["preflight"]["require_efa"]
    return cfg["executor"] == "ssm" if value is None else bool(value)


def efa_verified(transport: dict[str, Any]) -> bool:
    return transport.get("transport") == "efa" and not transport.get("emulated")


def judge(marker: dict[str, Any], pattern_backend: str, require: bool) -> str | None:
    """Why this pattern must not run on what the preflight saw, or None."""
    if pattern_backend != "efa" or marker.get("efa_verified") or not require:
        return None
    evidence = marker.get("evidence") or ["no evidence"]
    source = marker.get("evidence_source") or "preflight log"
    devices = ", ".join(marker.get("devices") or []) or marker.get("transport", "unknown")
    how = "software emulation over " if marker.get("emulated") and marker.get("transport") == "efa" else ""
    return (f"efa pattern, but the NIXL preflight moved data over {how}{devices} (transport {marker.get('transport')!r}, "
            f"emulated: {bool(marker.get('emulated'))}): {evidence[0]!r} ({source}); marker {marker.get('marker_path')}. "
            "Check the EFA setup of the pair, or set preflight.require_efa: false to record it and run anyway")


def reusable(marker: dict[str, Any] | None, run_id: str, digest: str) -> bool:
    """Only a marker of this very Snakemake invocation, measured with this environment, is reused."""
    return bool(marker) and marker.get("snakemake_run_id") == run_id and marker.get("env_sha256") == digest


def marker_path(results_dir: Path, pair: NodePair, backend: str) -> Path:
    key = re.sub(r"[^A-Za-z0-9.+-]", "_", pair.key)
    return PhaseLayout(results_dir).preflight_marker(f"{key}-{backend}.json")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.stem}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _measure(steps: StepRunner, cfg: dict[str, Any], pattern: Pattern, logs: Path, pair: NodePair, setup: Setup, run_id: str,
             sm_run: str, path: Path) -> dict[str, Any]:
    pre, transport = cfg["preflight"], steps.transport
    timeout = float(pre["timeout_s"])
    common = ["--pattern", pattern.id, "--backend", setup.nixl_backend, "--env", json.dumps({**setup.env, **setup.evidence_env}),
              "--timeout", f"{timeout:g}", "--grace", str(cfg["server"]["stop_grace_s"])]
    target = steps.run(pair.node1, ["preflight", "--node-dir", transport.node_dir(pair.node1, steps.phase), "--role", "target",
                                    "--bindings", json.dumps(pair.bindings(pair.node1)), "--bytes", str(pre["bytes"]), *common], timeout + 60)
    report = steps.run(pair.node2, ["preflight", "--node-dir", transport.node_dir(pair.node2, steps.phase), "--role", "initiator",
                                    "--peer", "node1", "--bindings", json.dumps(pair.bindings(pair.node2)),
                                    "--iterations", str(pre["iterations"]), *common], 2 * timeout + 90)["preflight"]
    seen = report["transport"]
    return {
        "kind": "nixl-preflight",
        "schema_version": SCHEMA_VERSION,
        "phase": steps.phase,
        "pair": pair.key,
        "nodes": {n.name: {"address": n.address, "instance_id": n.instance_id or None} for n in (pair.node1, pair.node2)},
        "target_node": pair.node1.name,
        "initiator_node": pair.node2.name,
        "pattern_backend": setup.pattern_backend,
        "nixl_backend": setup.nixl_backend,
        "env": setup.env,
        "evidence_env": setup.evidence_env,
        "env_sha256": setup.digest,
        "local_substitute": setup.local_substitute,
        "op": report["op"],
        "bytes": report["bytes"],
        "iterations": report["iterations"],
        "warmup": report["warmup"],
        "seconds": report["seconds"],
        "bandwidth": report["bandwidth"],
        "verified": report["verified"],
        "transport": seen["transport"],
        "transports": seen.get("transports", []),
        "emulated": seen["emulated"],
        "devices": seen.get("devices", []),
        "evidence": seen["evidence"],
        "evidence_source": seen["source"],
        "efa_verified": efa_verified(seen) if setup.pattern_backend == "efa" else None,
        "versions": report.get("versions"),
        "target_ready_after_s": target.get("ready_after_s"),
        "snakemake_run_id": sm_run,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "measured_by": {"pattern": pattern.id, "run_id": run_id,
                        "logs": [str(logs / "node1" / "logs" / "preflight-target.log"), str(logs / "node2" / "logs" / "preflight-initiator.log")]},
        "marker_path": str(path),
    }


def before_servers(steps: StepRunner, cfg: dict[str, Any], pattern: Pattern, layout: PhaseLayout, pair: NodePair,
                   run_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Measure or reuse the pair's preflight after fetch; (marker, step report), or None when off.

    The marker is copied into the result as provenance.preflight; raises StepFailed at step
    "preflight" on a judged failure.
    """
    if pattern.backend not in PREFLIGHT_BACKENDS or not cfg["preflight"]["enabled"]:
        return None
    setup = setup_for(cfg, pattern.backend)
    path = marker_path(layout.root, pair, pattern.backend)
    sm_run = snakemake_run_id()
    with _locked(path):
        marker = _load(path)
        reused = reusable(marker, sm_run, setup.digest)
        if not reused:
            steps.log(f"NIXL preflight node1 -> node2 ({setup.nixl_backend}, {json.dumps(setup.env, sort_keys=True)})")
            marker = _measure(steps, cfg, pattern, layout.logs(pattern.id), pair, setup, run_id, sm_run, path)
            atomic_write_json(path, marker)
    assert marker is not None
    report = {"marker": str(path), "reused": reused, "transport": marker["transport"], "bandwidth": marker["bandwidth"]}
    steps.log(f"NIXL preflight {'reused' if reused else 'measured'}: {marker['transport']}"
              f"{' (emulated)' if marker['emulated'] else ''} at {marker['bandwidth']['mean']} GB/s, evidence {marker['evidence'][:1]}")
    required = require_efa(cfg)
    refused = judge(marker, pattern.backend, required)
    if refused:
        raise StepFailed("preflight", marker["initiator_node"], refused)
    if pattern.backend == "efa" and not marker["efa_verified"]:
        steps.log(f"WARNING: efa pattern without verified EFA (efa_verified: false, require_efa: {required}): {marker['evidence'][:1]}")
    return marker, report
