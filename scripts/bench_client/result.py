"""The result JSON: vLLM's ``--save-result`` keys first, then ours.

vLLM's keys keep their names and meaning, so that what reads a result of
``vllm bench serve`` reads ours too.
"""

from __future__ import annotations

import math
import platform
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiohttp
import numpy as np

from .metrics import calculate_metrics, slo_met
from .model import CLIENT_NAME, BenchConfig, RequestOutcome, RunOutput


def _error_counts(outcomes: Sequence[RequestOutcome]) -> list[dict[str, Any]]:
    counts = Counter(o.error for o in outcomes if not o.success)
    return [{"error": text, "count": n} for text, n in counts.most_common()]


def _ms(x: float) -> float:
    return round(x * 1000.0, 3)


def _json_float(x: float) -> float | str:
    """A float for JSON; "inf" as a string (JSON has no infinity), as vLLM."""
    return x if math.isfinite(x) else "inf"


def request_record(
    o: RequestOutcome,
    benchmark_start: float,
    max_tokens: int,
    goodput_slo_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Per-request JSON record (ms); latency fields are null for failures.

    Offsets are seconds from the start of the measured phase:
    ``scheduled_offset_s`` (when the request was due; equal to the dispatch
    without a schedule), ``dispatch_offset_s`` (``st``; also kept under its
    old name ``start_offset_s``) and ``end_offset_s`` (request function
    returned).
    """
    tpot = o.tpot
    queue = o.client_queue_time + o.client_send_delay  # everything the client added before the wire
    scheduled = o.start_time if o.scheduled_time is None else o.scheduled_time
    return {
        "index": o.index,
        "warmup": o.warmup,
        "x_request_id": o.request_id,
        "start_offset_s": round(o.start_time - benchmark_start, 6),
        "scheduled_offset_s": round(scheduled - benchmark_start, 6),
        "dispatch_offset_s": round(o.start_time - benchmark_start, 6),
        "end_offset_s": round(o.in_flight_end - benchmark_start, 6),
        "success": o.success,
        "error": o.error,
        "http_status": o.http_status,
        "prompt_tokens": o.effective_prompt_tokens,
        "prompt_tokens_reported": o.prompt_tokens_reported,
        "output_tokens": o.output_tokens if o.success else 0,
        "output_tokens_from_usage": o.output_tokens_from_usage,
        "output_tokens_mismatch": o.success and o.output_tokens != max_tokens,
        "content_chunks": o.content_chunks,
        "ttft_ms": _ms(o.ttft) if o.success else None,
        "itl_ms": [_ms(g) for g in o.itl] if o.success else [],
        "e2el_ms": _ms(o.latency) if o.success else None,
        "tpot_ms": _ms(tpot) if tpot is not None else None,
        "client_queue_time_ms": _ms(o.client_queue_time),
        "client_send_delay_ms": _ms(o.client_send_delay),
        "ttft_including_client_queue_ms": _ms(queue + o.ttft) if o.success else None,
        "e2el_including_client_queue_ms": _ms(queue + o.latency) if o.success else None,
        "slo_met": slo_met(o, goodput_slo_ms),
    }


def build_result(cfg: BenchConfig, run: RunOutput, date: str | None = None) -> dict[str, Any]:
    """Result JSON: vLLM's --save-result keys first, then ours."""
    metrics = calculate_metrics(run.measured, run.duration_s, cfg.percentiles, cfg.goodput_slo_ms, run.benchmark_start)
    records = [request_record(o, run.benchmark_start, cfg.max_tokens, cfg.goodput_slo_ms) for o in run.measured]
    result: dict[str, Any] = {
        "date": date or datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": cfg.endpoint_type,
        "backend": "vllm",
        "label": cfg.label,
        "model_id": cfg.model,
        "num_prompts": cfg.num_requests,
        "request_rate": _json_float(cfg.request_rate),
        "burstiness": _json_float(cfg.burstiness),
        "max_concurrency": cfg.max_concurrency,
    }
    result.update(metrics)
    result.update(
        {
            "measurement_type": cfg.measurement_type,
            "load_mode": cfg.load_mode,
            "concurrency": cfg.concurrency,
            "requested_concurrency": cfg.requested_concurrency,
            "warmup_concurrency": cfg.warmup_concurrency,
            "arrival_schedule": (
                {"distribution": "gamma" if math.isfinite(cfg.burstiness) else "fixed", "rescaled_to_n_over_rate": True}
                if cfg.load_mode == "open_loop"
                else None
            ),
            "prompt_tokens": cfg.prompt_tokens,
            "prompt_tokens_exact": not cfg.is_chat,
            "max_tokens": cfg.max_tokens,
            "warmup_requests": len(run.warmup),
            "warmup_failed": sum(1 for o in run.warmup if not o.success),
            "seed": cfg.seed,
            "token_id_range": [cfg.token_id_low, cfg.token_id_high],
            "percentiles": list(cfg.percentiles),
            "base_url": cfg.base_url,
            "endpoint": cfg.endpoint,
            "request_timeout_s": cfg.request_timeout,
            "errors": _error_counts(run.measured),
            "warmup_errors": _error_counts(run.warmup),
            "output_tokens_mismatch": sum(1 for r in records if r["output_tokens_mismatch"]),
            "output_tokens_fallback": sum(1 for o in run.measured if o.success and not o.output_tokens_from_usage),
            "requests": records,
            "client": {
                "name": CLIENT_NAME,
                "python": platform.python_version(),
                "aiohttp": aiohttp.__version__,
                "numpy": np.__version__,
            },
        }
    )
    return result
