#!/usr/bin/env python3
"""Phase-agnostic streaming benchmark client for OpenAI-compatible vLLM servers.

Why this exists
---------------
The experiment measures disaggregated (prefill/decode) vLLM serving. The same
client has to be pointed at a unified server, at a P/D proxy, or at a single P
or D instance, and the numbers must be comparable with ``vllm bench serve``.
The file therefore runs on the nodes themselves, inside whatever venv holds
vLLM: it is standalone and imports only the standard library, aiohttp and
numpy (never a project package, which is not installed there).

Every metric is defined exactly as ``vllm bench serve`` defines it
(``vllm/benchmarks/serve.py::calculate_metrics`` and
``vllm/benchmarks/lib/endpoint_request_func.py``):

* ``st = time.perf_counter()`` is taken just before the POST. The JSON body is
  serialised *before* ``st`` so that client-side serialisation of long token
  lists is not billed to the server's TTFT.
* Timestamps are taken on receipt of each block of bytes from the socket
  (``resp.content.iter_any()``), before any JSON parsing, so that parsing cost
  and event-loop work on other requests do not inflate latencies. The SSE
  stream is split into events on blank lines by this module, so a single
  ``data:`` line larger than aiohttp's 64 KiB line limit is still parsed.
* TTFT = time from ``st`` to the first SSE data event whose ``choices`` list is
  non-empty (its text may be empty). ITL = gaps between consecutive later
  events with non-empty ``choices``. E2EL = time of the *last content* event
  minus ``st`` (not the ``[DONE]`` marker, not the usage event).
* Output tokens = ``usage.completion_tokens`` of the final usage event
  (requested with ``stream_options.include_usage``). If the server sends no
  usage, the number of content events is used and the request is flagged
  (``output_tokens_from_usage: false``).
* A request succeeds only with HTTP 200, at least one content event and no
  exception while reading the stream; otherwise it is failed with its error
  text (HTTP status and body excerpt, or the exception).
* TPOT per request = (E2EL - TTFT) / (output_tokens - 1), only for requests
  with more than one output token (vLLM leaves the others out of TPOT). ITLs
  of all requests are pooled into one list. mean/median/std/percentiles come
  from numpy (population std, linear-interpolation percentiles); empty lists
  give 0.0, as in vLLM.
* ``max_output_tokens_per_s`` and ``max_concurrent_requests`` use vLLM's
  per-second buckets: every content event of a successful request is put into
  the bucket ``int(t - first_start)``; a request counts as concurrent in every
  bucket from ``int(start - first_start)`` to ``int(end - first_start)``
  inclusive; both metrics are the maxima over the buckets. They are therefore
  *not* instantaneous in-flight counts.

Load shapes (``--measurement-type``)
------------------------------------
online
    Closed loop. Exactly ``--concurrency`` workers; each sends its next request
    as soon as its previous one has finished, until ``--num-requests``
    measured requests are done. This is what ``vllm bench serve
    --request-rate inf --max-concurrency C`` approximates, minus vLLM's client
    queue: here no request ever waits on the client, so no queueing time is
    hidden from (or added to) TTFT/E2EL. Saved as ``max_concurrency = C``.
offline
    All ``--num-requests`` measured requests are dispatched at once (``vllm
    bench serve --request-rate inf`` without a concurrency cap), so the server
    sees the whole batch. ``--concurrency`` does not shape dispatch; it is
    still recorded as ``concurrency`` (and used for the warmup), and
    ``max_concurrency`` is saved as null, as vLLM does for "no cap".

In both modes ``--warmup-requests`` requests are sent first, as a closed loop
at ``--concurrency``, and are fully finished before the measured requests
start. They are excluded from every metric; their count (and failures) are
recorded. ``duration`` runs from the first dispatch of a measured request to
the last measured response.

Prompts
-------
For ``/v1/completions`` each prompt is a list of exactly ``--prompt-tokens``
token ids drawn from ``numpy.random.default_rng(seed)`` in ``[low, high)`` of
``--token-id-range``, sent as ids so the server does not re-tokenise (the
input length is exact). The first id of every prompt is distinct across all
requests of the run, warmup included, so no two requests share even their
first KV block: there are no prefix-cache hits. For ``/v1/chat/completions``
the ids are rendered as text (a number then one common word per id) because
chat messages cannot carry ids; the server's chat template and tokenizer
change the count, so the result says ``prompt_tokens_exact: false`` and the
server-reported ``usage.prompt_tokens`` is used (as vLLM does) when present.

Request ids: every request carries ``X-Request-Id: <label or "bench">-<index>``
where ``index`` runs over warmup requests first (0..W-1), then the measured
ones (W..W+N-1), so server and proxy logs can be joined to the result.

Result file: the keys of ``vllm bench serve --save-result`` plus our own (see
``build_result``), written atomically (temporary file in the same directory,
then ``os.replace``) so a crash never leaves a partial JSON for a pipeline to
pick up.

Exit codes: 0 when the result file was written (even if requests failed: the
caller decides), 2 on bad arguments, 1 if the server could not be reached at
all (no TCP connection to the base URL) or the result could not be written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

CLIENT_NAME = "benchmark_common"
DEFAULT_PERCENTILES = "50,90,95,99"
# Length of a non-200 response body kept in the error text: enough to show a
# validation message from vLLM, short enough to keep the error list readable.
ERROR_BODY_EXCERPT_CHARS = 500
# Read buffer of the client session. aiohttp's default 64 KiB made vLLM's own
# client collapse at long context (vllm issue #39963); a larger buffer costs
# little and keeps long SSE events from being throttled by flow control.
READ_BUFSIZE = 4 * 1024 * 1024
NO_CONTENT_ERROR = "Never received a valid chunk to calculate TTFT (HTTP 200 without any content event)"

# Common English words that are a single token, with a leading space, in the
# usual BPE vocabularies. Used only for the chat endpoint, where a prompt must
# be text; the count is approximate by design (see module docstring).
_CHAT_WORDS_TEXT = """
    the of and to in is that for it as was with be by on not he this are or
    his from at which but have an had they you were their one all we can her
    has there been if more when will would who so no out up into than them
    only some time could new about two may then do first any like my now
    over such our man me even most made after also did many before must
    through back years where much your way well down should because each
    just those people how too little state good very make world still own
    see men work long get here between both life being under never day same
    another know while last might us great old year off come since against
    go came right used take three water house city river light table
