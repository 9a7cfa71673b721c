"""One streamed request, timed as ``vllm bench serve`` times it.

The timestamps are the product of this benchmark, so this module takes them
on receipt of each block of bytes, before any parsing (docs/node-programs.md,
"Metric definitions").
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from .model import ERROR_BODY_EXCERPT_CHARS, NO_CONTENT_ERROR, RequestOutcome, RequestSpec
from .sse import SSEParser


def _headers(request_id: str) -> dict[str, str]:
    """JSON content type, our request id, and the API key like vLLM's client."""
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    api_key = os.environ.get("OPENAI_API_KEY")
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def error_text(exc: BaseException, timeout_s: float | None) -> str:
    """Readable one-line error; aiohttp's timeout carries no message at all."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"TimeoutError: no complete response within --request-timeout {timeout_s} s"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def stamp_sent(_session: aiohttp.ClientSession, ctx: Any, _params: Any) -> None:
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
    spec: RequestSpec,
    content_text: Callable[[dict[str, Any]], str | None],
) -> RequestOutcome:
    """POST ``spec.body`` and build its outcome from the SSE stream (vLLM semantics).

    Shared by the per-API functions, which differ only in where the generated
    text sits inside a choice (the body was built by their payload function).
    ``end_time`` is stamped however the request ends: it closes the request's
    time in flight for the achieved-concurrency metrics.

    The body is sent as one bytes object: aiohttp's client puts no limit on a
    request body (a 50,000-token prompt is a few hundred KB), and the response
    is read in raw blocks and split by ``SSEParser``, so neither side of a
    long-context request meets an aiohttp size limit.
    """
    outcome = _new_outcome(spec)
    try:
        return await _stream_into(session, url, spec.body, outcome, content_text)
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
        outcome.error = error_text(exc, timeout_s)
        return outcome
    return _conclude(outcome, st, last, usage_completion, stream_error)


def _conclude(outcome: RequestOutcome, st: float, last: float, usage_completion: int | None, stream_error: str) -> RequestOutcome:
    """Judge a stream that was read to its end (vLLM's rule: success needs one content event)."""
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
    return await _post_streaming(session, url, spec, lambda choice: choice.get("text"))


async def request_openai_chat_completions(session: aiohttp.ClientSession, url: str, spec: RequestSpec) -> RequestOutcome:
    """One streamed /v1/chat/completions request (body from ``chat_payload``).

    The text is in ``choices[0].delta.content``. Any event with non-empty
    ``choices`` counts as content, as in vLLM, including a role-only delta.
    """

    def delta_text(choice: dict[str, Any]) -> str | None:
        delta = choice.get("delta")
        return delta.get("content") if isinstance(delta, dict) else None

    return await _post_streaming(session, url, spec, delta_text)
