"""One benchmark run: reachability, the HTTP session, warmup, measured phase.

The warmup is over before the measured phase starts, and the session never
queues a request in its own pool, so that no cold start and no client-side
wait hides inside the measured latencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .load import arrival_schedule, run_all_at_once, run_closed_loop, run_open_loop
from .model import READ_BUFSIZE, BenchConfig, RequestOutcome, RequestSpec, RunOutput, ServerUnreachable
from .prompts import build_specs
from .result import build_result
from .stream import error_text, request_openai_chat_completions, request_openai_completions, stamp_sent


async def check_reachable(base_url: str, timeout_s: float) -> None:
    """Open (and close) one TCP connection; raise ServerUnreachable if none.

    A bare TCP check, not an HTTP probe, so it works for any server or proxy
    and sends nothing that could warm a cache or show in its request log.
    """
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout_s)
    except Exception as exc:  # refused, DNS failure, timeout: all "unreachable"
        raise ServerUnreachable(f"cannot connect to {parts.hostname}:{port}: {error_text(exc, timeout_s)}") from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def execute(cfg: BenchConfig) -> RunOutput:
    """Warm up, then run the measured requests in the configured load shape."""
    warmup_specs, measured_specs = build_specs(cfg)
    due_s = arrival_schedule(len(measured_specs), cfg.request_rate, cfg.burstiness, cfg.seed) if cfg.load_mode == "open_loop" else None
    await check_reachable(cfg.base_url, min(10.0, cfg.request_timeout))
    # limit=0: the client's own pool must never queue a request (that would
    # hide waiting time inside TTFT); one session reuses connections.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout)
    api = request_openai_chat_completions if cfg.is_chat else request_openai_completions
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(stamp_sent)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=READ_BUFSIZE, trace_configs=[trace]) as session:

        async def send(spec: RequestSpec) -> RequestOutcome:
            return await api(session, cfg.url, spec)

        warmup = await run_closed_loop(warmup_specs, cfg.warmup_concurrency, send)
        start = time.perf_counter()
        if due_s is not None:
            measured = await run_open_loop(measured_specs, due_s, cfg.concurrency, send, start)
        elif cfg.load_mode == "offline":
            measured = await run_all_at_once(measured_specs, send)
        else:
            measured = await run_closed_loop(measured_specs, cfg.concurrency, send)
        duration = time.perf_counter() - start
    return RunOutput(warmup=warmup, measured=measured, duration_s=duration, benchmark_start=start)


async def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark and return the result dict (not yet written)."""
    return build_result(cfg, await execute(cfg))
