"""A workload's requests through the same load shapes, session and result as the default client.

The default client builds its own prompts inside ``runner.execute``; this module builds the
workload's requests first and then runs them the same way (warmup closed loop, measured
phase in the configured shape), so every metric keeps vLLM's definition.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from ..load import arrival_schedule, run_all_at_once, run_closed_loop, run_open_loop
from ..model import READ_BUFSIZE, BenchConfig, RequestOutcome, RequestSpec, RunOutput
from ..prompts import chat_payload, completions_payload
from ..runner import check_reachable
from ..stream import request_openai_chat_completions, request_openai_completions, stamp_sent
from .shared_prefix import expected_hit_tokens, shared_prefix_prompts

# vLLM's default KV block size; the expected hit rate counts whole blocks of it.
BLOCK_SIZE = 16


@dataclass
class WorkloadRequests:
    warmup: list[RequestSpec]
    measured: list[RequestSpec]
    expected: dict[str, Any]
    """What an ideal prefix cache would hit over the same requests (warmup included)."""


def _specs(cfg: BenchConfig, ids: np.ndarray) -> list[RequestSpec]:
    make_payload = chat_payload if cfg.is_chat else completions_payload
    prefix = cfg.label or "bench"
    specs = []
    for i, row in enumerate(ids.tolist()):
        body = json.dumps(make_payload(cfg.model, row, cfg.max_tokens), separators=(",", ":")).encode()
        specs.append(RequestSpec(index=i, warmup=i < cfg.warmup_requests, request_id=f"{prefix}-{i}",
                                 prompt_tokens=len(row), first_token_id=row[0], body=body))
    return specs


def workload_requests(cfg: BenchConfig, workload: dict[str, Any]) -> WorkloadRequests:
    """The requests of a workload, warmup first, and its expected prefix-cache hit rate."""
    if workload["kind"] != "shared_prefix":
        raise ValueError(f"unknown workload kind {workload['kind']!r}")
    total = cfg.warmup_requests + cfg.num_requests
    prompts = shared_prefix_prompts(total, cfg.prompt_tokens, workload["prefix_tokens"], workload["num_prefixes"],
                                    cfg.token_id_low, cfg.token_id_high, cfg.seed)
    hits = expected_hit_tokens(prompts.prefix_of, prompts.prefix_tokens, cfg.prompt_tokens, BLOCK_SIZE)
    specs = _specs(cfg, prompts.ids)
    expected = {
        "prefix_hit_rate": hits / (total * cfg.prompt_tokens),
        "model": f"an unbounded cache of {BLOCK_SIZE}-token blocks serving the requests one after another, warmup included",
        "prefixes_used": int(len(set(prompts.prefix_of.tolist()))),
    }
    return WorkloadRequests(specs[: cfg.warmup_requests], specs[cfg.warmup_requests :], expected)


async def execute_requests(cfg: BenchConfig, requests: WorkloadRequests) -> RunOutput:
    """Warm up, then run the measured requests in the configured load shape."""
    measured_specs = requests.measured
    due_s = arrival_schedule(len(measured_specs), cfg.request_rate, cfg.burstiness, cfg.seed) if cfg.load_mode == "open_loop" else None
    await check_reachable(cfg.base_url, min(10.0, cfg.request_timeout))
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout)
    api = request_openai_chat_completions if cfg.is_chat else request_openai_completions
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(stamp_sent)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=READ_BUFSIZE, trace_configs=[trace]) as session:

        async def send(spec: RequestSpec) -> RequestOutcome:
            return await api(session, cfg.url, spec)

        warmup = await run_closed_loop(requests.warmup, cfg.warmup_concurrency, send)
        start = time.perf_counter()
        if due_s is not None:
            measured = await run_open_loop(measured_specs, due_s, cfg.concurrency, send, start)
        elif cfg.load_mode == "offline":
            measured = await run_all_at_once(measured_specs, send)
        else:
            measured = await run_closed_loop(measured_specs, cfg.concurrency, send)
        duration = time.perf_counter() - start
    return RunOutput(warmup=warmup, measured=measured, duration_s=duration, benchmark_start=start)
