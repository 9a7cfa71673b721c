"""The counters behind ``GET /metrics`` and the metric families vLLM exports from them.

Named, labelled and ordered as vLLM's, so that the pipeline scrapes the
stand-in and vLLM with the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .prometheus import Histogram, render_counter, render_gauge

FINISH_REASONS = ("abort", "error", "length", "stop")
TOKEN_SOURCES = ("external_kv_transfer", "local_cache_hit", "local_compute")
# vLLM's NixlPromMetrics buckets (vllm/.../nixl/stats.py).
_TIME_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    5.0,
)
XFER_TIME_BUCKETS = _TIME_BUCKETS[1:]
POST_TIME_BUCKETS = _TIME_BUCKETS
BYTES_BUCKETS = tuple(float(2 ** (10 + i)) for i in range(1, 25, 2))
DESCRIPTOR_BUCKETS = (
    10,
    20,
    30,
    50,
    75,
    100,
    200,
    400,
    1000,
    2000,
    4000,
    10000,
    20000,
    50000,
)


def _histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
    """A Stats field holding its own histogram (a dataclass default must be a factory)."""
    return field(default_factory=lambda: Histogram(name, doc, buckets))


@dataclass
class Stats:
    """Counters behind /metrics; plain ints because one event loop owns them."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    by_source: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_SOURCES, 0))
    prefix_queries: int = 0
    prefix_hits: int = 0
    nixl_failed_transfers: int = 0
    nixl_failed_notifications: int = 0
    nixl_expired: int = 0
    nixl_after_expiry: int = 0
    xfer_time: Histogram = _histogram(
        "vllm:nixl_xfer_time_seconds", "Histogram of transfer duration for NIXL KV Cache transfers.", XFER_TIME_BUCKETS
    )
    post_time: Histogram = _histogram(
        "vllm:nixl_post_time_seconds", "Histogram of transfer post time for NIXL KV Cache transfers.", POST_TIME_BUCKETS
    )
    xfer_bytes: Histogram = _histogram(
        "vllm:nixl_bytes_transferred", "Histogram of bytes transferred per NIXL KV Cache transfers.", BYTES_BUCKETS
    )
    descriptors: Histogram = _histogram(
        "vllm:nixl_num_descriptors", "Histogram of number of descriptors per NIXL KV Cache transfers.", DESCRIPTOR_BUCKETS
    )
    created: float = field(default_factory=time.time)


Series = list[tuple[dict[str, str], float]]


def render_metrics(stats: Stats, model_name: str, num_running: int, num_waiting: int, nixl: bool) -> str:
    """All metric families; NIXL ones only with a connector, as vLLM registers them."""
    base = {"engine": "0", "model_name": model_name}
    out: list[str] = []
    render_gauge(out, "vllm:num_requests_running", "Number of requests in model execution batches.", base, num_running)
    render_gauge(out, "vllm:num_requests_waiting", "Number of requests waiting to be processed.", base, num_waiting)
    for name, doc, series in _engine_counters(stats, base):
        render_counter(out, name, doc, series, stats.created)
    if nixl:
        for hist in (stats.xfer_time, stats.post_time, stats.xfer_bytes, stats.descriptors):
            hist.render(out, base, stats.created)
        for name, doc, series in _nixl_counters(stats, base):
            render_counter(out, name, doc, series, stats.created)
    return "\n".join(out) + "\n"


def _engine_counters(s: Stats, base: dict[str, str]) -> list[tuple[str, str, Series]]:
    """(name, help, series) of the counters every vLLM server exports, in vLLM's order."""
    return [
        ("vllm:prompt_tokens", "Number of prefill tokens processed.", [(base, s.prompt_tokens)]),
        ("vllm:generation_tokens", "Number of generation tokens processed.", [(base, s.generation_tokens)]),
        (
            "vllm:request_success",
            "Count of successfully processed requests.",
            [({**base, "finished_reason": r}, s.finished[r]) for r in FINISH_REASONS],
        ),
        ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", [(base, s.prefix_queries)]),
        ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", [(base, s.prefix_hits)]),
        (
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            [({**base, "source": k}, s.by_source[k]) for k in TOKEN_SOURCES],
        ),
    ]


def _nixl_counters(s: Stats, base: dict[str, str]) -> list[tuple[str, str, Series]]:
    """(name, help, series) of the NixlConnector's counters, after its histograms."""
    return [
        ("vllm:nixl_num_failed_transfers", "Number of failed NIXL KV Cache transfers.", [(base, s.nixl_failed_transfers)]),
        ("vllm:nixl_num_failed_notifications", "Number of failed NIXL KV Cache notifications.", [(base, s.nixl_failed_notifications)]),
        (
            "vllm:nixl_num_kv_expired_reqs",
            "Number of requests that had their KV expire. NOTE: This metric is tracked on the P instance.",
            [(base, s.nixl_expired)],
        ),
        (
            "vllm:nixl_num_notifications_after_expiry",
            "Number of KV read notifications that arrived after the lease expired.",
            [(base, s.nixl_after_expiry)],
        ),
    ]
