#!/usr/bin/env python3
"""Prefill/decode proxy for disaggregated vLLM serving with the NIXL KV connector.

Protocol (same as vLLM's ``tests/v1/kv_connector/nixl_integration/toy_proxy_server.py``):

1. The client's request goes first to a prefill server P (KV producer) as a one-token,
   non-streaming request carrying ``kv_transfer_params.do_remote_decode = true``.
2. P answers with ``kv_transfer_params`` that say where its KV blocks are.
3. The client's *original* request goes to a decode server D (KV consumer) with those
   ``kv_transfer_params``; D pulls the KV over NIXL and generates. D's answer is relayed
   to the client chunk by chunk, with D's status and content type.

Differences from the toy proxy, all deliberate because this proxy sits inside every
disaggregated measurement:

* Little per-request work: aiohttp serves the clients; the backends are reached through a
  small HTTP/1.1 client on asyncio protocols (pooled keep-alive connections, TCP_NODELAY,
  no per-request sessions, timeouts or tasks); the client's JSON is parsed once (so bad JSON
  is still a 400) but never re-encoded: P's and D's bodies are spliced from the client's
  bytes and P's ``kv_transfer_params`` text. uvloop when importable (vLLM's venvs have it),
  else the stdlib loop, silently.
* SSE keeps ``text/event-stream`` (the toy proxy relabels it ``application/json``); every
  chunk D sends is written to the client as soon as it arrives (chunks that arrived together
  are written together), with no buffering.
* Backend failures become a 502 JSON naming the role and backend instead of a bare 500;
  a decode failure after streaming began ends the stream with an SSE ``error`` event.
* A missing ``kv_transfer_params`` from P (D will silently re-prefill, which doubles TTFT)
  is logged as a warning, counted, and shown in the ``X-KV-Transfer-Params: missing`` header.
* ``GET /health`` really probes every backend; ``GET /metrics`` speaks Prometheus.
* Backend health checking: every ``--health-interval`` s each backend's ``GET /health`` is
  probed (``--health-timeout``). A backend that fails ``--eject-after`` probes in a row, or
  that cannot be connected to on the request path, is ejected from the round robin (one log
  line) and returns after its next successful probe (one log line). With no healthy backend of
  a role left, a request gets 503 at once (no connection attempt, no wait).
* SIGTERM/SIGINT: stop accepting connections, let in-flight requests finish for up to
  ``--shutdown-grace`` s (a second signal cuts the wait short), then close and exit 0.

Response headers added on proxied completions:

* ``X-Request-Id``: the client's, or a fresh uuid4; also sent to P and D.
* ``X-KV-Transfer-Params``: ``present`` or ``missing`` (what P returned).
* ``X-Proxy-Prefill-Ms``: wall time of the P request (send to last byte of P's body).
* ``X-Proxy-Decode-First-Byte-Ms``: time from sending the request to D until D's first body
  chunk. Response headers are sent only once that chunk has arrived (the client cannot see
  anything earlier anyway), so the value is exact; if D's body is empty it is the time to
  D's end of body.
* ``X-Proxy-Prefill-Backend`` / ``X-Proxy-Decode-Backend``: the chosen backends' URLs.

Errors: a backend that is unreachable, times out, or answers non-2xx before anything was
streamed gives HTTP 502 ``{"error": {"message": "<role> backend <url> failed: <cause>",
"type": "bad_gateway", "role": "prefill"|"decode", "backend": <url>, "status": <int|null>,
"body": <excerpt|null>}}``. No healthy backend of a role gives HTTP 503 ``{"error":
{"message": "no healthy <role> backend: <url> (<why>); ...", "type": "service_unavailable",
"role": ..., "backends": [{"url", "error"}]}}``; so does a request that arrives while the
proxy is shutting down (``"role": null``). If D breaks after streaming began, an SSE stream
ends with ``data: {"error": {...}}``; a JSON body is cut short (connection closed). Bad client
JSON gives 400. Every request logs one ``request_id=... prefill_ms=... decode_first_byte_ms=...
total_ms=...`` line on stderr.

Metrics (``GET /metrics``, Prometheus text format 0.0.4):

* ``disagg_proxy_requests_total{route,status}``: answered requests (``499``: the client left
  before the answer started);
* ``disagg_proxy_errors_total{role,kind}``: role ``prefill``/``decode`` with kind ``connect``,
  ``timeout``, ``http_status``, ``bad_response``, ``disconnected``, ``mid_stream``,
  ``no_healthy_backend``; role ``client`` with ``bad_request``, ``disconnected``; role
  ``proxy`` with ``shutting_down``;
* ``disagg_proxy_prefill_seconds``, ``disagg_proxy_decode_first_byte_seconds``,
  ``disagg_proxy_request_seconds``: histograms of the P request, of D's first byte, and of the
  whole request (body received to the end of the relayed answer; requests D answered);
* ``disagg_proxy_in_flight_requests``: completions being handled now;
* ``disagg_proxy_backend_healthy{role,backend}``: 1 in the round robin, 0 ejected;
* ``disagg_proxy_backend_ejections_total{role,backend}``;
* ``disagg_proxy_kv_transfer_params_missing_total``.

Standalone on purpose: stdlib + aiohttp (+ uvloop if importable) only, because it runs in the
vLLM venv on the nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import inspect
import json
import json.decoder
import json.scanner
import logging
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

LOG = logging.getLogger("disagg_proxy")

COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
# aiohttp waits up to this for handlers still running when the grace is over, then cancels
# them and waits up to this again.
HANDLER_CANCEL_S = 0.25
BODY_EXCERPT_CHARS = 2000
# Long prompts sent as token-id lists exceed aiohttp's default 1 MiB request body limit.
CLIENT_MAX_BODY = 256 * 1024 * 1024
# Idle pooled connections are dropped after this; vLLM (uvicorn) closes them after 5 s.
IDLE_EXPIRY_S = 4.0
# A backend's response head larger than this is a protocol error.
MAX_RESPONSE_HEAD = 64 * 1024
# Arrays at least this long (token-id prompts) are validated while P works, not before.
DEFER_MIN_CHARS = 512
# Stop reading from a backend while this much of its body waits for a slow client.
READ_PAUSE_BYTES = 1024 * 1024
# What asyncio.wait_for raises on a timeout. asyncio.TimeoutError (not the builtin) on purpose:
# before Python 3.11 they differ, and vLLM venvs may be older.
WAIT_TIMEOUT = (asyncio.TimeoutError,)

PREFILL = "prefill"
DECODE = "decode"

# The block P needs in order to keep its KV for a remote decoder (vLLM's NixlConnector).
PREFILL_KV_TRANSFER_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
# P gets the client's request with these members replaced (and these dropped: they
# contradict a one-token, non-streamed request).
_P_REPLACED = frozenset({"kv_transfer_params", "stream", "max_tokens", "max_completion_tokens"})
_P_DROPPED = frozenset({"stream_options", "min_tokens", "min_completion_tokens"})
_P_MEMBERS = '"kv_transfer_params":' + json.dumps(PREFILL_KV_TRANSFER_PARAMS, separators=(",", ":")) + ',"stream":false,"max_tokens":1'
_KV_KEY = "kv_transfer_params"

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Backend:
    """One vLLM server; ``role`` is ``prefill`` or ``decode``."""

    role: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)


def http_url(host: str, port: int) -> str:
    """``http://host:port``; IPv6 literals need brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


