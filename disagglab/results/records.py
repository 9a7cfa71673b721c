"""A trial's result file, and the layer marker: what a finished trial or layer leaves in results/.

The result reads like llm-d's benchmark report: a standardized description of what ran
(roles, model, parallelism, load) apart from the native details (argv, env, hashes), and
the `vllm bench serve --save-result` keys at top level so existing tooling reads it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from disagglab import __version__
from disagglab.plan.model import DISAGGREGATED
from disagglab.errors import Interrupted, StepFailed
from disagglab.hashing import atomic_write_json, sha256_file
from disagglab.paths import ROOT, PhaseLayout
from disagglab.plan import local_vllm
from disagglab.plan.topology import describe, gpus_used
from disagglab.results.failure import SCHEMA_VERSION, iso, trial_failure, write_failure
from disagglab.results.outcome import TrialOutcome
from disagglab.results.prefix_cache import prefix_cache_check
from disagglab.tasks.nodefiles import files_for_pattern, node_file_digests

__all__ = ["SCHEMA_VERSION", "build_result", "git_revision", "instance_kv_evidence", "kv_evidence", "layer_marker", "per_gpu",
           "save_trial", "write_result"]
THROUGHPUTS = ("request_throughput", "output_throughput", "total_token_throughput")


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def kv_evidence(backend: str, metrics: dict[str, Any] | None, completed: int) -> dict[str, Any]:
    """Did KV really move? The decode server's counters across the measurement say so.

    vLLM's NIXL metrics count transfers on the consumer; warmup requests also transfer, so
    the measured delta must be at least the completed requests, with no failed transfer.
    """
    required = backend in DISAGGREGATED
    if metrics is None:
        return {"required": required, "valid": not required, "reason": "no /metrics readings"}
    delta = metrics["delta"]
    transfers = int(delta["transfers"])
    failed = int(delta["failed_transfers"])
    present = set(metrics["before"].get("_present", [])) | set(metrics["after"].get("_present", []))
    evidence = {
        "required": required,
        "source": metrics["source"],
        "server": metrics["server"],
        "transfers": transfers,
        "failed_transfers": failed,
        "completed_requests": completed,
        "metrics_present": sorted(present),
    }
    if not required:
        evidence.update(valid=True, reason="unified: no KV transfer expected")
    elif "transfers" not in present:
        evidence.update(valid=False, reason="the decode server exports no vllm:nixl_xfer_time_seconds_count")
    elif failed > 0:
        evidence.update(valid=False, reason=f"{failed} failed KV transfers during the measurement")
    elif transfers < completed:
        evidence.update(valid=False, reason=f"only {transfers} KV transfers for {completed} completed requests: the decode server re-prefilled locally")
    else:
        evidence.update(valid=True, reason=f"{transfers} KV transfers >= {completed} completed requests, 0 failed")
    return evidence


def instance_kv_evidence(backend: str, readings: list[dict[str, Any]], completed: int) -> dict[str, Any]:
    """Did KV move to every decode instance? Each must show transfers for the requests it served.

    A decode instance's own counters say how many requests it finished (vllm:request_success_total,
    read around the benchmark, so warmup included) and how many KV transfers it pulled; fewer transfers than
    requests means it re-prefilled locally, and an instance that served none shows nothing.
    """
    per = []
    for reading in readings:
        served = int(reading["delta"]["requests_succeeded"])
        ev = kv_evidence(backend, reading, served)
        if served == 0:
            ev.update(valid=False, reason="served no request during the benchmark, so it shows no KV transfer")
        per.append({**ev, "requests": served})
    bad = [f"{e['server']}: {e['reason']}" for e in per if not e["valid"]]
    transfers = sum(e["transfers"] for e in per)
    required = backend in DISAGGREGATED
    total = {"required": required, "servers": [e["server"] for e in per], "transfers": transfers,
             "failed_transfers": sum(e["failed_transfers"] for e in per), "completed_requests": completed,
             "instances": per, "valid": not bad}
    kind = "decode instance" if required else "unified replica"  # replicas: no KV moves, but each must serve
    if bad:
        total["reason"] = kind + " " + f"; {kind} ".join(bad)
    elif required:
        total["reason"] = f"every decode instance pulled KV: {transfers} transfers >= {completed} completed requests, 0 failed"
    else:
        total["reason"] = "unified: no KV transfer expected; requests per replica: " + ", ".join(f"{e['server']} {e['requests']}" for e in per)
    return total


def per_gpu(metrics: dict[str, Any], gpus: int) -> dict[str, Any]:
    """Throughput per GPU of the pattern (every GPU its servers hold, prefill and decode alike)."""
    return {"gpus": gpus, **{f"{k}_per_gpu": metrics[k] / gpus for k in THROUGHPUTS if isinstance(metrics.get(k), int | float) and gpus > 0}}


def _node_result(outcome: TrialOutcome) -> dict[str, Any]:
    bench_node = "node2" if outcome.pattern.disaggregated else "node1"
    path = outcome.collected.get(bench_node, {}).get("node-result.json")
    if path is None:
        raise StepFailed("collect", bench_node, "the node result did not come back through the store")
    return json.loads(path.read_text())


def _description(outcome: TrialOutcome, infra: dict[str, Any]) -> dict[str, Any]:
    pattern, spec = outcome.pattern, outcome.pattern.spec
    return {
        "backend": pattern.backend,
        "model": infra["model"],
        "instance_type": infra["instance_type"],
        "vllm_version": infra["vllm_version"],
        "tensor_parallel_size": infra["tp_size"],
        "roles": _roles(spec, pattern.roles),
        "gpus_used": gpus_used(spec, pattern.roles),
        "load": {"measurement_type": spec["measurement_type"], "concurrency": spec["concurrency"],
                 "prompt_tokens": spec["prompt_tokens"], "max_tokens": spec["max_tokens"],
                 "warmup_requests": spec["warmup_iterations"], "measured_requests": spec["measurement_iterations"]},
    }


def _roles(spec: dict[str, Any], roles: tuple[str, ...]) -> dict[str, Any]:
    """Where each role ran; with a topology also its instances, tp_size and GPUs (absent: today's description)."""
    if "topology" not in spec:
        return {role: {"node": "node1" if role in ("unified", "producer") else "node2"} for role in roles}
    return describe(spec, roles)


def _provenance(outcome: TrialOutcome, node_result: dict[str, Any]) -> dict[str, Any]:
    cfg = outcome.cfg
    return {
        "run_id": outcome.run_id,
        "executor": cfg["executor"],
        "storage": cfg["storage"],
        "task_sha256": outcome.task_sha,
        "node_files_sha256": files_for_pattern(outcome.pattern, cfg["engine"], node_file_digests()),
        "nodes": dict(outcome.nodes),
        "ports": outcome.ports,
        "control": {"package": "disagglab", "version": __version__, "git_revision": git_revision()},
        "steps": outcome.steps,
        "bench_started_at": iso(node_result.get("bench_started_at")),
        "bench_finished_at": iso(node_result.get("bench_finished_at")),
        "logs": {node: sorted(files) for node, files in outcome.collected.items()},
        "kv_metrics": node_result.get("metrics"),
        **({"kv_metrics_per_instance": node_result["instance_metrics"]} if node_result.get("instance_metrics") else {}),
        "local_vllm": local_vllm.provenance(cfg, outcome.pattern.spec["infrastructure"]["model"]),
        "preflight": outcome.preflight,
    }


def build_result(outcome: TrialOutcome) -> dict[str, Any]:
    """The result of a trial that measured (raises StepFailed when the node result is missing)."""
    node_result = _node_result(outcome)
    bench = dict(node_result["benchmark"])
    requests = bench.pop("requests", [])
    completed = int(bench.get("completed", 0))
    if node_result.get("instance_metrics"):  # a topology of several decode servers: evidence per instance
        evidence = instance_kv_evidence(outcome.pattern.backend, node_result["instance_metrics"], completed)
    else:
        evidence = kv_evidence(outcome.pattern.backend, node_result.get("metrics"), completed)
    infra = local_vllm.effective_spec(outcome.cfg, outcome.pattern.spec)["infrastructure"]
    engine = outcome.cfg["engine"]
    reasons = [] if evidence["valid"] else [evidence["reason"]]
    if "workload" in bench:  # only the workload client reports one
        bench["workload"] = {**bench["workload"], "prefix_cache": prefix_cache_check(bench["workload"], bool(outcome.pattern.spec["prefix_cache"]))}
    return {
        "schema_version": SCHEMA_VERSION,
        "phase": outcome.phase,
        "layer": outcome.pattern.layer,
        "pattern_id": outcome.pattern.id,
        "trial": outcome.trial,
        "engine": engine,
        "simulated": engine == "sim",
        "validity": {"valid": not reasons, "reasons": reasons},
        "description": _description(outcome, infra),
        "spec": outcome.pattern.spec,
        **bench,
        "kv_transfer": evidence,
        "per_gpu": per_gpu(bench, gpus_used(outcome.pattern.spec, outcome.pattern.roles)),
        "started_at": iso(outcome.started),
        "finished_at": iso(outcome.finished),
        "provenance": _provenance(outcome, node_result),
        "requests": requests,
    }


def write_result(path: Path, result: dict[str, Any]) -> None:
    atomic_write_json(path, result)


def save_trial(outcome: TrialOutcome, layout: PhaseLayout, log: Callable[[str], None]) -> Path:
    """Write the trial's result, or its failure record and raise (KeyboardInterrupt for an interrupt).

    A result replaces the pattern's failure record and any damaged copy set aside earlier.
    """
    pid = outcome.pattern.id
    result: dict[str, Any] | None = None
    if outcome.error is None:
        try:
            result = build_result(outcome)
        except Exception as exc:  # noqa: BLE001 - e.g. the node result never came back
            outcome.error = exc if isinstance(exc, StepFailed) else StepFailed("collect", "control", f"{type(exc).__name__}: {exc}")
    if outcome.error is not None:
        record = trial_failure(outcome)
        write_failure(layout.failure(pid), record)
        log(f"FAILED: {record['message']}")
        if isinstance(outcome.error, Interrupted):
            raise KeyboardInterrupt(str(outcome.error))
        raise SystemExit(1)
    assert result is not None
    output = layout.trial(pid, outcome.trial)
    write_result(output, result)
    layout.failure(pid).unlink(missing_ok=True)
    layout.corrupt_trial(pid, outcome.trial).unlink(missing_ok=True)  # a damaged copy, now replaced
    log(f"done: {result['completed']} requests, valid={result['validity']['valid']}"
        + ("" if result["validity"]["valid"] else f"; the result is marked INVALID: {'; '.join(result['validity']['reasons'])}"))
    return output


def layer_marker(phase: str, layer: str, result_paths: dict[str, Path]) -> dict[str, Any]:
    patterns = {}
    for pid, path in result_paths.items():
        doc = json.loads(path.read_text())
        patterns[pid] = {"result": str(path), "sha256": sha256_file(path), "valid": doc["validity"]["valid"], "engine": doc["engine"]}
    return {"phase": phase, "layer": layer, "patterns": patterns,
            "invalid": sorted(p for p, v in patterns.items() if not v["valid"])}
