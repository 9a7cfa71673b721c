"""What leaves the client: the result file and the human summary.

The file is written atomically so that a crash never leaves a partial JSON for
the pipeline to pick up.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .metrics import percentile_key


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON via a temp file in the same directory and ``os.replace``.

    Readers (the pipeline, resume logic) then see either the old file or the
    complete new one, never a truncated JSON from a crash or a full disk.
    """
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


# twin: disagglab/hashing.py:atomic_write_bytes
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def format_summary(result: dict[str, Any]) -> str:
    """Human table in the layout of vLLM's "Serving Benchmark Result"."""
    lines = ["{s:{c}^50}".format(s=" Serving Benchmark Result ", c="=")]

    def row(name: str, value: Any) -> None:
        if isinstance(value, float):
            value = f"{value:.2f}"
        lines.append(f"{name:<40} {value!s:<10}")

    open_loop = result.get("load_mode") == "open_loop"
    row("Measurement type:", result["measurement_type"])
    row("Load mode:", result.get("load_mode"))
    row("Successful requests:", result["completed"])
    row("Failed requests:", result["failed"])
    row("Traffic request rate:", result["request_rate"])
    if open_loop:
        row("Burstiness factor:", result["burstiness"])
    row("Maximum request concurrency:", result["max_concurrency"])
    row("Achieved request rate (req/s):", result.get("achieved_request_rate"))
    row("Achieved concurrency (mean):", result.get("achieved_concurrency_mean"))
    row("Achieved concurrency (peak):", result.get("achieved_concurrency_max"))
    row("Benchmark duration (s):", result["duration"])
    row("Total input tokens:", result["total_input_tokens"])
    row("Total generated tokens:", result["total_output_tokens"])
    row("Request throughput (req/s):", result["request_throughput"])
    if result.get("request_goodput") is not None:
        row("Request goodput (req/s):", result["request_goodput"])
        row("SLO attainment (%):", result.get("slo_attainment_pct"))
    row("Output token throughput (tok/s):", result["output_throughput"])
    row("Peak output token throughput (tok/s):", result["max_output_tokens_per_s"])
    row("Peak concurrent requests:", result["max_concurrent_requests"])
    row("Total token throughput (tok/s):", result["total_token_throughput"])
    sections = [
        ("ttft", "TTFT", "Time to First Token"),
        ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
        ("itl", "ITL", "Inter-token Latency"),
        ("e2el", "E2EL", "End-to-end Latency"),
    ]
    if open_loop:  # elsewhere 0 by definition
        sections += [
            ("client_queue_time", "Queue", "Client Queue Time"),
            ("ttft_including_client_queue", "TTFT+Q", "TTFT incl. Client Queue"),
            ("e2el_including_client_queue", "E2EL+Q", "E2EL incl. Client Queue"),
        ]
    for key, short, title in sections:
        lines.append("{s:{c}^50}".format(s=title, c="-"))
        row(f"Mean {short} (ms):", result[f"mean_{key}_ms"])
        row(f"Median {short} (ms):", result[f"median_{key}_ms"])
        for p in result["percentiles"]:
            row(
                f"P{percentile_key(p)} {short} (ms):",
                result[f"p{percentile_key(p)}_{key}_ms"],
            )
    if result["output_tokens_mismatch"]:
        row("Output tokens != max_tokens:", result["output_tokens_mismatch"])
    for err in result["errors"][:5]:
        lines.append(f"error x{err['count']}: {err['error'][:200]}")
    lines.append("=" * 50)
    return "\n".join(lines)
