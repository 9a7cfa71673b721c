"""The prefix-cache counters of the servers that prefill, read from their /metrics.

Real vLLM and the stand-in export the same two counters (tokens queried, tokens found in
the cache); the difference across the benchmark is the measured hit rate.
"""

from __future__ import annotations

import contextlib
import urllib.request

COUNTERS = {
    "queries": ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries"),
    "hits": ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits"),
}


def parse_counters(text: str) -> dict[str, float | None]:
    """Sum each counter over its label sets; None when the page does not export it."""
    totals: dict[str, float | None] = {key: None for key in COUNTERS}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for key, names in COUNTERS.items():
            if name in names:
                with contextlib.suppress(ValueError, IndexError):
                    totals[key] = (totals[key] or 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def read_counters(urls: list[str], timeout_s: float = 5.0) -> dict[str, float | None]:
    """The counters summed over every server; a server that cannot be read makes them None."""
    totals: dict[str, float | None] = {key: 0.0 for key in COUNTERS}
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                page = parse_counters(resp.read().decode())
        except OSError:
            return {key: None for key in COUNTERS}
        for key, value in page.items():
            current = totals[key]
            totals[key] = None if value is None or current is None else current + value
    return totals


def measured_rate(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | int | None]:
    """Tokens queried and hit between two readings, and their ratio (None without queries)."""
    if any(v is None for v in (*before.values(), *after.values())):
        return {"queried_tokens": None, "hit_tokens": None, "hit_rate": None}
    queried = int(after["queries"] - before["queries"])  # type: ignore[operator]
    hits = int(after["hits"] - before["hits"])  # type: ignore[operator]
    return {"queried_tokens": queried, "hit_tokens": hits, "hit_rate": hits / queried if queried > 0 else None}