class BackendError(Exception):
    """A backend failed before anything was sent to the client; becomes a 502."""

    def __init__(
        self,
        backend: Backend,
        cause: str,
        status: int | None = None,
        body: str | None = None,
        kind: str = "http_status",
    ) -> None:
        super().__init__(f"{backend.role} backend {backend.url} failed: {cause}")
        self.backend = backend
        self.cause = cause
        self.status = status
        self.body = body
        self.kind = kind

    def payload(self) -> dict[str, Any]:
        """The 502 body: says which role and backend broke, and how."""
        return {
            "error": {
                "message": str(self),
                "type": "bad_gateway",
                "role": self.backend.role,
                "backend": self.backend.url,
                "status": self.status,
                "body": self.body,
            }
        }


@dataclass
class RequestStats:
    """What one proxied request did; logged once and partly exposed as headers."""

    request_id: str
    path: str
    prefill: Backend
    decode: Backend
    started: float = field(default_factory=time.perf_counter)
    prefill_ms: float | None = None
    decode_first_byte_ms: float | None = None
    kv_params: str | None = None
    status: int | None = None
    bytes_out: int = 0
    error: str | None = None

    def log_line(self, total_ms: float) -> str:
        """One greppable key=value line per request."""
        line = (
            f"request_id={self.request_id} path={self.path} prefill={self.prefill.url} decode={self.decode.url} "
            f"status={self.status} kv_transfer_params={self.kv_params} prefill_ms={_fmt_ms(self.prefill_ms)} "
            f"decode_first_byte_ms={_fmt_ms(self.decode_first_byte_ms)} total_ms={total_ms:.2f} bytes={self.bytes_out}"
        )
        if self.error:
            line += f" error={json.dumps(self.error)}"
        return line


def _fmt_ms(value: float | None) -> str:
    """Milliseconds with two decimals, ``-`` when not reached."""
    return "-" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------- JSON without re-encoding

_decoder = json.JSONDecoder()
_scan_value = json.scanner.make_scanner(_decoder)  # the C scanner json.loads uses
_scan_string = json.decoder.scanstring
_skip_ws = re.compile(r"[ \t\n\r]*").match


class NotAnObject(ValueError):
    """Valid JSON, but not an object."""


def parse_members(text: str, deferred: list[tuple[int, int]] | None = None) -> list[tuple[str, Any, int, int]]:
    """The members of a top-level JSON object: (key, value, start, end) with
    ``text[start:end]`` the member's own text (``"key": value``).

    Exactly as strict as ``json.loads`` (every value goes through the same C scanner), but
    the spans let a changed request be spliced from the original text instead of re-encoded.
    With ``deferred``, long flat arrays (token-id prompts: no string, array or object inside)
    are only delimited, not parsed: their value is None and their span is added to
    ``deferred``; check_deferred() must then parse them before the request is trusted.
    """
    i = _skip_ws(text, 0).end()
    if text[i : i + 1] != "{":
        json.loads(text)  # the precise error for invalid JSON
        raise NotAnObject("not a JSON object")
    members: list[tuple[str, Any, int, int]] = []
    i = _skip_ws(text, i + 1).end()
    if text[i : i + 1] == "}":
        i += 1
    else:
        while True:
            if text[i : i + 1] != '"':
                raise ValueError(f"Expecting property name enclosed in double quotes: char {i}")
            start = i
            key, i = _scan_string(text, i + 1)
            i = _skip_ws(text, i).end()
            if text[i : i + 1] != ":":
                raise ValueError(f"Expecting ':' delimiter: char {i}")
            i = _skip_ws(text, i + 1).end()
            end = _flat_array_end(text, i) if deferred is not None else -1
            if end > 0:
                deferred.append((i, end))  # type: ignore[union-attr]
                value, i = None, end
            else:
                try:
                    value, i = _scan_value(text, i)
                except StopIteration as exc:
                    raise ValueError(f"Expecting value: char {exc.value}") from None
            members.append((key, value, start, i))
            i = _skip_ws(text, i).end()
            delimiter = text[i : i + 1]
            i = _skip_ws(text, i + 1).end()
            if delimiter == "}":
                break
            if delimiter != ",":
                raise ValueError(f"Expecting ',' delimiter: char {i}")
    if _skip_ws(text, i).end() != len(text):
        raise ValueError(f"Extra data: char {i}")
    return members


def _flat_array_end(text: str, i: int) -> int:
    """End of a long array at ``i`` holding no string, array or object (found with memchr-speed
    searches, nothing parsed); -1 if ``i`` starts anything else."""
    if text[i : i + 1] != "[":
        return -1
    close = text.find("]", i)
    if close - i < DEFER_MIN_CHARS or text.find('"', i, close) >= 0 or text.find("[", i + 1, close) >= 0 or text.find("{", i, close) >= 0:
        return -1
    return close + 1


