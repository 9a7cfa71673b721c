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

* ``st = time.perf_counter()`` is taken just before the POST (the dispatch). The
  JSON body is serialised *before* ``st`` so that client-side serialisation of
  long token lists is not billed to the server's TTFT.
* One deliberate difference from vLLM: TTFT and E2EL are measured from the
  moment aiohttp hands the request bytes to the socket
  (``TraceConfig.on_request_chunk_sent``), not from ``st``. aiohttp writes a
  request from a separate task that runs later; at concurrency 64 that wait
  measured 2.4-3.9 ms p50 here, all of it client-side. It is reported per
  request and in aggregate as ``client_send_delay`` and is included in the
  "including client queue" latencies, so nothing is hidden. When the hook does
  not fire (other aiohttp versions) the origin falls back to ``st``.
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
  *not* instantaneous in-flight counts (see ``achieved_concurrency_max``).

Load shapes
-----------
Chosen by ``--measurement-type`` and ``--request-rate`` and saved as
``load_mode``:

closed_loop (``--measurement-type online``, ``--request-rate inf``, default)
    Exactly ``--concurrency`` workers; each sends its next request as soon as
    its previous one has finished, until ``--num-requests`` measured requests
    are done. This is what ``vllm bench serve --request-rate inf
    --max-concurrency C`` approximates, minus vLLM's client queue: here no
    request ever waits on the client. Saved as ``max_concurrency = C``.
