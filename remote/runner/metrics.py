"""The KV-transfer evidence a server's /metrics shows, read before and after the benchmark."""

from __future__ import annotations

import contextlib
import urllib.request

EVIDENCE_METRICS = {
    "transfers": ("vllm:nixl_xfer_time_seconds_count",),
    "failed_transfers": ("vllm:nixl_num_failed_transfers", "vllm:nixl_num_failed_transfers_total"),
    "requests_succeeded": ("vllm:request_success_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
}


def scrape_metrics(url: str) -> dict[str, float]:
    """Sum the KV-transfer evidence counters over all label sets of a Prometheus page."""
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        text = resp.read().decode()
    totals = {key: 0.0 for key in EVIDENCE_METRICS}
    found = {key: False for key in EVIDENCE_METRICS}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for key, names in EVIDENCE_METRICS.items():
            if name in names:
                with contextlib.suppress(ValueError, IndexError):
                    totals[key] += float(line.rsplit(" ", 1)[1])
                    found[key] = True
    return {**totals, "_present": [k for k, v in found.items() if v]}  # type: ignore[dict-item]