class InvalidClientJSON(ValueError):
    """A deferred part of the client's body is not valid JSON (a 400, found late)."""


def check_deferred(text: str, deferred: list[tuple[int, int]]) -> None:
    """Parse what parse_members() only delimited; InvalidClientJSON as json.loads would fail."""
    for start, end in deferred:
        try:
            _, stop = _scan_value(text, start)
        except StopIteration as exc:
            raise InvalidClientJSON(f"Expecting value: char {exc.value}") from None
        except ValueError as exc:
            raise InvalidClientJSON(str(exc)) from None
        if stop != end:
            raise InvalidClientJSON(f"Expecting ',' delimiter: char {stop}")


def prefill_body(text: str, members: list[tuple[str, Any, int, int]]) -> bytes:
    """P gets a one-token, non-streaming copy so it only prefills and then parks the KV."""
    parts = [text[s:e] for key, _, s, e in members if key not in _P_REPLACED and key not in _P_DROPPED]
    parts.append(_P_MEMBERS)
    if any(key == "max_completion_tokens" for key, _, _, _ in members):
        parts.append('"max_completion_tokens":1')
    return ("{" + ",".join(parts) + "}").encode()


def decode_body(raw: bytes, text: str, members: list[tuple[str, Any, int, int]], kv_member: str | None) -> bytes:
    """D gets the original request plus P's KV location (as vLLM's proxy: only if non-empty)."""
    if kv_member is None:
        return raw
    parts = [text[s:e] for key, _, s, e in members if key != _KV_KEY]
    parts.append(kv_member)
    return ("{" + ",".join(parts) + "}").encode()


def kv_member_of(raw: bytes) -> str | None:
    """The ``"kv_transfer_params": {...}`` member of P's answer, as P wrote it; None if P
    sent none (or an empty one). ValueError if P's answer is not JSON."""
    text = raw.decode("utf-8")
    try:
        members = parse_members(text)
    except NotAnObject:
        return None
    found = None
    for key, value, s, e in members:
        if key == _KV_KEY:
            found = text[s:e] if isinstance(value, dict) and value else None
    return found


# --------------------------------------------------------------------------- backend HTTP client


class BackendFailure(Exception):
    """A backend could not be used; ``kind`` is the errors_total label."""

    kind = "disconnected"


class ConnectFailed(BackendFailure):
    kind = "connect"

    def __init__(self, os_error: BaseException) -> None:
        super().__init__(f"cannot connect ({type(os_error).__name__}: {os_error})")


class BackendTimeout(BackendFailure):
    kind = "timeout"


class Disconnected(BackendFailure):
    kind = "disconnected"


class ProtocolFailure(BackendFailure):
    kind = "bad_response"


# Response framing states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a backend, one response at a time.

    The body arrives as the pieces the socket delivered (chunked framing removed); reading
    pauses while more than READ_PAUSE_BYTES wait for a slow client.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.failure: BackendFailure | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self.pieces: collections.deque[bytes] = collections.deque()
        self.queued = 0
        self.paused = False
        self.new_response(False)

    def new_response(self, head_only: bool) -> None:
        self.state = _HEAD
        self.head_only = head_only
        self.status = 0
        self.headers: dict[str, str] = {}
        self.remaining = 0
        self.keep_alive = True
        self.got_bytes = False

    # ----- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(ProtocolFailure(f"invalid HTTP response from backend: {exc}"))
            return
        if self.queued > READ_PAUSE_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state == _UNTIL_CLOSE:
            self.state = _DONE
        elif self.state != _DONE and self.failure is None:
            cause = f"{type(exc).__name__}: {exc}" if exc else "closed by the backend"
            where = "before the response" if self.state == _HEAD and not self.got_bytes else "before the response was complete"
            self.failure = Disconnected(f"connection lost {where} ({cause})")
        self._wake()

    # ----- parsing

    def _parse(self) -> None:
        buf = self.buf
        while buf:
            state = self.state
            if state == _LENGTH or state == _CHUNK_DATA:
                n = min(len(buf), self.remaining)
                piece = bytes(buf[:n])
                del buf[:n]
                self.pieces.append(piece)
                self.queued += n
                self.remaining -= n
                if not self.remaining:
                    self.state = _DONE if state == _LENGTH else _CHUNK_END
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise ValueError("chunk size line too long")
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0].strip(), 16)
                del buf[: end + 2]
                if size:
                    self.remaining = size
                    self.state = _CHUNK_DATA
                else:
                    self.state = _TRAILERS
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                del buf[:2]
                self.state = _CHUNK_SIZE
            elif state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_RESPONSE_HEAD:
                        raise ValueError("response head too large")
                    return
                head = bytes(buf[:end]).decode("latin-1")
                del buf[: end + 4]
                self._parse_head(head)
            elif state == _TRAILERS:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    del buf[: end + 4]
                self.state = _DONE
            elif state == _UNTIL_CLOSE:
                self.pieces.append(bytes(buf))
                self.queued += len(buf)
                buf.clear()
            else:  # _DONE: bytes after a complete response; never reuse this connection
                self.keep_alive = False
                buf.clear()

    def _parse_head(self, head: str) -> None:
        lines = head.split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        if not version.startswith("HTTP/"):
            raise ValueError(f"bad status line {lines[0][:100]!r}")
        self.status = int(status)
        if 100 <= self.status < 200:
            return  # informational (100 Continue): the real head follows
        headers = self.headers
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        self.keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        if self.head_only or self.status in (204, 304):
            self.state = _DONE
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.state = _CHUNK_SIZE
        elif "content-length" in headers:
            self.remaining = int(headers["content-length"])
            if self.remaining < 0:
                raise ValueError("negative Content-Length")
            self.state = _LENGTH if self.remaining else _DONE
        else:
            self.state = _UNTIL_CLOSE
            self.keep_alive = False

    # ----- waiting

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, failure: BackendFailure) -> None:
        if self.failure is None:
            self.failure = failure
        self.abort()
        self._wake()

    def _on_timeout(self, timeout: float) -> None:
        self._fail(BackendTimeout(f"no data for {timeout:g}s"))

    async def _wait(self, timeout: float) -> None:
        if self.failure is not None:
            raise self.failure
        if self.closed:
            raise Disconnected("connection closed")
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, self._on_timeout, timeout)
        try:
            await waiter
        finally:
            self.waiter = None
            timer.cancel()

    async def read_head(self, timeout: float) -> None:
        while self.state == _HEAD:
            await self._wait(timeout)

    async def read_piece(self, timeout: float) -> bytes:
        """The body bytes that have arrived (joined), waiting for some; b"" at the end."""
        while not self.pieces:
            if self.state == _DONE:
                return b""
            await self._wait(timeout)
        pieces = self.pieces
        data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self.queued = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def read_body(self, timeout: float, limit: int | None = None) -> bytes:
        """The whole body (or its first ``limit`` bytes)."""
        parts = []
        size = 0
        while limit is None or size < limit:
            piece = await self.read_piece(timeout)
            if not piece:
                break
            parts.append(piece)
            size += len(piece)
        data = b"".join(parts)
        return data if limit is None else data[:limit]

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def complete(self) -> bool:
        return self.state == _DONE and not self.pieces

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """A clean close (FIN) after a complete response, an abort (RST) otherwise."""
        if not self.complete:
            self.abort()
        elif self.transport is not None:
            self.closed = True
            self.transport.close()