open_loop (``--measurement-type online``, finite ``--request-rate R``)
    Requests are sent on a fixed schedule computed before the first one is
    sent, as ``vllm bench serve --request-rate R --burstiness B``: the gaps
    between arrivals are drawn from ``numpy.random.default_rng(seed).gamma(
    shape=B, scale=1/(R*B))`` (mean 1/R, coefficient of variation
    1/sqrt(B): B=1 is a Poisson process, B<1 burstier, B>1 more regular,
    ``B=inf`` fixed gaps of 1/R). Request i is due at the sum of the first
    i+1 gaps (the first one, like vLLM's, is not sent at 0). The cumulative
    times are then rescaled, as vLLM does, so that the last request is due at
    exactly N/R. The rescale multiplies every gap by the same factor, so the
    shape of the process (CV, burstiness) is unchanged; what it removes is
    the seed-to-seed noise of the offered rate (the sum of N gamma gaps has a
    relative spread of 1/sqrt(N*B), e.g. 10 % for N=100 Poisson arrivals), so
    the offered load equals R for every seed and the numbers stay
    comparable with ``vllm bench serve`` at the same R. Since normalised iid
    gamma gaps are independent of their sum, the rescaled schedule is
    exactly the gamma process conditioned on its N-th arrival at N/R.
    ``--concurrency C`` (C >= 1) caps the requests in flight, like vLLM's
    ``--max-concurrency`` semaphore: a request that is due while C are in
    flight waits, in schedule order, for a free slot. ``--concurrency 0``
    means no cap (every request is sent when due) and is only allowed here.
    Saved as ``max_concurrency = C`` (null for 0).
offline (``--measurement-type offline``)
    All ``--num-requests`` measured requests are dispatched at once (``vllm
    bench serve --request-rate inf`` without a concurrency cap), so the server
    sees the whole batch. ``--concurrency`` does not shape dispatch; it is
    still recorded as ``concurrency`` (and used for the warmup), and
    ``max_concurrency`` is saved as null, as vLLM does for "no cap". A finite
    ``--request-rate`` is refused here.

In every mode ``--warmup-requests`` requests are sent first, as a closed loop
at ``--concurrency`` (at 1 when it is 0), and are fully finished before the
measured requests start. They are excluded from every metric; their count
(and failures) are recorded. The measured phase starts when the first
measured request is dispatched (open loop: at the schedule's origin, so it
includes the wait for the first arrival, as in vLLM) and ``duration`` runs
from there to the last measured response.

Client-side queue time and achieved load
----------------------------------------
Every measured request records its scheduled time and its dispatch time
(``st`` above) as offsets from the start of the measured phase.
``client_queue_time = dispatch - scheduled`` is the time a due request spent
waiting on the client: on the concurrency cap, on a late timer or a busy
event loop. In the closed loop and offline it is 0 by definition: a request
there has no time it was due other than the moment it is sent, so its
scheduled time *is* its dispatch time (offline dispatch spread is visible in
``dispatch_offset_s``). The dispatcher never sends a request early, so it is
never negative. TTFT and E2EL exclude it, exactly as vLLM's do; the "latency
from schedule" ``ttft_including_client_queue = client_queue_time + TTFT`` and
``e2el_including_client_queue = client_queue_time + E2EL`` include it, so a
capped open loop cannot hide queueing (vLLM 0.33 reports
``client_queue_time`` and ``e2el_including_client_queue`` under these names;
their stats, like TTFT's, are over successful requests).

Requested load is saved as vLLM does (``request_rate``, the string "inf" when
unbounded, ``burstiness``, ``max_concurrency``) plus ``requested_concurrency``
(closed loop: C; open loop: the cap C, null when uncapped; offline: N, the
whole batch). Achieved load:

* ``achieved_request_rate``: measured dispatches per second of the dispatch
  window ``dispatch_window_s``. In the open loop that window runs from the
  schedule's origin to the last dispatch, so the value equals R exactly when
  nothing was late (the last request is due at N/R) and is lower when the cap
  or the client held requests back. Without a schedule (closed loop,
  offline) nothing is "due", and the window is the whole measured phase
  (``duration``): the value is then the completion rate of all measured
  requests, failed ones included.
* ``achieved_concurrency_mean``: time-weighted mean of the requests in flight
  over the measured phase (sum of in-flight times / ``duration``); a request
  is in flight from its dispatch until its request function has returned
  (after ``[DONE]``, not at its last token), which is also when its slot
  under the cap is released. By Little's law it equals the achieved rate
  times the mean in-flight time in the closed loop.
* ``achieved_concurrency_max``: the exact peak number in flight (a request
  that ends at the instant another starts is not counted twice).

Goodput
-------
``--goodput ttft:MS tpot:MS e2el:MS`` (any non-empty subset, vLLM's syntax;
thresholds in ms). As in vLLM, a successful request is good if every given
SLO holds, ``threshold >= value`` (compared in seconds), where TPOT of a
request with at most one output token counts as 0, and TTFT/E2EL are the
client-measured values *without* client queue time (vLLM's definition; read
``e2el_including_client_queue`` next to it for a capped open loop).
``request_goodput`` = good requests / ``duration`` (null without SLO, as in
vLLM), ``slo_attainment_pct`` = good / completed * 100 (null without SLO or
with no completed request), ``goodput_slo_ms`` = the thresholds, and every
request record gets ``slo_met`` (null without SLO and for failed requests,
which are not judged, as in vLLM).

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
import math
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

    ``start_time`` is the raw ``perf_counter`` value of ``st`` (the dispatch
    time); the per-second bucket metrics need the absolute values, offsets are
    derived later. ``scheduled_time`` is when an open loop wanted the request
    sent (None where there is no schedule: it is then the dispatch time).
    ``end_time`` is when the request function returned (stream fully read or
    failure), the end of the request's time in flight.
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
    scheduled_time: float | None = None
    end_time: float = 0.0
    sent_time: float | None = None  # request bytes handed to the socket (TTFT origin)

    @property
    def client_send_delay(self) -> float:
        """sent - dispatch: time the request waited inside the client before hitting the wire."""
        return 0.0 if self.sent_time is None else max(0.0, self.sent_time - self.start_time)

    @property
    def client_queue_time(self) -> float:
        """Dispatch - scheduled time; 0 by definition without a schedule."""
        if self.scheduled_time is None:
            return 0.0
        return self.start_time - self.scheduled_time

    @property
    def in_flight_end(self) -> float:
        """End of the time in flight (``start + latency`` if never stamped)."""
        return self.end_time if self.end_time > 0 else self.start_time + self.latency

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

    @property
    def tpot_for_goodput(self) -> float:
        """TPOT as vLLM's goodput sees it: 0 with at most one output token."""
        tpot = self.tpot
        return 0.0 if tpot is None else tpot


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
    request_rate: float = float("inf")
    burstiness: float = 1.0
    goodput_slo_ms: dict[str, float] | None = None

    @property
    def load_mode(self) -> str:
        """closed_loop, open_loop or offline (see the module docstring)."""
        if self.measurement_type == "offline":
            return "offline"
        return "open_loop" if math.isfinite(self.request_rate) else "closed_loop"

    @property
    def max_concurrency(self) -> int | None:
        """The client-side cap as vLLM saves it (null = no cap)."""
        if self.load_mode == "offline" or self.concurrency == 0:
            return None
        return self.concurrency

    @property
    def requested_concurrency(self) -> int | None:
        """In-flight level the load shape asks for (offline: the batch)."""
        if self.load_mode == "offline":
            return self.num_requests
        return self.max_concurrency

    @property
    def warmup_concurrency(self) -> int:
        """Workers of the warmup closed loop (1 when uncapped)."""
        return max(1, self.concurrency)

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


async def _stamp_sent(_session: aiohttp.ClientSession, ctx: Any, _params: Any) -> None:
    """First request bytes handed to the socket: the origin of TTFT and E2EL."""
    holder = ctx.trace_request_ctx
    if isinstance(holder, dict) and "t" not in holder:
        holder["t"] = time.perf_counter()


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
    ``end_time`` is stamped however the request ends: it closes the request's
    time in flight for the achieved-concurrency metrics.

    The body is sent as one bytes object: aiohttp's client puts no limit on a
    request body (a 50,000-token prompt is a few hundred KB), and the response
    is read in raw blocks and split by ``SSEParser``, so neither side of a
    long-context request meets an aiohttp size limit.
    """
    try:
        return await _stream_into(session, url, body, outcome, content_text)
    finally:
        outcome.end_time = time.perf_counter()


async def _stream_into(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    outcome: RequestOutcome,
    content_text: Callable[[dict[str, Any]], str | None],
) -> RequestOutcome:
    """The body of ``_post_streaming`` (every return path fills ``outcome``)."""
    timeout_s = session.timeout.total if session.timeout else None
    usage_completion: int | None = None
    stream_error = ""
    st = time.perf_counter()
    outcome.start_time = st
    last = st
    sent: dict[str, float] = {}
    try:
        async with session.post(url, data=body, headers=_headers(outcome.request_id), trace_request_ctx=sent) as resp:
            origin = sent.get("t", st)
            outcome.sent_time = origin
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
                        outcome.ttft = ts - origin
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
    outcome.latency = last - (outcome.sent_time if outcome.sent_time is not None else st)
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

    See the module docstring for the definitions. Every dispatched request
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


def arrival_schedule(count: int, rate: float, burstiness: float, seed: int, rescale: bool = True) -> np.ndarray:
    """Due times (s after the phase origin) of ``count`` open-loop requests.

    Gaps ~ ``default_rng(seed).gamma(shape=burstiness, scale=1/(rate*burstiness))``
    (fixed gaps of 1/rate for ``burstiness=inf``); request i is due at the
    sum of gaps 0..i. With ``rescale`` (what the benchmark uses, as vLLM)
    the times are multiplied by one factor so the last is due at exactly
    count/rate; see the module docstring for why. Pure and deterministic.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError("rate must be a finite number > 0")
    if not burstiness > 0:
        raise ValueError("burstiness must be > 0")
    if count == 0:
        return np.zeros(0)
    if math.isinf(burstiness):
        gaps = np.full(count, 1.0 / rate)
    else:
        gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=count)
    times = np.cumsum(gaps)
    if rescale and times[-1] > 0:
        times *= (count / rate) / times[-1]
    return times


async def run_open_loop(
    specs: Sequence[RequestSpec],
    due_s: Sequence[float],
    cap: int,
    send: RequestFn,
    origin: float,
) -> list[RequestOutcome]:
    """Send ``specs[i]`` at ``origin + due_s[i]``, at most ``cap`` in flight.

    One dispatcher walks the schedule in order: it sleeps until a request is
    due (re-checking the clock, so it never sends early), then, when capped,
    waits for a free slot, then starts the request as a task. A request held
    back by the cap therefore keeps its place in line, and the wait shows as
    its ``client_queue_time`` (dispatch ``st`` minus due time). ``cap`` 0 is
    uncapped. The slot is released when the request function returns.
    """
    sem = asyncio.Semaphore(cap) if cap > 0 else None
    tasks: list[asyncio.Task[RequestOutcome]] = []

    async def one(spec: RequestSpec, due: float) -> RequestOutcome:
        try:
            out = await send(spec)
        finally:
            if sem is not None:
                sem.release()
        out.scheduled_time = due
        return out

    try:
        for spec, offset in zip(specs, due_s):
            due = origin + float(offset)
            while (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            if sem is not None:
                await sem.acquire()
            tasks.append(asyncio.create_task(one(spec, due)))
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()  # no-op for finished tasks; stops strays on error


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
    benchmark_start: float  # start of the measured phase (open loop: origin)


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
    trace.on_request_chunk_sent.append(_stamp_sent)
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


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _parse_float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}")
    return value


def _positive_rate(text: str) -> float:
    """--request-rate: a number > 0, or inf."""
    value = _parse_float(text, "--request-rate")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--request-rate must be > 0 (or inf), got {text!r}")
    return value


def _positive_burstiness(text: str) -> float:
    """--burstiness: a number > 0, or inf (fixed gaps)."""
    value = _parse_float(text, "--burstiness")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--burstiness must be > 0 (or inf), got {text!r}")
    return value


def parse_goodput(items: Sequence[str]) -> dict[str, float]:
    """vLLM's ``--goodput KEY:VALUE ...`` -> {key: ms}; ValueError if bad.

    Keys are ttft, tpot, e2el, each at most once; values finite and >= 0.
    """
    slo: dict[str, float] = {}
    for item in items:
        key, sep, raw = item.partition(":")
        key = key.strip().lower()
        if not sep or key not in GOODPUT_METRICS:
            raise ValueError(f"invalid goodput SLO {item!r}: expected KEY:MS with KEY one of {', '.join(GOODPUT_METRICS)}")
        if key in slo:
            raise ValueError(f"goodput SLO {key!r} given twice")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"invalid goodput SLO {item!r}: {raw!r} is not a number of milliseconds") from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"invalid goodput SLO {item!r}: milliseconds must be finite and >= 0")
        slo[key] = value
    if not slo:
        raise ValueError("--goodput needs at least one KEY:MS")
    return slo


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
        "with a finite --request-rate the cap on requests in flight (0 = uncapped, "
        "open loop only); recorded but not used for dispatch when offline (default: %(default)s).",
    )
    p.add_argument(
        "--request-rate",
        type=_positive_rate,
        default=float("inf"),
        help="Requests per second of an open loop (online only): requests are sent on a "
        "gamma-process schedule fixed up front, as `vllm bench serve --request-rate`; "
        "inf = no schedule, i.e. the closed loop or offline batch (default: inf).",
    )
    p.add_argument(
        "--burstiness",
        type=_positive_burstiness,
        default=1.0,
        help="Gamma shape of the open-loop inter-arrival times: 1 = Poisson, <1 burstier, "
        ">1 more regular, inf = fixed gaps; as `vllm bench serve --burstiness` (default: %(default)s).",
    )
    p.add_argument(
        "--goodput",
        nargs="+",
        default=None,
        metavar="KEY:MS",
        help="SLOs for goodput as vLLM's --goodput, e.g. ttft:500 tpot:50 e2el:3000 (keys "
        "ttft, tpot, e2el; milliseconds); a completed request is good if it meets all given SLOs. "
        "Default: none (request_goodput null).",
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
    for name in ("prompt_tokens", "max_tokens", "num_requests"):
        if getattr(a, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    open_loop = math.isfinite(a.request_rate)
    if open_loop and a.measurement_type == "offline":
        parser.error("--request-rate must be inf with --measurement-type offline (offline sends everything at once)")
    if open_loop and a.concurrency < 0:
        parser.error("--concurrency must be >= 0 with a finite --request-rate (0 = uncapped)")
    if not open_loop and a.concurrency < 1:
        parser.error("--concurrency must be >= 1 (0 = uncapped is only allowed with a finite --request-rate)")
    goodput = None
    if a.goodput is not None:
        try:
            goodput = parse_goodput(a.goodput)
        except ValueError as exc:
            parser.error(f"--goodput: {exc}")
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
        request_rate=a.request_rate,
        burstiness=a.burstiness,
        goodput_slo_ms=goodput,
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
