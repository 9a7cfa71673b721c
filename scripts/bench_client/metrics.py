"""The metrics of a run, computed from request outcomes alone.

Pure (no I/O, no clock) so that every definition can be checked against
outcomes built by hand; the definitions are vLLM's (docs/node-programs.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .model import RequestOutcome


def percentile_key(p: float) -> str:
    """vLLM's naming: p99 for 99.0, p99.9 for 99.9."""
    return str(int(p)) if int(p) == p else str(p)


def _stats(prefix: str, values_s: list[float], percentiles: Sequence[float]) -> dict[str, float]:
    """mean/median/std/min/max/pNN in ms; empty -> 0.0 as vLLM's ``x or 0``."""
    arr = np.asarray(values_s if values_s else [0.0], dtype=float) * 1000.0
    out = {
        f"mean_{prefix}_ms": float(np.mean(arr)),
        f"median_{prefix}_ms": float(np.median(arr)),
        f"std_{prefix}_ms": float(np.std(arr)),
        f"min_{prefix}_ms": float(np.min(arr)),
        f"max_{prefix}_ms": float(np.max(arr)),
    }
    for p in percentiles:
        out[f"p{percentile_key(p)}_{prefix}_ms"] = float(np.percentile(arr, p))
    return out


def _peak_buckets(successful: list[RequestOutcome]) -> tuple[float, int]:
    """vLLM's per-second buckets: (max output events/s, max concurrent/s)."""
    if not successful:
        return 0.0, 0
    t0 = min(o.start_time for o in successful)
    t_end = max(o.start_time + o.latency for o in successful)
    n = int(np.ceil(t_end - t0)) + 1
    tokens = np.zeros(n)
    concurrent = np.zeros(n)
    for o in successful:
        t = o.start_time + o.ttft
        times = [t]
        for gap in o.itl:
            t += gap
            times.append(t)
        for tt in times:
            b = int(tt - t0)
            if 0 <= b < n:
                tokens[b] += 1
        first = int(o.start_time - t0)
        last = int(o.start_time + o.latency - t0)
        for sec in range(first, min(last + 1, n)):
            concurrent[sec] += 1
    return float(np.max(tokens)), int(np.max(concurrent))


GOODPUT_METRICS = ("ttft", "tpot", "e2el")


def slo_met(o: RequestOutcome, goodput_slo_ms: dict[str, float] | None) -> bool | None:
    """Whether one request meets every given SLO (vLLM's goodput rule).

    None without SLO and for failed requests (vLLM judges completed requests
    only). Compared in seconds as vLLM does: ``threshold_ms / 1000 >= value``,
    with TPOT 0 for requests with at most one output token.
    """
    if not goodput_slo_ms or not o.success:
        return None
    values = {"ttft": o.ttft, "tpot": o.tpot_for_goodput, "e2el": o.latency}
    return all(goodput_slo_ms[k] / 1000.0 >= values[k] for k in GOODPUT_METRICS if k in goodput_slo_ms)


def achieved_load(outcomes: Sequence[RequestOutcome], duration_s: float, phase_start: float | None) -> dict[str, Any]:
    """Achieved rate and concurrency of the measured requests (pure).

    See docs/node-programs.md for the definitions. Every dispatched request
    counts, failed ones included: they were sent and were in flight.
    """
    if not outcomes:
        return {
            "achieved_request_rate": None,
            "dispatch_window_s": 0.0,
            "achieved_concurrency_mean": 0.0,
            "achieved_concurrency_max": 0,
        }
    if phase_start is None:
        phase_start = min(min(o.start_time, o.start_time - o.client_queue_time) for o in outcomes)
    scheduled = any(o.scheduled_time is not None for o in outcomes)
    window = max(o.start_time for o in outcomes) - phase_start if scheduled else duration_s
    busy = sum(max(0.0, o.in_flight_end - o.start_time) for o in outcomes)
    # Ends sort before starts at the same instant: a slot handed over from
    # one request to the next is not counted as two requests in flight.
    events = sorted([(o.start_time, 1) for o in outcomes] + [(max(o.in_flight_end, o.start_time), -1) for o in outcomes])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return {
        "achieved_request_rate": len(outcomes) / window if window > 0 else None,
        "dispatch_window_s": window,
        "achieved_concurrency_mean": busy / duration_s if duration_s > 0 else 0.0,
        "achieved_concurrency_max": peak,
    }


def calculate_metrics(
    outcomes: Sequence[RequestOutcome],
    duration_s: float,
    percentiles: Sequence[float],
    goodput_slo_ms: dict[str, float] | None = None,
    phase_start: float | None = None,
) -> dict[str, Any]:
    """Turn measured outcomes into vLLM's saved metric keys and ours (pure).

    Only successful requests contribute to token totals and latency lists,
    exactly as ``vllm bench serve``; failed ones are only counted (and count
    as dispatched and in flight for the achieved load). ``phase_start`` is the
    ``perf_counter`` time the measured phase began (default: the earliest
    scheduled or dispatch time).
    """
    ok = [o for o in outcomes if o.success]
    ttfts = [o.ttft for o in ok]
    e2els = [o.latency for o in ok]
    tpots = [t for t in (o.tpot for o in ok) if t is not None]
    itls = [gap for o in ok for gap in o.itl]
    queue = [o.client_queue_time for o in ok]
    send = [o.client_send_delay for o in ok]
    client_wait = [q + d for q, d in zip(queue, send)]
    total_input = sum(o.effective_prompt_tokens for o in ok)
    total_output = sum(o.output_tokens for o in ok)
    max_tok_s, max_conc = _peak_buckets(ok)

    def per_s(x: float) -> float:
        return x / duration_s if duration_s > 0 else 0.0

    good: int | None = None
    if goodput_slo_ms:
        good = sum(1 for o in ok if slo_met(o, goodput_slo_ms))

    metrics: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(outcomes) - len(ok),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": per_s(len(ok)),
        "request_goodput": None if good is None else per_s(good),  # vLLM: null unless --goodput
        "output_throughput": per_s(total_output),
        "total_token_throughput": per_s(total_input + total_output),
        "max_output_tokens_per_s": max_tok_s,
        "max_concurrent_requests": max_conc,
        "good_requests": good,
        "slo_attainment_pct": None if good is None or not ok else 100.0 * good / len(ok),
        "goodput_slo_ms": dict(goodput_slo_ms) if goodput_slo_ms else None,
    }
    metrics.update(achieved_load(outcomes, duration_s, phase_start))
    for name, values in (
        ("ttft", ttfts),
        ("tpot", tpots),
        ("itl", itls),
        ("e2el", e2els),
        ("client_queue_time", queue),
        ("client_send_delay", send),
        ("ttft_including_client_queue", [w + t for w, t in zip(client_wait, ttfts)]),
        ("e2el_including_client_queue", [w + e for w, e in zip(client_wait, e2els)]),
    ):
        metrics.update(_stats(name, values, percentiles))
    return metrics