class Pool:
    """Keep-alive connections to one backend; no limit on their number (as limit=0)."""

    def __init__(self, backend: Backend, connect_timeout: float) -> None:
        self.backend = backend
        self.connect_timeout = connect_timeout
        self.host_header = f"{http_url(backend.host, backend.port)[7:]}"
        self.idle: list[Conn] = []

    async def _connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Conn(loop), self.backend.host, self.backend.port),
                self.connect_timeout,
            )
        except WAIT_TIMEOUT:
            raise BackendTimeout(f"connect took longer than {self.connect_timeout:g}s") from None
        except OSError as exc:
            raise ConnectFailed(exc) from None
        return conn  # type: ignore[return-value]

    def _idle_conn(self) -> Conn | None:
        if not self.idle:
            return None
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_EXPIRY_S:
                return conn
            conn.abort()
        return None

    async def request(
        self, head: bytes, body: bytes, timeout: float, head_only: bool = False, after_send: Callable[[], None] | None = None
    ) -> Conn:
        """Send one request, call ``after_send`` (work that can overlap the backend's), wait for
        the response head. A pooled connection that turns out to be closed before any answer
        byte is replaced by a fresh one, once."""
        conn = self._idle_conn()
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, timeout, head_only, after_send)
            except Disconnected:
                if conn.got_bytes:
                    raise
            after_send = None  # it ran
        return await self._exchange(await self._connect(), head, body, timeout, head_only, after_send)

    @staticmethod
    async def _exchange(
        conn: Conn, head: bytes, body: bytes, timeout: float, head_only: bool, after_send: Callable[[], None] | None = None
    ) -> Conn:
        conn.new_response(head_only)
        assert conn.transport is not None
        try:
            conn.transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                conn.transport.write(body)
            if after_send is not None:
                after_send()
            await conn.read_head(timeout)
        except BaseException:
            conn.abort()
            raise
        return conn

    def release(self, conn: Conn) -> None:
        """Back to the pool if the response was read to its end, else closed."""
        if conn.complete and conn.keep_alive and not conn.closed and not conn.buf and conn.failure is None:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
        else:
            conn.abort()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().abort()


def _header_value(value: str) -> str:
    """Header values from the client go to the backends: no CR/LF smuggling."""
    return value.replace("\r", " ").replace("\n", " ") if ("\r" in value or "\n" in value) else value


def request_head(method: str, path: str, host: str, body_length: int | None, extra: str = "") -> bytes:
    """An HTTP/1.1 request head; ``extra`` is preformatted ``Name: value\\r\\n`` lines."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body_length is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {body_length}\r\n"
    return (head + extra + "\r\n").encode("utf-8", "surrogateescape")


def describe(exc: BaseException, connect_timeout: float, read_timeout: float) -> str:
    """A cause string that says what actually broke (refused, timeout, reset, ...)."""
    if isinstance(exc, BackendTimeout):
        return f"timeout ({exc}; connect timeout {connect_timeout:g}s, read timeout {read_timeout:g}s)"
    return str(exc) or type(exc).__name__


def excerpt(raw: bytes) -> str:
    """Keep error bodies short enough for a JSON error and a log line."""
    return raw[:BODY_EXCERPT_CHARS].decode("utf-8", errors="replace")


def sse_error_event(message: str, request_id: str) -> bytes:
    """The SSE event that ends a stream whose decode backend failed midway."""
    event = {
        "error": {
            "message": message,
            "type": "bad_gateway",
            "role": "decode",
            "request_id": request_id,
        }
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def json_response(payload: dict[str, Any], status: int, headers: dict[str, str]) -> web.Response:
    """JSON body with our diagnostic headers."""
    return web.Response(
        body=json.dumps(payload).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


# --------------------------------------------------------------------------- metrics


def _labels(**labels: str) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


class Histogram:
    """A Prometheus histogram; observe() is a bisect and three additions."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            out.append(f'{self.name}_bucket{{le="{bound:g}"}} {cumulative}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{self.name}_sum {self.sum!r}")
        out.append(f"{self.name}_count {self.count}")
        return out


