"""Result and failure records: what a finished (or failed) pattern leaves in results/.

The result reads like llm-d's benchmark report: a standardized description of what ran
(roles, model, parallelism, load) apart from the native details (argv, env, hashes), and
the `vllm bench serve --save-result` keys at top level so existing tooling reads it.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from disagglab import __version__

from disagglab.plan import local_vllm
from disagglab.errors import StepFailed
from disagglab.hashing import atomic_write_json, sha256_file
from disagglab.tasks.nodefiles import files_for_pattern, node_file_digests
from disagglab.paths import ROOT

if TYPE_CHECKING:
    from disagglab.run.fleet import NodePair
    from disagglab.run.trial import PatternRun

SCHEMA_VERSION = 1


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
    required = backend in ("tcp", "efa")
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


def build_result(run: PatternRun, pair: NodePair, task_sha: dict[str, str], run_id: str, started: float, finished: float,
                 collected: dict[str, dict[str, Path]], step_reports: dict[str, Any]) -> dict[str, Any]:
    bench_node = "node2" if run.pattern.disaggregated else "node1"
    node_result_path = collected.get(bench_node, {}).get("node-result.json")
    if node_result_path is None:
        raise StepFailed("collect", bench_node, "the node result did not come back through the store")
    node_result = json.loads(node_result_path.read_text())
    bench = dict(node_result["benchmark"])
    requests = bench.pop("requests", [])
    completed = int(bench.get("completed", 0))
    evidence = kv_evidence(run.pattern.backend, node_result.get("metrics"), completed)
    spec = run.pattern.spec
    infra = local_vllm.effective_spec(run.cfg, spec)["infrastructure"]
    engine = run.cfg["engine"]
    digests = files_for_pattern(run.pattern, engine, node_file_digests())
    reasons = [] if evidence["valid"] else [evidence["reason"]]
    roles = {role: {"node": "node1" if role in ("unified", "producer") else "node2"} for role in run.pattern.roles}
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "phase": run.phase,
        "layer": run.pattern.layer,
        "pattern_id": run.pattern.id,
        "trial": run.trial,
        "engine": engine,
        "simulated": engine == "sim",
        "validity": {"valid": not reasons, "reasons": reasons},
        "description": {
            "backend": run.pattern.backend,
            "model": infra["model"],
            "instance_type": infra["instance_type"],
            "vllm_version": infra["vllm_version"],
            "tensor_parallel_size": infra["tp_size"],
            "roles": roles,
            "gpus_used": infra["tp_size"] * len(run.pattern.roles),
            "load": {"measurement_type": spec["measurement_type"], "concurrency": spec["concurrency"],
                     "prompt_tokens": spec["prompt_tokens"], "max_tokens": spec["max_tokens"],
                     "warmup_requests": spec["warmup_iterations"], "measured_requests": spec["measurement_iterations"]},
        },
        "spec": spec,
        **bench,
        "kv_transfer": evidence,
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "provenance": {
            "run_id": run_id,
            "executor": run.cfg["executor"],
            "storage": run.cfg["storage"],
            "task_sha256": task_sha,
            "node_files_sha256": digests,
            "nodes": {n.name: n.address for n in (pair.node1, pair.node2)},
            "ports": pair.ports,
            "control": {"package": "disagglab", "version": __version__, "git_revision": git_revision()},
            "steps": step_reports,
            "bench_started_at": _iso(node_result.get("bench_started_at")),
            "bench_finished_at": _iso(node_result.get("bench_finished_at")),
            "logs": {node: sorted(files) for node, files in collected.items()},
            "kv_metrics": node_result.get("metrics"),
            "local_vllm": local_vllm.provenance(run.cfg, spec["infrastructure"]["model"]),
            "preflight": getattr(run, "preflight", None),
        },
        "requests": requests,
    }
    return result


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def write_result(path: Path, result: dict[str, Any]) -> None:
    atomic_write_json(path, result)


def failure_record(run: PatternRun, error: BaseException, started: float, finished: float, run_id: str,
                   collected: dict[str, dict[str, Path]]) -> dict[str, Any]:
    if isinstance(error, StepFailed):
        step, node, cause, status, tail = error.step, error.node, error.cause, error.exit_status, error.log_tail
    elif type(error).__name__ == "Interrupted":
        step, node = run.current
        cause, status, tail = f"interrupted by {error} during step '{step}' on {node}", None, []
    else:  # an API or control-side error: say which step and node it interrupted
        step, node = run.current
        cause, status, tail = f"{type(error).__name__}: {error}", None, []
    return {
        "schema_version": SCHEMA_VERSION,
        "phase": run.phase,
        "layer": run.pattern.layer,
        "pattern_id": run.pattern.id,
        "trial": run.trial,
        "repeats": run.pattern.repeats,
        "engine": run.cfg["engine"],
        "step": step,
        "node": node,
        "cause": cause,
        "exit_status": status,
        "log_tail": tail,
        "message": f"{run.pattern.id}{_trial_label(run)}: step '{step}' on {node} failed: {cause}",
        "run_id": run_id,
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "logs": {n: sorted(str(p) for p in files.values()) for n, files in collected.items()},
    }


def _trial_label(run: PatternRun) -> str:
    return f" (trial {run.trial} of {run.pattern.repeats})" if run.pattern.repeats > 1 else ""


def write_failure(path: Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, record)


def layer_marker(phase: str, layer: str, result_paths: dict[str, Path]) -> dict[str, Any]:
    patterns = {}
    for pid, path in result_paths.items():
        doc = json.loads(path.read_text())
        patterns[pid] = {"result": str(path), "sha256": sha256_file(path), "valid": doc["validity"]["valid"], "engine": doc["engine"]}
    return {"phase": phase, "layer": layer, "patterns": patterns,
            "invalid": sorted(p for p, v in patterns.items() if not v["valid"])}


# ---------------------------------------------------------------------------- reading results
# A result file on disk can be damaged (a full disk, a bad copy, a hand edit). Everything that
# reads results (status, summary, report, MLflow, compare, the rerun check) reads them here, so
# a damaged file is reported the same way everywhere (file + what is wrong) and skipped.
REQUIRED_RESULT_KEYS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "pattern_id": (str,), "validity": (dict,), "spec": (dict,), "description": (dict,),
    "completed": (int,), "failed": (int,), "median_ttft_ms": (int, float), "median_tpot_ms": (int, float),
}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", dict: "an object"}


class CorruptResult(ValueError):
    """A result file that cannot be used; the message names the file and what is wrong."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def read_result(path: Path, pattern_id: str | None = None) -> dict[str, Any]:
    """The result at `path`, or CorruptResult saying why it cannot be used."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CorruptResult(path, f"cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptResult(path, f"not UTF-8 text ({len(raw)} bytes of binary data)") from None
    if not text.strip():
        raise CorruptResult(path, "empty file")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = " (truncated?)" if exc.pos >= len(text.rstrip()) else ""
        raise CorruptResult(path, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}{cut}") from None
    if not isinstance(doc, dict):
        raise CorruptResult(path, f"expected a JSON object, got {_kind(doc)}")
    for key, types in REQUIRED_RESULT_KEYS.items():
        if key not in doc:
            raise CorruptResult(path, f"missing key {key!r}")
        value = doc[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise CorruptResult(path, f"key {key!r} should be {_TYPE_NAMES[types[-1]]}, got {_kind(value)} {json.dumps(value)[:40]}")
    if not isinstance(doc["validity"].get("valid"), bool):
        raise CorruptResult(path, "key 'validity.valid' should be a boolean")
    if pattern_id is not None and doc["pattern_id"] != pattern_id:
        raise CorruptResult(path, f"holds pattern {doc['pattern_id']!r}, not {pattern_id!r}")
    return doc


def quarantined(results_dir: Path, pattern_id: str) -> Path:
    """Where a corrupt result of the pattern is kept once moved aside (workflow.quarantine_corrupt_results)."""
    return Path(results_dir) / "corrupt" / f"{pattern_id}.json"


def result_problem(path: Path, pattern_id: str | None = None) -> str | None:
    """Why an existing result file cannot be used, or None (also None when there is no file)."""
    if not Path(path).exists():
        return None
    try:
        read_result(path, pattern_id)
    except CorruptResult as exc:
        return exc.reason
    return None