"""
CHAT_WORDS: tuple[str, ...] = tuple(_CHAT_WORDS_TEXT.split())


# --------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------


@dataclass
class RequestSpec:
    """One request, fully prepared before any request is sent.

    The JSON body is serialised here, not at dispatch: for an offline batch of
    long prompts, per-request serialisation would otherwise spread the "all at
    once" dispatch over many milliseconds of client CPU.
    """

    index: int
    warmup: bool
    request_id: str
    prompt_tokens: int  # ids in the prompt (chat: ids rendered as words)
    first_token_id: int
    body: bytes


@dataclass
class RequestOutcome:
    """Outcome of one request, in seconds (like vLLM's RequestFuncOutput).

    ``start_time`` is the raw ``perf_counter`` value of ``st``; the per-second
    bucket metrics need the absolute values, offsets are derived later.
    """

    index: int
    warmup: bool
    request_id: str
    prompt_tokens: int  # tokens sent (chat: ids used to build the text)
    prompt_tokens_reported: int | None = None  # usage.prompt_tokens
    success: bool = False
    error: str = ""
    http_status: int | None = None
    start_time: float = 0.0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0  # E2EL: last content event - st
    output_tokens: int = 0
    output_tokens_from_usage: bool = False
    content_chunks: int = 0
    generated_chars: int = 0

    @property
    def effective_prompt_tokens(self) -> int:
        """Input length counted in totals: the server's count when reported.

        vLLM's client overwrites its prompt length with usage.prompt_tokens,
        which is what matters for the chat endpoint, where ours is a guess.
        """
        if self.prompt_tokens_reported is not None:
            return self.prompt_tokens_reported
        return self.prompt_tokens

    @property
    def tpot(self) -> float | None:
        """(E2EL - TTFT) / (output_tokens - 1); None where vLLM excludes it."""
        if not self.success or self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


@dataclass
class BenchConfig:
    """Parsed, validated command line."""

    base_url: str
    endpoint: str
    model: str
    prompt_tokens: int
    max_tokens: int
    concurrency: int
    warmup_requests: int
    num_requests: int
    measurement_type: str
    seed: int
    token_id_low: int
    token_id_high: int
    percentiles: list[float]
    request_timeout: float
    result_file: str
    label: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.endpoint.rstrip("/").endswith("chat/completions")

    @property
    def endpoint_type(self) -> str:
        """vLLM's backend name for this endpoint ("openai" / "openai-chat")."""
        return "openai-chat" if self.is_chat else "openai"

    @property
    def url(self) -> str:
        return self.base_url + self.endpoint


class ServerUnreachable(RuntimeError):
    """No TCP connection could be opened to the base URL."""


# --------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------


def prompt_id_matrix(count: int, prompt_tokens: int, low: int, high: int, seed: int) -> np.ndarray:
    """``count`` x ``prompt_tokens`` token ids in [low, high), row = prompt.

    The first ids are drawn without replacement, so every prompt differs from
    every other one already in its first token: no request can reuse another
    one's KV blocks through prefix caching, which would fake a fast prefill.
    Deterministic for a given seed, so repeated runs send the same prompts.
    """
    if count < 0 or prompt_tokens < 1:
        raise ValueError("count must be >= 0 and prompt_tokens >= 1")
    if high - low < count:
        raise ValueError(f"token id range [{low}, {high}) has fewer than {count} ids: cannot give every request a distinct first token")
    rng = np.random.default_rng(seed)
    ids = np.empty((count, prompt_tokens), dtype=np.int64)
    ids[:, 0] = rng.choice(high - low, size=count, replace=False) + low
    ids[:, 1:] = rng.integers(low, high, size=(count, prompt_tokens - 1))
    return ids


def build_prompts(count: int, prompt_tokens: int, low: int, high: int, seed: int) -> list[list[int]]:
    """The prompts of ``prompt_id_matrix`` as lists of Python ints."""
    return prompt_id_matrix(count, prompt_tokens, low, high, seed).tolist()


def chat_text_from_ids(ids: Sequence[int]) -> str:
    """Render token ids as chat text: the first id as a number, then words.

    The leading number keeps the unique first id visible at the start of the
    user message, so chat prompts also differ right after the chat template.
    """
    words = [str(ids[0])]
    words.extend(CHAT_WORDS[i % len(CHAT_WORDS)] for i in ids[1:])
    return " ".join(words)


def completions_payload(model: str, prompt_ids: list[int], max_tokens: int) -> dict[str, Any]:
    """/v1/completions body as ``vllm bench serve`` (openai, --ignore-eos).

    Greedy, streamed with a final usage event, and ``ignore_eos`` so every
    request generates exactly ``max_tokens`` tokens: the server does the same
    work as under vLLM's own client.
    """
    return {
        "model": model,
        "prompt": prompt_ids,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


def chat_payload(model: str, prompt_ids: list[int], max_tokens: int) -> dict[str, Any]:
    """/v1/chat/completions body as vLLM's openai-chat backend.

    vLLM's chat client sends ``max_completion_tokens`` and the prompt as one
    text content part; the text is rendered from the ids.
    """
    text = chat_text_from_ids(prompt_ids)
    return {
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        "max_completion_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def build_specs(cfg: BenchConfig) -> tuple[list[RequestSpec], list[RequestSpec]]:
    """Warmup and measured request specs, indices 0..W-1 then W..W+N-1."""
    total = cfg.warmup_requests + cfg.num_requests
    ids = prompt_id_matrix(total, cfg.prompt_tokens, cfg.token_id_low, cfg.token_id_high, cfg.seed)
    make_payload = chat_payload if cfg.is_chat else completions_payload
    prefix = cfg.label or "bench"
    specs = []
    for i in range(total):
        row = ids[i].tolist()
        specs.append(
            RequestSpec(
                index=i,
                warmup=i < cfg.warmup_requests,
                request_id=f"{prefix}-{i}",
                prompt_tokens=len(row),
                first_token_id=row[0],
                body=_dumps(make_payload(cfg.model, row, cfg.max_tokens)),
            )
        )
    return specs[: cfg.warmup_requests], specs[cfg.warmup_requests :]


# --------------------------------------------------------------------------
# SSE parsing
# --------------------------------------------------------------------------

_SSE_EVENT_SEP = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_SSE_LINE_SEP = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Incremental Server-Sent-Events splitter working on raw bytes.

    aiohttp's line reader refuses lines over 64 KiB, and a completion event
    can be longer than that (long texts, logprobs). This parser buffers bytes
    and cuts events on blank lines itself, with no size limit, and scans only
    the newly arrived bytes so a long event costs linear time.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the ``data`` payloads of all completed events."""
        buf = self._buf
        search_from = max(0, len(buf) - 3)  # a separator may straddle chunks
        buf.extend(chunk)
        out: list[str] = []
        pos = 0
        while True:
            m = _SSE_EVENT_SEP.search(buf, search_from)
            if m is None:
                break
            data = self._event_data(bytes(buf[pos : m.start()]))
            if data is not None:
                out.append(data)
            pos = search_from = m.end()
        if pos:
            del buf[:pos]
        return out

    def close(self) -> list[str]:
        """Flush an event the server did not terminate with a blank line."""
        data = self._event_data(bytes(self._buf))
        self._buf.clear()
        return [] if data is None else [data]

    @staticmethod
    def _event_data(raw: bytes) -> str | None:
        """Join the ``data:`` lines of one event; None for comments/empty.

        Lines are split only on CR/LF: str.splitlines would also split on
        U+2028 and friends, which may appear unescaped inside JSON strings.
        """
        if not raw.strip():
            return None
        data_lines = []
        for line in _SSE_LINE_SEP.split(raw.decode("utf-8", errors="replace")):
            if line.startswith("data:"):
                value = line[5:]
                data_lines.append(value.removeprefix(" "))
        if not data_lines:
            return None  # comment (": ping") or non-data fields only
        return "\n".join(data_lines)


# --------------------------------------------------------------------------
# Request functions (one per API)
# --------------------------------------------------------------------------


def _headers(request_id: str) -> dict[str, str]:
    """JSON content type, our request id, and the API key like vLLM's client."""
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    api_key = os.environ.get("OPENAI_API_KEY")
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _error_text(exc: BaseException, timeout_s: float | None) -> str:
    """Readable one-line error; aiohttp's timeout carries no message at all."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"TimeoutError: no complete response within --request-timeout {timeout_s} s"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _read_excerpt(resp: aiohttp.ClientResponse, limit: int) -> str:
    """Read at most about ``limit`` bytes of an error body (it may be huge)."""
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body.extend(chunk)
        if len(body) >= limit:
            break
    return body[:limit].decode("utf-8", errors="replace").strip()


async def _post_streaming(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    outcome: RequestOutcome,
    content_text: Callable[[dict[str, Any]], str | None],
) -> RequestOutcome:
    """POST ``body`` and fill ``outcome`` from the SSE stream (vLLM semantics).

    Shared by the per-API functions, which differ only in where the generated
    text sits inside a choice (the body was built by their payload function).
    """
    timeout_s = session.timeout.total if session.timeout else None
    usage_completion: int | None = None
    stream_error = ""
    st = time.perf_counter()
    outcome.start_time = st
    last = st
    try:
        async with session.post(url, data=body, headers=_headers(outcome.request_id)) as resp:
            outcome.http_status = resp.status
            if resp.status != 200:
                excerpt = await _read_excerpt(resp, ERROR_BODY_EXCERPT_CHARS)
                outcome.error = f"HTTP {resp.status} {resp.reason or ''}".strip()
                if excerpt:
                    outcome.error += f": {excerpt}"
                return outcome
            parser = SSEParser()
            ts = st

            def handle(data: str) -> None:
                nonlocal last, usage_completion, stream_error
                if data == "[DONE]":
                    return
                try:
                    obj = json.loads(data)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"invalid JSON in SSE event: {data[:200]!r}") from exc
                if not isinstance(obj, dict):
                    return
                choices = obj.get("choices")
                if choices:
                    if outcome.content_chunks == 0:
                        outcome.ttft = ts - st
                    else:
                        outcome.itl.append(ts - last)
                    last = ts
                    outcome.content_chunks += 1
                    text = content_text(choices[0]) if isinstance(choices[0], dict) else None
                    outcome.generated_chars += len(text or "")
                usage = obj.get("usage")
                if isinstance(usage, dict):
                    if usage.get("completion_tokens") is not None:
                        usage_completion = int(usage["completion_tokens"])
                    if usage.get("prompt_tokens") is not None:
                        outcome.prompt_tokens_reported = int(usage["prompt_tokens"])
                if not choices and obj.get("error"):
                    detail = json.dumps(obj["error"])[:ERROR_BODY_EXCERPT_CHARS]
                    stream_error = f"error event in stream: {detail}"

            async for chunk in resp.content.iter_any():
                ts = time.perf_counter()  # receipt time, before any parsing
                for data in parser.feed(chunk):
                    handle(data)
            for data in parser.close():
                handle(data)
    except Exception as exc:  # noqa: BLE001 - every failure must become a record
        outcome.success = False
        outcome.error = _error_text(exc, timeout_s)
        return outcome

    if outcome.content_chunks == 0:
        outcome.error = stream_error or NO_CONTENT_ERROR
        return outcome
    outcome.success = True
    outcome.error = stream_error  # kept for information; the request succeeded
    outcome.latency = last - st
    # vLLM falls back when usage is missing or zero; we count content events.
    if usage_completion:
        outcome.output_tokens = usage_completion
        outcome.output_tokens_from_usage = True
    else:
        outcome.output_tokens = outcome.content_chunks
        outcome.output_tokens_from_usage = False
    return outcome


def _new_outcome(spec: RequestSpec) -> RequestOutcome:
    return RequestOutcome(
        index=spec.index,
        warmup=spec.warmup,
        request_id=spec.request_id,
        prompt_tokens=spec.prompt_tokens,
    )


async def request_openai_completions(session: aiohttp.ClientSession, url: str, spec: RequestSpec) -> RequestOutcome:
    """One streamed /v1/completions request (body from ``completions_payload``).

    The generated text of a choice is in ``choices[0].text``.
    """
    return await _post_streaming(session, url, spec.body, _new_outcome(spec), lambda choice: choice.get("text"))


async def request_openai_chat_completions(session: aiohttp.ClientSession, url: str, spec: RequestSpec) -> RequestOutcome:
    """One streamed /v1/chat/completions request (body from ``chat_payload``).

    The text is in ``choices[0].delta.content``. Any event with non-empty
    ``choices`` counts as content, as in vLLM, including a role-only delta.
    """

    def delta_text(choice: dict[str, Any]) -> str | None:
        delta = choice.get("delta")
        return delta.get("content") if isinstance(delta, dict) else None

    return await _post_streaming(session, url, spec.body, _new_outcome(spec), delta_text)


# --------------------------------------------------------------------------
# Metrics (pure)
# --------------------------------------------------------------------------


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


def calculate_metrics(outcomes: Sequence[RequestOutcome], duration_s: float, percentiles: Sequence[float]) -> dict[str, Any]:
    """Turn measured outcomes into vLLM's saved metric keys (pure function).

    Only successful requests contribute to token totals and latency lists,
    exactly as ``vllm bench serve``; failed ones are only counted.
    """
    ok = [o for o in outcomes if o.success]
    ttfts = [o.ttft for o in ok]
    e2els = [o.latency for o in ok]
    tpots = [t for t in (o.tpot for o in ok) if t is not None]
    itls = [gap for o in ok for gap in o.itl]
    total_input = sum(o.effective_prompt_tokens for o in ok)
    total_output = sum(o.output_tokens for o in ok)
    max_tok_s, max_conc = _peak_buckets(ok)

    def per_s(x: float) -> float:
        return x / duration_s if duration_s > 0 else 0.0

    metrics: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(outcomes) - len(ok),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": per_s(len(ok)),
        "request_goodput": None,  # vLLM: null unless --goodput is given
        "output_throughput": per_s(total_output),
        "total_token_throughput": per_s(total_input + total_output),
        "max_output_tokens_per_s": max_tok_s,
        "max_concurrent_requests": max_conc,
    }
    for name, values in (
        ("ttft", ttfts),
        ("tpot", tpots),
        ("itl", itls),
        ("e2el", e2els),
    ):
        metrics.update(_stats(name, values, percentiles))
    return metrics


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

RequestFn = Callable[[RequestSpec], Awaitable[RequestOutcome]]


async def run_closed_loop(specs: Sequence[RequestSpec], concurrency: int, send: RequestFn) -> list[RequestOutcome]:
    """Exactly ``concurrency`` workers, each sending its next request at once.

    The shared iterator is advanced without an await in between, so each
    spec is taken by exactly one worker, and never more than ``concurrency``
    requests are in flight.
    """
    results: list[RequestOutcome | None] = [None] * len(specs)
    queue = iter(range(len(specs)))

    async def worker() -> None:
        for i in queue:
            results[i] = await send(specs[i])

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
    return [r for r in results if r is not None]


async def run_all_at_once(specs: Sequence[RequestSpec], send: RequestFn) -> list[RequestOutcome]:
    """Dispatch every request immediately (offline batch)."""
    return list(await asyncio.gather(*(send(s) for s in specs)))


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
        raise ServerUnreachable(f"cannot connect to {parts.hostname}:{port}: {_error_text(exc, timeout_s)}") from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@dataclass
class RunOutput:
    """Everything a run produced, before it is shaped into the result JSON."""

    warmup: list[RequestOutcome]
    measured: list[RequestOutcome]
    duration_s: float
    benchmark_start: float


async def execute(cfg: BenchConfig) -> RunOutput:
    """Warm up, then run the measured requests in the configured load shape."""
    warmup_specs, measured_specs = build_specs(cfg)
    await check_reachable(cfg.base_url, min(10.0, cfg.request_timeout))
    # limit=0: the client's own pool must never queue a request (that would
    # hide waiting time inside TTFT); one session reuses connections.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout)
    api = request_openai_chat_completions if cfg.is_chat else request_openai_completions
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=READ_BUFSIZE) as session:

        async def send(spec: RequestSpec) -> RequestOutcome:
            return await api(session, cfg.url, spec)

        warmup = await run_closed_loop(warmup_specs, cfg.concurrency, send)
        start = time.perf_counter()
        if cfg.measurement_type == "offline":
            measured = await run_all_at_once(measured_specs, send)
        else:
            measured = await run_closed_loop(measured_specs, cfg.concurrency, send)
        duration = time.perf_counter() - start
    return RunOutput(warmup=warmup, measured=measured, duration_s=duration, benchmark_start=start)


def _error_counts(outcomes: Sequence[RequestOutcome]) -> list[dict[str, Any]]:
    counts = Counter(o.error for o in outcomes if not o.success)
    return [{"error": text, "count": n} for text, n in counts.most_common()]


def _ms(x: float) -> float:
    return round(x * 1000.0, 3)


def request_record(o: RequestOutcome, benchmark_start: float, max_tokens: int) -> dict[str, Any]:
    """Per-request JSON record (ms); latency fields are null for failures."""
    tpot = o.tpot
    return {
        "index": o.index,
        "warmup": o.warmup,
        "x_request_id": o.request_id,
        "start_offset_s": round(o.start_time - benchmark_start, 6),
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
    }


def build_result(cfg: BenchConfig, run: RunOutput, date: str | None = None) -> dict[str, Any]:
    """Result JSON: vLLM's --save-result keys first, then ours."""
    metrics = calculate_metrics(run.measured, run.duration_s, cfg.percentiles)
    records = [request_record(o, run.benchmark_start, cfg.max_tokens) for o in run.measured]
    result: dict[str, Any] = {
        "date": date or datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": cfg.endpoint_type,
        "backend": "vllm",
        "label": cfg.label,
        "model_id": cfg.model,
        "num_prompts": cfg.num_requests,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": cfg.concurrency if cfg.measurement_type == "online" else None,
    }
    result.update(metrics)
    result.update(
        {
            "measurement_type": cfg.measurement_type,
            "concurrency": cfg.concurrency,
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


async def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark and return the result dict (not yet written)."""
    return build_result(cfg, await execute(cfg))


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON via a temp file in the same directory and ``os.replace``.

    Readers (the pipeline, resume logic) then see either the old file or the
    complete new one, never a truncated JSON from a crash or a full disk.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
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

    row("Measurement type:", result["measurement_type"])
    row("Successful requests:", result["completed"])
    row("Failed requests:", result["failed"])
    row("Maximum request concurrency:", result["max_concurrency"])
    row("Benchmark duration (s):", result["duration"])
    row("Total input tokens:", result["total_input_tokens"])
    row("Total generated tokens:", result["total_output_tokens"])
    row("Request throughput (req/s):", result["request_throughput"])
    row("Output token throughput (tok/s):", result["output_throughput"])
    row("Peak output token throughput (tok/s):", result["max_output_tokens_per_s"])
    row("Peak concurrent requests:", result["max_concurrent_requests"])
    row("Total token throughput (tok/s):", result["total_token_throughput"])
    sections = (
        ("ttft", "TTFT", "Time to First Token"),
        ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
        ("itl", "ITL", "Inter-token Latency"),
        ("e2el", "E2EL", "End-to-end Latency"),
    )
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


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark_common.py",
        description="Streaming benchmark client for an OpenAI-compatible vLLM server or P/D proxy; metrics as `vllm bench serve`.",
    )
    p.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000",
        help="Server or proxy root, e.g. http://10.0.0.5:8000 (default: %(default)s).",
    )
    p.add_argument(
        "--endpoint",
        default="/v1/completions",
        help="API path: /v1/completions (token-id prompts, exact length) or "
        "/v1/chat/completions (text prompts, approximate length). "
        "Default: %(default)s.",
    )
    p.add_argument("--model", required=True, help="Model name sent in every request (as served).")
    p.add_argument(
        "--prompt-tokens",
        type=int,
        required=True,
        help="Input length: token ids per prompt (exact for /v1/completions).",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        required=True,
        help="Output length: max_tokens per request, with ignore_eos so it is reached.",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="Requests in flight for online (closed loop) and for the warmup; "
        "recorded but not used for dispatch when offline (default: %(default)s).",
    )
    p.add_argument(
        "--warmup-requests",
        type=int,
        default=0,
        help="Requests sent first and excluded from all metrics (default: %(default)s).",
    )
    p.add_argument("--num-requests", type=int, required=True, help="Measured requests.")
    p.add_argument(
        "--measurement-type",
        choices=("online", "offline"),
        default="online",
        help="online: closed loop at --concurrency; offline: all measured requests dispatched at once (default: %(default)s).",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of numpy's default_rng for prompts (default: %(default)s).",
    )
    p.add_argument(
        "--token-id-range",
        default="1000:30000",
        help="LOW:HIGH, prompt token ids are drawn from [LOW, HIGH); must hold at "
        "least warmup+num requests ids (distinct first tokens). "
        "Default: %(default)s.",
    )
    p.add_argument(
        "--percentiles",
        default=DEFAULT_PERCENTILES,
        help="Comma-separated percentiles in [0, 100] reported for ttft/tpot/itl/e2el (default: %(default)s).",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="Total time allowed per request in seconds; a request over it fails (default: %(default)s).",
    )
    p.add_argument(
        "--result-file",
        required=True,
        help="Where to write the result JSON (atomically).",
    )
    p.add_argument(
        "--label",
        default=None,
        help="Free-text label saved in the result and used as X-Request-Id prefix (default prefix: bench).",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    """Parse and validate; any problem exits with status 2 via argparse."""
    parser = build_parser()
    a = parser.parse_args(argv)
    for name in ("prompt_tokens", "max_tokens", "concurrency", "num_requests"):
        if getattr(a, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.warmup_requests < 0:
        parser.error("--warmup-requests must be >= 0")
    if not a.request_timeout > 0:
        parser.error("--request-timeout must be > 0")
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", a.token_id_range)
    if not m:
        parser.error("--token-id-range must be LOW:HIGH with non-negative integers")
    low, high = int(m.group(1)), int(m.group(2))
    if high <= low:
        parser.error("--token-id-range: HIGH must be > LOW")
    if high - low < a.warmup_requests + a.num_requests:
        parser.error("--token-id-range holds fewer ids than warmup+num requests (each request needs a distinct first token)")
    try:
        percentiles = [float(x) for x in a.percentiles.split(",") if x.strip()]
    except ValueError:
        parser.error("--percentiles must be comma-separated numbers")
    if not percentiles or any(not 0 <= p <= 100 for p in percentiles):
        parser.error("--percentiles must be numbers in [0, 100]")
    parts = urlsplit(a.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        parser.error("--base-url must look like http://HOST:PORT")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parser.error("--base-url has an invalid port")
    endpoint = a.endpoint if a.endpoint.startswith("/") else "/" + a.endpoint
    if not endpoint.rstrip("/").endswith("completions"):
        parser.error("--endpoint must be /v1/completions or /v1/chat/completions")
    if not a.model.strip():
        parser.error("--model must not be empty")
    return BenchConfig(
        base_url=a.base_url.rstrip("/"),
        endpoint=endpoint,
        model=a.model,
        prompt_tokens=a.prompt_tokens,
        max_tokens=a.max_tokens,
        concurrency=a.concurrency,
        warmup_requests=a.warmup_requests,
        num_requests=a.num_requests,
        measurement_type=a.measurement_type,
        seed=a.seed,
        token_id_low=low,
        token_id_high=high,
        percentiles=percentiles,
        request_timeout=a.request_timeout,
        result_file=a.result_file,
        label=a.label,
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        result = asyncio.run(run_benchmark(cfg))
    except ServerUnreachable as exc:
        print(f"benchmark_common: server unreachable: {exc}", file=sys.stderr)
        return 1
    try:
        write_json_atomic(cfg.result_file, result)
    except (OSError, TypeError, ValueError) as exc:
        print(f"benchmark_common: cannot write {cfg.result_file}: {exc}", file=sys.stderr)
        return 1
    print(format_summary(result))
    print(f"result written to {cfg.result_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