class Metrics:
    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()
        self.kv_missing = 0
        self.prefill = Histogram("disagg_proxy_prefill_seconds", "Time of the P request (send to the end of P's answer).")
        self.first_byte = Histogram(
            "disagg_proxy_decode_first_byte_seconds", "Time from sending the request to D until D's first body bytes."
        )
        self.total = Histogram(
            "disagg_proxy_request_seconds", "Time from the start of a completion's handling to the end of the relayed answer (requests D answered)."
        )

    def render(self, proxy: Proxy) -> str:
        out = [
            "# HELP disagg_proxy_requests_total Requests answered, by route and HTTP status (499: client left first).",
            "# TYPE disagg_proxy_requests_total counter",
        ]
        out += [f"disagg_proxy_requests_total{_labels(route=r, status=s)} {n}" for (r, s), n in sorted(self.requests.items())]
        out += [
            "# HELP disagg_proxy_errors_total Failures by role (prefill, decode, client, proxy) and kind.",
            "# TYPE disagg_proxy_errors_total counter",
        ]
        out += [f"disagg_proxy_errors_total{_labels(role=r, kind=k)} {n}" for (r, k), n in sorted(self.errors.items())]
        for histogram in (self.prefill, self.first_byte, self.total):
            out += histogram.render()
        out += [
            "# HELP disagg_proxy_in_flight_requests Completions being handled now.",
            "# TYPE disagg_proxy_in_flight_requests gauge",
            f"disagg_proxy_in_flight_requests {proxy.in_flight}",
            "# HELP disagg_proxy_backend_healthy 1 if the backend is in the round robin, 0 if ejected.",
            "# TYPE disagg_proxy_backend_healthy gauge",
        ]
        states = proxy.states
        out += [f"disagg_proxy_backend_healthy{_labels(role=s.backend.role, backend=s.backend.url)} {int(s.healthy)}" for s in states]
        out += [
            "# HELP disagg_proxy_backend_ejections_total Times the backend was taken out of the round robin.",
            "# TYPE disagg_proxy_backend_ejections_total counter",
        ]
        out += [f"disagg_proxy_backend_ejections_total{_labels(role=s.backend.role, backend=s.backend.url)} {s.ejections}" for s in states]
        out += [
            "# HELP disagg_proxy_kv_transfer_params_missing_total P answers without kv_transfer_params (D re-prefills).",
            "# TYPE disagg_proxy_kv_transfer_params_missing_total counter",
            f"disagg_proxy_kv_transfer_params_missing_total {self.kv_missing}",
        ]
        return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the proxy


class BackendState:
    """Health of one backend as the round robin sees it."""

    def __init__(self, backend: Backend, pool: Pool) -> None:
        self.backend = backend
        self.pool = pool
        self.healthy = True
        self.failures = 0  # failed probes in a row
        self.last_error: str | None = None
        self.ejected_at = 0.0
        self.ejections = 0


