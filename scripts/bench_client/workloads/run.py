"""A workload's requests through the same load shapes, session and result as the default client.

The default client builds its own prompts inside ``runner.execute``; this module builds the
workload's requests first and then runs them the same way (warmup closed loop, measured
phase in the configured shape, or at the trace's own arrival times), so every metric keeps
vLLM's definition.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from ..load import arrival_schedule, run_all_at_once, run_closed_loop, run_open_loop
from ..model import READ_BUFSIZE, BenchConfig, RequestOutcome, RequestSpec, RunOutput
from ..prompts import chat_payload, completions_payload, prompt_id_matrix
from ..runner import check_reachable
from ..stream import request_openai_chat_completions, request_openai_completions, stamp_sent
from .lengths import workload_lengths
from .replay import expected_trace_hits, trace_prompts
from .shared_prefix import expected_hit_tokens, shared_prefix_prompts
from .trace_file import TraceRequest

# vLLM's default KV block size; the expected hit rate counts whole blocks of it.
BLOCK_SIZE = 16
IDEAL_CACHE = f"an unbounded cache of {BLOCK_SIZE}-token blocks serving the requests one after another, warmup included"


@dataclass
class WorkloadRequests:
    warmup: list[RequestSpec]
    measured: list[RequestSpec]
    expected: dict[str, Any]
    """What an ideal prefix cache would hit over the same requests (warmup included)."""
    output_tokens: dict[int, int] = field(default_factory=dict)
    """Tokens each request (by index) asks for, where they differ from --max-tokens."""
    due_s: list[float] | None = None
    """The trace's arrival times (s after the measured phase starts), None for other kinds."""
    facts: dict[str, Any] = field(default_factory=dict)
    """What the workload drew or replayed, for the result."""


def _specs(cfg: BenchConfig, rows: Sequence[Sequence[int]], max_tokens: Sequence[int]) -> list[RequestSpec]:
    make_payload = chat_payload if cfg.is_chat else completions_payload
    prefix = cfg.label or "bench"
    specs = []
    for i, (row, out) in enumerate(zip(rows, max_tokens, strict=True)):
        ids = [int(t) for t in row]  # numpy ints are not JSON
        body = json.dumps(make_payload(cfg.model, ids, int(out)), separators=(",", ":")).encode()
        specs.append(RequestSpec(index=i, warmup=i < cfg.warmup_requests, request_id=f"{prefix}-{i}",
                                 prompt_tokens=len(ids), first_token_id=ids[0], body=body))
    return specs


def _split(cfg: BenchConfig, specs: list[RequestSpec], expected: dict[str, Any], outputs: Sequence[int] | None = None,
           **extra: Any) -> WorkloadRequests:
    per_request = {i: int(n) for i, n in enumerate(outputs)} if outputs is not None else {}
    return WorkloadRequests(specs[: cfg.warmup_requests], specs[cfg.warmup_requests :], expected, per_request, **extra)


def _shared_prefix(cfg: BenchConfig, workload: dict[str, Any]) -> WorkloadRequests:
    total = cfg.warmup_requests + cfg.num_requests
    prompts = shared_prefix_prompts(total, cfg.prompt_tokens, workload["prefix_tokens"], workload["num_prefixes"],
                                    cfg.token_id_low, cfg.token_id_high, cfg.seed)
    hits = expected_hit_tokens(prompts.prefix_of, prompts.prefix_tokens, cfg.prompt_tokens, BLOCK_SIZE)
    expected = {"prefix_hit_rate": hits / (total * cfg.prompt_tokens), "model": IDEAL_CACHE,
                "prefixes_used": int(len(set(prompts.prefix_of.tolist())))}
    return _split(cfg, _specs(cfg, prompts.ids, [cfg.max_tokens] * total), expected)


def _random_rows(cfg: BenchConfig, lengths: Sequence[int]) -> list[np.ndarray]:
    """Unique random prompts (distinct first tokens) of the given lengths."""
    ids = prompt_id_matrix(len(lengths), int(max(lengths)), cfg.token_id_low, cfg.token_id_high, cfg.seed)
    return [ids[i, : int(n)] for i, n in enumerate(lengths)]


def _lengths(cfg: BenchConfig, workload: dict[str, Any]) -> WorkloadRequests:
    total = cfg.warmup_requests + cfg.num_requests
    inputs, outputs, facts = workload_lengths(workload, total, cfg.prompt_tokens, cfg.max_tokens, cfg.seed)
    specs = _specs(cfg, _random_rows(cfg, inputs.tolist()), outputs.tolist())
    return _split(cfg, specs, {"prefix_hit_rate": 0.0, "model": "unique prompts: nothing to reuse"}, outputs.tolist(), facts=facts)


def _trace(cfg: BenchConfig, workload: dict[str, Any], trace: Sequence[TraceRequest]) -> WorkloadRequests:
    """Warmup: unique random prompts as long as the trace's first requests; then the trace itself."""
    replay = list(trace[: workload.get("max_requests", len(trace))])
    warm = [replay[i % len(replay)] for i in range(cfg.warmup_requests)]
    rows = _random_rows(cfg, [r.input_tokens for r in warm]) if warm else []
    rows += trace_prompts(replay, cfg.token_id_low, cfg.token_id_high, cfg.seed, first_index=len(warm))
    outputs = [r.output_tokens for r in warm + replay]
    tokens = sum(r.input_tokens for r in warm + replay)
    expected = {"prefix_hit_rate": expected_trace_hits(replay, BLOCK_SIZE) / tokens, "model": IDEAL_CACHE}
    scale = float(workload.get("time_scale", 1.0))
    facts = {"requests": len(replay), "time_scale": scale, "span_s": replay[-1].arrival_s * scale,
             "input_tokens_mean": sum(r.input_tokens for r in replay) / len(replay),
             "output_tokens_mean": sum(r.output_tokens for r in replay) / len(replay)}
    return _split(cfg, _specs(cfg, rows, outputs), expected, outputs, due_s=[r.arrival_s * scale for r in replay], facts=facts)


def workload_requests(cfg: BenchConfig, workload: dict[str, Any], trace: Sequence[TraceRequest] = ()) -> WorkloadRequests:
    """The requests of a workload, warmup first, and its expected prefix-cache hit rate."""
    if workload["kind"] == "shared_prefix":
        return _shared_prefix(cfg, workload)
    if workload["kind"] == "lengths":
        return _lengths(cfg, workload)
    if workload["kind"] == "trace":
        if not trace:
            raise ValueError("a trace workload needs its trace (--workload-file)")
        return _trace(cfg, workload, trace)
    raise ValueError(f"unknown workload kind {workload['kind']!r}")


def _schedule(cfg: BenchConfig, requests: WorkloadRequests) -> list[float] | None:
    if requests.due_s is not None:
        return requests.due_s
    if cfg.load_mode == "open_loop":
        return list(arrival_schedule(len(requests.measured), cfg.request_rate, cfg.burstiness, cfg.seed))
    return None


async def execute_requests(cfg: BenchConfig, requests: WorkloadRequests) -> RunOutput:
    """Warm up, then run the measured requests in the configured load shape (a trace: its arrival times)."""
    measured_specs = requests.measured
    due_s = _schedule(cfg, requests)
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
