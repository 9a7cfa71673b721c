"""One row per planned pattern: its effective parameters, where it stands, and its numbers.

The rows are the single table every report view reads (summary.csv, the HTML and Markdown
reports, the plots), so a number shown anywhere comes from one place. Rows follow the plan,
not the results folder: a pattern that never ran, or failed, is a row too, because "what is
still missing" is part of the answer. A result file that cannot be read is a row that says
so and names the file; it never stops the report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from disagglab.paths import PhaseLayout
from disagglab.plan.model import Pattern, Plan
from disagglab.plan.topology import gpus_used, server_count, topology_label
from disagglab.report.workloads import slo_text, workload_name
from disagglab.results.fold import summarize
from disagglab.results.read import latest_acceptance_note
from disagglab.results.status import pattern_state

# Effective parameters, from the plan (the plan is what the report is about).
PARAM_COLUMNS = (
    "layer", "pattern_id", "backend", "topology", "servers", "prompt_tokens", "concurrency", "max_tokens", "measurement_type", "request_rate",
    "prefix_cache", "gpu_memory_utilization", "max_num_batched_tokens", "max_model_len", "tp_size", "model",
)
STATE_COLUMNS = (
    "status", "detail", "failure_step", "failure_node", "failure_cause", "validity", "validity_reason", "stale",
    "engine", "simulated", "result_file", "accepted",
)
# The NIXL preflight of the result's node pair (provenance.preflight): what the KV path was measured as.
PREFLIGHT_COLUMNS = ("preflight_transport", "preflight_bandwidth_gb_s", "efa_verified")
PER_GPU_COLUMNS = ("gpus_used", "output_throughput_per_gpu", "total_token_throughput_per_gpu", "request_throughput_per_gpu")
# The answer section's columns (report/answer.py), after every other column: summary.csv readers that
# index columns by position keep working. Cost and recommendation are filled in by answer.annotate.
ANSWER_COLUMNS = (
    "workload", "slo", "request_goodput_ci_low", "request_goodput_ci_high", "request_goodput_per_gpu",
    "request_goodput_per_gpu_ci_low", "request_goodput_per_gpu_ci_high", "cost_usd_per_m_output_tokens", "recommended",
    "recommendation_rank",
)
# A workload's prefix cache (results/prefix_cache.py): what an ideal cache would hit, what the servers
# counted, and whether the gap was flagged. Last of all, for the same reason.
PREFIX_CACHE_COLUMNS = ("prefix_hit_rate_expected", "prefix_hit_rate_measured", "prefix_hit_gap_flagged")
# Result keys the fold gives no interval (it folds HEADLINE_METRICS only): the report takes theirs from the
# per-trial numbers the fold keeps in `trials[].metrics`, so the fold's output never has to change.
TRIAL_INTERVAL_METRICS = ("request_goodput",)
PER_GPU_METRICS = ("output_throughput", "total_token_throughput", "request_throughput", "request_goodput")
# Top-level numbers of a result that describe the load or the client, not the measurement.
NOT_METRICS = frozenset({
    "schema_version", "seed", "concurrency", "max_concurrency", "requested_concurrency", "prompt_tokens", "max_tokens",
    "num_prompts", "warmup_requests", "warmup_concurrency", "burstiness", "request_rate", "request_timeout_s",
    "arrival_schedule", "goodput_slo_ms",
})
# vLLM's own order first, so the CSV reads like `vllm bench serve` output.
HEAD_METRICS = ("completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
                "request_goodput", "slo_attainment_pct")
LATENCIES = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "std", "min", "max")
_STAT_RE = re.compile(r"^(mean|median|std|min|max|p(\d+(?:\.\d+)?))_(ttft|tpot|itl|e2el)_ms$")

Row = dict[str, Any]


def number(value: Any) -> float | None:
    """A finite-or-inf number as float; None for null, text, booleans and NaN (never plotted or compared)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _is_metric_value(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def metric_keys(result: dict[str, Any]) -> list[str]:
    """The scalar measurement keys of one result (numbers, or null when not applicable)."""
    return [k for k, v in result.items() if k not in NOT_METRICS and _is_metric_value(v)]


def metric_sort_key(key: str) -> tuple[int, int, float, str]:
    """vLLM's head keys, then ttft/tpot/itl/e2el each as mean, median, std, min, max, pNN; then the rest by name."""
    if key in HEAD_METRICS:
        return (0, HEAD_METRICS.index(key), 0.0, key)
    m = _STAT_RE.match(key)
    if m:
        stat, pct, lat = m.group(1), m.group(2), m.group(3)
        order = STATS.index(stat) if pct is None else len(STATS)
        return (1, LATENCIES.index(lat), order + (float(pct) / 1000 if pct else 0.0), key)
    return (2, 0, 0.0, key)


def _params(pattern: Pattern) -> Row:
    spec = pattern.spec
    infra = spec["infrastructure"]
    return {
        "layer": pattern.layer, "pattern_id": pattern.id, "backend": pattern.backend,
        "topology": topology_label(spec, pattern.roles), "servers": server_count(spec, pattern.roles),
        "prompt_tokens": spec["prompt_tokens"], "concurrency": spec["concurrency"], "max_tokens": spec["max_tokens"],
        "measurement_type": spec["measurement_type"], "request_rate": spec.get("request_rate"),
        "prefix_cache": spec["prefix_cache"], "gpu_memory_utilization": spec["gpu_memory_utilization"],
        "max_num_batched_tokens": spec["max_num_batched_tokens"], "max_model_len": spec["max_model_len"],
        "tp_size": infra["tp_size"], "model": infra["model"],
        "workload": workload_name(spec["prompt_tokens"], spec["max_tokens"], spec.get("workload")), "slo": slo_text(spec.get("slo")),
    }


def _stale_keys(planned: dict[str, Any], ran: Any) -> list[str]:
    """Effective parameters whose value in the result differs from the plan (the plan changed after the run)."""
    if not isinstance(ran, dict):
        return []
    keys = ("prompt_tokens", "concurrency", "max_tokens", "measurement_type", "request_rate", "prefix_cache",
            "gpu_memory_utilization", "max_num_batched_tokens", "max_model_len")
    return [k for k in keys if k in ran and ran[k] != planned.get(k)]


def _per_gpu(row: Row) -> None:
    gpus = row.get("gpus_used")
    for metric in PER_GPU_METRICS:
        value = row.get(metric)
        ok = isinstance(gpus, int) and gpus > 0 and _is_metric_value(value) and value is not None
        row[f"{metric}_per_gpu"] = value / gpus if ok else None
        ci = interval(row, metric)
        if ok and ci is not None:
            row[f"{metric}_per_gpu_ci_low"], row[f"{metric}_per_gpu_ci_high"] = ci[0] / gpus, ci[1] / gpus


def _from_result(row: Row, pattern: Pattern, path: Path, result: dict[str, Any]) -> None:
    row["result_file"] = str(path)
    row["engine"] = result.get("engine")
    row["simulated"] = bool(result.get("simulated")) or result.get("engine") == "sim"
    validity = result.get("validity") or {}
    kv = result.get("kv_transfer") or {}
    if validity.get("valid", False):
        row["validity"], row["validity_reason"] = "valid", kv.get("reason", "")
    else:
        reasons = list(validity.get("reasons") or [])
        if kv.get("valid") is False and kv.get("reason") and kv["reason"] not in reasons:
            reasons.append(kv["reason"])
        row["validity"], row["validity_reason"] = "invalid", "; ".join(reasons) or "result marked invalid"
    stale = _stale_keys(pattern.spec, result.get("spec"))
    row["stale"] = ", ".join(f"{k}: ran {result['spec'][k]!r}, plan {pattern.spec.get(k)!r}" for k in stale)
    row["gpus_used"] = (result.get("description") or {}).get("gpus_used", row["gpus_used"])
    for key in metric_keys(result):
        row[key] = result[key]
    row["repeats"] = result.get("repeats", 1)
    row["accepted"] = latest_acceptance_note(result)  # measured under older digests, accepted as current
    for key, st in (result.get("stats") or {}).items():
        if isinstance(st, dict) and number(st.get("ci_low")) is not None and number(st.get("ci_high")) is not None:
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = float(st["ci_low"]), float(st["ci_high"])
    _trial_intervals(row, result)
    ran = result.get("spec")
    if isinstance(ran, dict) and "slo" in ran:  # goodput was counted against the SLO the result ran with
        row["slo"] = slo_text(ran["slo"])
    cache = (result.get("workload") or {}).get("prefix_cache") if isinstance(result.get("workload"), dict) else None
    if isinstance(cache, dict):
        row["prefix_hit_rate_expected"], row["prefix_hit_rate_measured"] = cache.get("expected_hit_rate"), cache.get("measured_hit_rate")
        row["prefix_hit_gap_flagged"] = cache.get("flagged")
    preflight = (result.get("provenance") or {}).get("preflight")
    if isinstance(preflight, dict):
        row["preflight_transport"] = f"{preflight.get('transport')}{' (emulated)' if preflight.get('emulated') else ''}: " + ", ".join(preflight.get("devices") or [])
        row["preflight_bandwidth_gb_s"] = (preflight.get("bandwidth") or {}).get("mean")
        row["efa_verified"] = preflight.get("efa_verified")


def _trial_intervals(row: Row, result: dict[str, Any]) -> None:
    """95% intervals of TRIAL_INTERVAL_METRICS from each trial's number, when every trial has one (n >= 2)."""
    trials = [t.get("metrics") for t in result.get("trials") or [] if isinstance(t, dict)]
    for key in TRIAL_INTERVAL_METRICS:
        if interval(row, key) is not None:
            continue  # a fold that one day folds it itself wins
        values = [number(m.get(key)) if isinstance(m, dict) else None for m in trials]
        if len(values) >= 2 and all(v is not None for v in values):
            st = summarize([float(v) for v in values if v is not None])
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = st["ci_low"], st["ci_high"]


def interval(row: Row, metric: str) -> tuple[float, float] | None:
    """The 95% t-interval of a metric's mean over repeated trials; None for a single trial."""
    lo, hi = number(row.get(f"{metric}_ci_low")), number(row.get(f"{metric}_ci_high"))
    return (lo, hi) if lo is not None and hi is not None else None


def _from_failure(row: Row, path: Path) -> None:
    """Step, node and cause of a failure; an unreadable record keeps the row, its detail names the file."""
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise TypeError(f"expected a JSON object, got {type(record).__name__}")
    except (ValueError, TypeError) as exc:
        row["failure_cause"] = f"{path}: unreadable failure record ({type(exc).__name__}: {exc})"
        row["result_file"] = str(path)
        return
    row["failure_step"], row["failure_node"], row["failure_cause"] = record.get("step"), record.get("node"), record.get("cause")
    row["engine"] = record.get("engine")
    row["simulated"] = record.get("engine") == "sim"


def pattern_row(pattern: Pattern, results_dir: Path) -> Row:
    """The row of one pattern. Never raises for a broken file: the row says what is wrong and where."""
    row: Row = dict.fromkeys((*STATE_COLUMNS, *PREFLIGHT_COLUMNS, *PER_GPU_COLUMNS, *ANSWER_COLUMNS, *PREFIX_CACHE_COLUMNS))
    row.update(_params(pattern))
    row["gpus_used"] = gpus_used(pattern.spec, pattern.roles)
    result_path, failure_path = PhaseLayout(results_dir).result(pattern.id), PhaseLayout(results_dir).failure(pattern.id)
    try:
        state, detail = pattern_state(results_dir, pattern.id)
    except (ValueError, KeyError, TypeError) as exc:
        broken = result_path if result_path.exists() else failure_path
        state, detail = "corrupt", f"{broken}: unreadable ({type(exc).__name__}: {exc})"
    row["status"], row["detail"] = {"pending": "missing"}.get(state, state), detail
    if state == "pending":
        row["detail"] = "no result and no failure record: not run yet"
    elif state == "corrupt":
        moved = PhaseLayout(results_dir).corrupt_result(pattern.id)
        row["result_file"] = str(result_path if result_path.exists() else moved if moved.exists() else failure_path)
    elif state == "done":
        _from_result(row, pattern, result_path, json.loads(result_path.read_text()))
    elif state == "failed":
        _from_failure(row, failure_path)
    _per_gpu(row)
    return row


def comparable(row: Row) -> bool:
    """A result the comparisons and plots may use: measured, valid, and measured with the plan's parameters."""
    return row["status"] == "done" and row["validity"] == "valid" and not row.get("stale")


def variant(row: Row) -> str:
    """What else sets a pattern apart from its backend ('' for the plain online run without prefix cache).

    Lines are drawn per backend and variant, so a prefix-cache or offline run never joins the
    plain run's line. Batched-token budget and max_model_len are not variants: plans raise them
    with the prompt length, and a TTFT-vs-length line must run through those points.
    """
    bits = []
    if row.get("measurement_type") and row["measurement_type"] != "online":
        bits.append(str(row["measurement_type"]))
    if row.get("prefix_cache"):
        bits.append("prefix cache")
    return ", ".join(bits)


def collect_rows(plan: Plan, results_dir: Path) -> list[Row]:
    """One row per pattern of the plan, in plan order (layer by layer)."""
    return [pattern_row(plan.pattern(pid), Path(results_dir)) for layer in plan.layers for pid in layer.pattern_ids]


def columns(rows: list[Row]) -> list[str]:
    """Parameters, state, per-GPU numbers, every metric any row has in a stable order, then the answer's columns."""
    fixed = (*PARAM_COLUMNS, *STATE_COLUMNS, *PREFLIGHT_COLUMNS, *PER_GPU_COLUMNS)
    metrics = {k for row in rows for k in row if k not in fixed and k not in ANSWER_COLUMNS and k not in PREFIX_CACHE_COLUMNS}
    return [*fixed, *sorted(metrics, key=metric_sort_key), *ANSWER_COLUMNS, *PREFIX_CACHE_COLUMNS]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def rows_to_csv(rows: list[Row]) -> str:
    """CSV text; empty cells for absent values, so pandas reads them as NaN."""
    cols = columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in cols])
    return buf.getvalue()