class Proxy:
    """Holds the backends, their pools and health, the round-robin cursors and the metrics."""

    def __init__(
        self,
        prefill: list[Backend],
        decode: list[Backend],
        connect_timeout: float,
        read_timeout: float,
        health_interval: float = 2.0,
        health_timeout: float = 1.0,
        eject_after: int = 2,
    ) -> None:
        self.prefill = prefill
        self.decode = decode
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.eject_after = eject_after
        self.roles: dict[str, list[BackendState]] = {
            PREFILL: [BackendState(b, Pool(b, connect_timeout)) for b in prefill],
            DECODE: [BackendState(b, Pool(b, connect_timeout)) for b in decode],
        }
        self.states = self.roles[PREFILL] + self.roles[DECODE]
        self._cursor = {PREFILL: 0, DECODE: 0}
        self.metrics = Metrics()
        self.in_flight = 0
        self.draining = False
        self.drained = asyncio.Event()
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the background health checks (inside the running loop)."""
        self._health_task = asyncio.ensure_future(self._health_loop())

    async def close(self) -> None:
        """Stop probing and close pooled connections so backends see a clean shutdown."""
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
            self._health_task = None
        for state in self.states:
            state.pool.close()

    def _describe(self, exc: BaseException) -> str:
        return describe(exc, self.connect_timeout, self.read_timeout)

    # ----------------------------------------------------------------- round robin & health

    def pick(self, role: str) -> BackendState | None:
        """Next healthy backend of the role, round robin (P and D independently)."""
        states = self.roles[role]
        n = len(states)
        cursor = self._cursor[role]
        for i in range(n):
            state = states[(cursor + i) % n]
            if state.healthy:
                self._cursor[role] = cursor + i + 1
                return state
        return None

    def eject(self, state: BackendState, reason: str) -> None:
        if not state.healthy:
            return
        state.healthy = False
        state.ejected_at = time.monotonic()
        state.ejections += 1
        state.pool.close()
        left = sum(s.healthy for s in self.roles[state.backend.role])
        LOG.warning(
            "backend ejected: %s %s (%s); %d healthy %s backend(s) left",
            state.backend.role,
            state.backend.url,
            reason,
            left,
            state.backend.role,
        )

    def _probe_result(self, state: BackendState, error: str | None) -> None:
        if error is None:
            state.failures = 0
            state.last_error = None
            if not state.healthy:
                state.healthy = True
                LOG.info(
                    "backend returned: %s %s (healthy again after %.1fs out)",
                    state.backend.role,
                    state.backend.url,
                    time.monotonic() - state.ejected_at,
                )
            return
        state.failures += 1
        state.last_error = error
        if state.failures >= self.eject_after:
            self.eject(state, f"{state.failures} failed health checks in a row, last: {error}")

    async def _probe(self, state: BackendState) -> str | None:
        """One GET /health with a short timeout on a fresh connection; the error, or None."""
        timeout = self.health_timeout
        head = request_head("GET", "/health", state.pool.host_header, None, "Connection: close\r\n")
        conn: Conn | None = None
        try:
            conn = await asyncio.wait_for(self._probe_exchange(state.pool, head), timeout)
            if conn.status != 200:
                return f"HTTP {conn.status}"
            return None
        except WAIT_TIMEOUT:
            return f"timeout (no answer within {timeout:g}s)"
        except BackendFailure as exc:
            return str(exc)
        finally:
            if conn is not None:
                conn.close()

    @staticmethod
    async def _probe_exchange(pool: Pool, head: bytes) -> Conn:
        conn = await pool._connect()
        try:
            await pool._exchange(conn, head, b"", 3600.0, False)
            await conn.read_body(3600.0, BODY_EXCERPT_CHARS)
        except BaseException:
            conn.abort()
            raise
        return conn

    async def probe(self, state: BackendState) -> dict[str, Any]:
        error = await self._probe(state)
        self._probe_result(state, error)
        return {
            "url": state.backend.url,
            "role": state.backend.role,
            "healthy": error is None,
            "error": error,
            "ejected": not state.healthy,
        }

    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(self.probe(s) for s in self.states))
            await asyncio.sleep(self.health_interval)

    def _no_healthy(self, role: str, request_id: str) -> web.Response:
        states = self.roles[role]
        why = [{"url": s.backend.url, "error": s.last_error or "ejected"} for s in states]
        message = f"no healthy {role} backend: " + "; ".join(f"{w['url']} ({w['error']})" for w in why)
        self.metrics.errors[(role, "no_healthy_backend")] += 1
        payload = {"error": {"message": message, "type": "service_unavailable", "role": role, "backends": why}}
        return json_response(payload, 503, {"X-Request-Id": request_id})

    # ----------------------------------------------------------------- completions

    async def handle_completion(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions and /v1/chat/completions: P first, then relay D."""
        self.in_flight += 1
        status = "499"
        try:
            response = await self._completion(request)
            status = str(response.status)
            return response
        except Exception:
            status = "500"  # aiohttp answers an unhandled exception with a 500
            raise
        finally:
            self.in_flight -= 1
            self.metrics.requests[(request.path, status)] += 1
            if self.draining and not self.in_flight:
                self.drained.set()

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-Id") or str(uuid.uuid4())
        if self.draining:
            self.metrics.errors[("proxy", "shutting_down")] += 1
            payload = {"error": {"message": "proxy is shutting down", "type": "service_unavailable", "role": None}}
            response = json_response(payload, 503, {"X-Request-Id": request_id})
            response.force_close()
            return response
        raw = await request.read()
        deferred: list[tuple[int, int]] = []
        try:
            text = raw.decode("utf-8")
            members = parse_members(text, deferred)
        except NotAnObject:
            return self._client_error("request body must be a JSON object", request_id)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._client_error(f"request body is not valid JSON: {exc}", request_id)

        prefill = self.pick(PREFILL)
        if prefill is None:
            return self._no_healthy(PREFILL, request_id)
        decode = self.pick(DECODE)
        if decode is None:
            return self._no_healthy(DECODE, request_id)
        stats = RequestStats(request_id, request.path, prefill.backend, decode.backend)
        extra = f"X-Request-Id: {_header_value(request_id)}\r\n"
        authorization = request.headers.get("Authorization")
        if authorization:
            extra += f"Authorization: {_header_value(authorization)}\r\n"
        try:
            return await self._proxy(request, raw, text, members, deferred, extra, stats, prefill, decode)
        except InvalidClientJSON as exc:
            stats.status = 400
            stats.error = f"request body is not valid JSON: {exc}"
            return self._client_error(stats.error, request_id)
        except BackendError as err:
            stats.status = 502
            stats.error = str(err)
            self.metrics.errors[(err.backend.role, err.kind)] += 1
            return json_response(err.payload(), 502, _diagnostic_headers(stats))
        except asyncio.CancelledError:
            stats.error = "cancelled (client gone or proxy shutting down)"
            raise
        finally:
            total = time.perf_counter() - stats.started
            if stats.decode_first_byte_ms is not None:
                self.metrics.total.observe(total)
            LOG.info(stats.log_line(total * 1000.0))

    def _client_error(self, message: str, request_id: str) -> web.Response:
        """400 in the OpenAI error shape; the client's mistake, no backend involved."""
        self.metrics.errors[("client", "bad_request")] += 1
        payload = {"error": {"message": message, "type": "invalid_request_error"}}
        return json_response(payload, 400, {"X-Request-Id": request_id})

    def _backend_error(self, state: BackendState, exc: BackendFailure, prefix: str = "", status: int | None = None) -> BackendError:
        """A failure on the request path; a connection that cannot be made ejects the backend."""
        cause = prefix + self._describe(exc)
        if isinstance(exc, ConnectFailed):
            self.eject(state, f"connection error on the request path: {exc}")
        return BackendError(state.backend, cause, status, kind=exc.kind)

    async def _proxy(
        self,
        request: web.Request,
        raw: bytes,
        text: str,
        members: list[tuple[str, Any, int, int]],
        deferred: list[tuple[int, int]],
        extra: str,
        stats: RequestStats,
        prefill: BackendState,
        decode: BackendState,
    ) -> web.StreamResponse:
        """The two legs of one request; BackendError means nothing was sent to the client.

        Long token-id arrays are validated while P works on the request (InvalidClientJSON: a
        400, P's connection is dropped and D never sees the request)."""
        start = time.perf_counter()
        validate = (lambda: check_deferred(text, deferred)) if deferred else None
        kv_member = await self._prefill(prefill, request.path, prefill_body(text, members), extra, validate)
        elapsed = time.perf_counter() - start
        stats.prefill_ms = elapsed * 1000.0
        self.metrics.prefill.observe(elapsed)
        if kv_member is not None:
            stats.kv_params = "present"
        else:
            stats.kv_params = "missing"
            self.metrics.kv_missing += 1
            LOG.warning(
                "request_id=%s prefill %s returned no kv_transfer_params: decode %s will re-prefill locally (no KV transfer)",
                stats.request_id,
                stats.prefill.url,
                stats.decode.url,
            )
        body = decode_body(raw, text, members, kv_member)
        return await self._relay_decode(request, decode, body, extra, stats)

    async def _prefill(
        self, state: BackendState, path: str, body: bytes, extra: str, after_send: Callable[[], None] | None = None
    ) -> str | None:
        """Run the one-token request on P, read it fully, return its kv_transfer_params member."""
        pool = state.pool
        try:
            head = request_head("POST", path, pool.host_header, len(body), extra)
            conn = await pool.request(head, body, self.read_timeout, after_send=after_send)
            try:
                raw = await conn.read_body(self.read_timeout)
            finally:
                pool.release(conn)
        except BackendFailure as exc:
            raise self._backend_error(state, exc) from exc
        if not 200 <= conn.status < 300:
            raise BackendError(state.backend, f"HTTP {conn.status}", conn.status, excerpt(raw))
        try:
            return kv_member_of(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BackendError(state.backend, f"invalid JSON ({exc})", conn.status, excerpt(raw), kind="bad_response") from exc

    async def _relay_decode(
        self,
        request: web.Request,
        state: BackendState,
        body: bytes,
        extra: str,
        stats: RequestStats,
    ) -> web.StreamResponse:
        """Relay D's answer as it arrives, with D's status and content type."""
        pool = state.pool
        start = time.perf_counter()
        try:
            conn = await pool.request(request_head("POST", request.path, pool.host_header, len(body), extra), body, self.read_timeout)
        except BackendFailure as exc:
            raise self._backend_error(state, exc) from exc
        try:
            if not 200 <= conn.status < 300:
                try:
                    raw = await conn.read_body(self.read_timeout, BODY_EXCERPT_CHARS)
                except BackendFailure:
                    raw = b""
                raise BackendError(state.backend, f"HTTP {conn.status}", conn.status, excerpt(raw))
            try:
                first = await conn.read_piece(self.read_timeout)
            except BackendFailure as exc:
                raise self._backend_error(state, exc, "before first byte: ", conn.status) from exc
            elapsed = time.perf_counter() - start
            stats.decode_first_byte_ms = elapsed * 1000.0
            self.metrics.first_byte.observe(elapsed)
            headers = _diagnostic_headers(stats)
            headers["Content-Type"] = conn.headers.get("content-type", "application/json")
            out = RelayResponse(status=conn.status, headers=headers)
            length = conn.headers.get("content-length")
            if length is not None and "chunked" not in conn.headers.get("transfer-encoding", ""):
                out.content_length = int(length)
            if self.draining:
                out.force_close()
            stats.status = conn.status
            await out.prepare(request)
            if conn.complete:  # D's whole answer is here: head, body and end in one send
                await out.write_eof(first)
                stats.bytes_out = len(first)
            else:
                await self._pump(first, conn, out, stats)
            return out
        finally:
            pool.release(conn)

    async def _pump(self, first: bytes, conn: Conn, out: web.StreamResponse, stats: RequestStats) -> None:
        """Copy chunks without buffering; turn mid-stream failures into a visible end."""
        try:
            if first:
                await out.write(first)
                stats.bytes_out += len(first)
            while True:
                chunk = await conn.read_piece(self.read_timeout)
                if not chunk:
                    break
                await out.write(chunk)
                stats.bytes_out += len(chunk)
        except ConnectionResetError:
            # The client went away: drop D's connection so D stops generating for nobody.
            stats.error = "client disconnected"
            self.metrics.errors[("client", "disconnected")] += 1
            conn.abort()
            return
        except BackendFailure as exc:
            await self._end_broken_stream(conn, out, stats, exc)
            return
        await out.write_eof()

    async def _end_broken_stream(self, conn: Conn, out: web.StreamResponse, stats: RequestStats, exc: BackendFailure) -> None:
        """Headers are gone already: say what broke in-band (SSE) or cut the body short."""
        conn.abort()
        self.metrics.errors[(DECODE, "mid_stream")] += 1
        message = f"decode backend {stats.decode.url} failed after streaming began: {self._describe(exc)}"
        stats.error = message
        LOG.error("request_id=%s %s", stats.request_id, message)
        if not conn.content_type.startswith("text/event-stream"):
            # A JSON body cannot carry an in-band error; a truncated body is the honest signal.
            out.force_close()
            return
        try:
            await out.write(sse_error_event(message, stats.request_id))
            await out.write_eof()
        except ConnectionResetError:
            pass

    # ----------------------------------------------------------------- health, models, metrics

    async def handle_health(self, request: web.Request) -> web.Response:
        """Probe every backend's /health concurrently; ready only if one P and one D answer.
        The probes count as health checks (a backend that answers returns to the round robin)."""
        results = await asyncio.gather(*(self.probe(s) for s in self.states))
        healthy_p = any(r["healthy"] for r in results if r["role"] == PREFILL)
        healthy_d = any(r["healthy"] for r in results if r["role"] == DECODE)
        ok = healthy_p and healthy_d and not self.draining
        payload = {
            "status": "ok" if ok else "unavailable",
            "prefill_instances": len(self.prefill),
            "decode_instances": len(self.decode),
            "backends": results,
        }
        return json_response(payload, 200 if ok else 503, {})

    async def handle_models(self, request: web.Request) -> web.Response:
        """GET /v1/models from a decode server, so clients can discover the model name."""
        request_id = request.headers.get("X-Request-Id") or str(uuid.uuid4())
        state = self.pick(DECODE)
        if state is None:
            response = self._no_healthy(DECODE, request_id)
        else:
            response = await self._models(state)
        self.metrics.requests[(request.path, str(response.status))] += 1
        return response

    async def _models(self, state: BackendState) -> web.Response:
        pool = state.pool
        try:
            conn = await pool.request(request_head("GET", "/v1/models", pool.host_header, None), b"", self.read_timeout)
            try:
                raw = await conn.read_body(self.read_timeout)
            finally:
                pool.release(conn)
        except BackendFailure as exc:
            err = self._backend_error(state, exc)
            self.metrics.errors[(DECODE, err.kind)] += 1
            return json_response(err.payload(), 502, {})
        return web.Response(body=raw, status=conn.status, headers={"Content-Type": conn.headers.get("content-type", "application/json")})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(self).encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


class RelayResponse(web.StreamResponse):
    """A StreamResponse whose head goes out with the first body bytes (one send, one wake-up
    of the client, instead of two); aiohttp versions without the switch send it at once."""

    _send_headers_immediately = False


def _diagnostic_headers(stats: RequestStats) -> dict[str, str]:
    """Headers that make every measurement traceable (see module docstring)."""
    headers = {
        "X-Request-Id": stats.request_id,
        "X-Proxy-Prefill-Backend": stats.prefill.url,
        "X-Proxy-Decode-Backend": stats.decode.url,
    }
    if stats.kv_params is not None:
        headers["X-KV-Transfer-Params"] = stats.kv_params
    if stats.prefill_ms is not None:
        headers["X-Proxy-Prefill-Ms"] = f"{stats.prefill_ms:.2f}"
    if stats.decode_first_byte_ms is not None:
        headers["X-Proxy-Decode-First-Byte-Ms"] = f"{stats.decode_first_byte_ms:.2f}"
    return headers


# --------------------------------------------------------------------------- server


def build_app(proxy: Proxy) -> web.Application:
    """Routes only; the pools live on the Proxy."""
    app = web.Application(client_max_size=CLIENT_MAX_BODY)
    for path in COMPLETION_PATHS:
        app.router.add_post(path, proxy.handle_completion)
    app.router.add_get("/health", proxy.handle_health)
    app.router.add_get("/healthcheck", proxy.handle_health)
    app.router.add_get("/v1/models", proxy.handle_models)
    app.router.add_get("/metrics", proxy.handle_metrics)
    return app


def _make_runner(app: web.Application) -> web.AppRunner:
    """Short handler-cancel wait on both old (site kwarg) and new (runner kwarg) aiohttp."""
    if "shutdown_timeout" in inspect.signature(web.BaseRunner.__init__).parameters:
        return web.AppRunner(app, access_log=None, shutdown_timeout=HANDLER_CANCEL_S)
    return web.AppRunner(app, access_log=None)


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM/SIGINT; then stop accepting, drain up to the grace, close and return."""
    stop = asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):  # before binding: no signal is lost
        loop.add_signal_handler(sig, on_signal)
    proxy = Proxy(
        prefill=[Backend(PREFILL, h, p) for h, p in zip(args.prefiller_hosts, args.prefiller_ports)],
        decode=[Backend(DECODE, h, p) for h, p in zip(args.decoder_hosts, args.decoder_ports)],
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        health_interval=args.health_interval,
        health_timeout=args.health_timeout,
        eject_after=args.eject_after,
    )
    runner = _make_runner(build_app(proxy))
    await runner.setup()
    server: asyncio.AbstractServer | None = None
    try:
        # Our own listener (not a TCPSite) so that stopping it stops only the accepting.
        server = await loop.create_server(runner.server, args.host, args.port, reuse_address=True, backlog=1024)
        port = server.sockets[0].getsockname()[1] if server.sockets else args.port
        LOG.info(
            "backends: prefill %s; decode %s; health checks every %gs (timeout %gs, eject after %d failures); event loop: %s",
            " ".join(b.url for b in proxy.prefill),
            " ".join(b.url for b in proxy.decode),
            args.health_interval,
            args.health_timeout,
            args.eject_after,
            _loop_name(loop),
        )
        await proxy.start()
        # Exactly this line signals readiness (--port 0 resolves to the real port here).
        LOG.info("proxy listening on %s", http_url(args.host, port))
        await stop.wait()
        server.close()  # no new connections from here on
        proxy.draining = True
        LOG.info(
            "signal received, shutting down: no new connections; %d request(s) in flight, waiting up to %gs for them",
            proxy.in_flight,
            args.shutdown_grace,
        )
        for conn in getattr(runner.server, "connections", []):
            conn.close()  # idle keep-alive connections close now, busy ones after their answer
        if proxy.in_flight:
            waits = [asyncio.ensure_future(proxy.drained.wait()), asyncio.ensure_future(force.wait())]
            await asyncio.wait(waits, timeout=args.shutdown_grace, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()
            if proxy.in_flight:
                LOG.warning("closing %d request(s) still in flight", proxy.in_flight)
        if runner.server is not None:
            await runner.server.shutdown(HANDLER_CANCEL_S)
    finally:
        if server is not None:
            server.close()
        await runner.cleanup()
        await proxy.close()


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(coro: Any) -> None:
    """asyncio.run on uvloop when it is importable (vLLM venvs ship uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    runner_class = getattr(asyncio, "Runner", None)  # Python 3.11+
    if runner_class is not None:
        with runner_class(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)
    else:  # older vLLM venvs
        uvloop.install()
        asyncio.run(coro)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI compatible with vLLM's toy proxy (plural and singular spellings)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (logged)")
    parser.add_argument("--prefiller-hosts", "--prefiller-host", nargs="+", default=["localhost"])
    parser.add_argument("--prefiller-ports", "--prefiller-port", nargs="+", type=int, default=[8100])
    parser.add_argument("--decoder-hosts", "--decoder-host", nargs="+", default=["localhost"])
    parser.add_argument("--decoder-ports", "--decoder-port", nargs="+", type=int, default=[8200])
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to open a TCP connection to a backend",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=300.0,
        help="seconds a backend may stay silent (no bytes) before it counts as failed",
    )
    parser.add_argument(
        "--health-interval",
        type=float,
        default=2.0,
        help="seconds between health checks (GET /health) of each backend",
    )
    parser.add_argument(
        "--health-timeout",
        type=float,
        default=1.0,
        help="seconds a health check may take before it counts as failed",
    )
    parser.add_argument(
        "--eject-after",
        type=int,
        default=2,
        help="failed health checks in a row that take a backend out of the round robin",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        help="on SIGTERM/SIGINT, seconds in-flight requests may take to finish",
    )
    args = parser.parse_args(argv)
    for role, hosts, ports in (
        ("prefiller", args.prefiller_hosts, args.prefiller_ports),
        ("decoder", args.decoder_hosts, args.decoder_ports),
    ):
        if len(hosts) != len(ports):
            parser.error(f"--{role}-hosts has {len(hosts)} value(s) but --{role}-ports has {len(ports)}; give one port per host")
    if args.health_interval <= 0 or args.health_timeout <= 0:
        parser.error("--health-interval and --health-timeout must be positive")
    if args.eject_after < 1:
        parser.error("--eject-after must be at least 1")
    if args.shutdown_grace < 0:
        parser.error("--shutdown-grace must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 0 after a signal-driven shutdown."""
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s disagg_proxy: %(message)s",
    )
    # One log line per request: skip what the format does not use (stack walk, thread and
    # process names), as the logging module allows.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    try:
        run(serve(args))
    except OSError as exc:  # typically: port in use, or host not local
        LOG.error("cannot listen on %s: %s", http_url(args.host, args.port), exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
