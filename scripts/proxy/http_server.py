"""The proxy's HTTP/1.1 server side, on an asyncio protocol.

Our own instead of aiohttp's web server, because the proxy sits inside every disaggregated
measurement: whatever it spends per request and per chunk shows up in TTFT and ITL under load
(bench/proxy_overhead.py measures it against the least a Python proxy can pay). It does what
a proxy in front of `vllm bench serve` needs and no more: keep-alive, Content-Length
and chunked request bodies, ``Expect: 100-continue``, responses sent whole or streamed (head
with the first bytes), back-pressure from slow clients, and a graceful close.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

LOG = logging.getLogger("disagg_proxy")

MAX_HEAD = 64 * 1024
# Long prompts sent as token-id lists are large; a body above this is refused with a 413.
MAX_BODY = 256 * 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value
    body: bytes
    conn: Connection = field(repr=False)


class Response:
    """A whole answer: head and body in one send."""

    def __init__(self, body: bytes = b"", status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.body = body
        self.status = status
        self.headers = headers or {}
        self.close = False

    def force_close(self) -> None:
        self.close = True


def json_answer(payload: dict[str, Any], status: int, headers: dict[str, str]) -> Response:
    return Response(json.dumps(payload).encode(), status, {"Content-Type": "application/json", **headers})


def _head(status: int, headers: dict[str, str], framing: str, close: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if framing:
        lines.append(framing)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class StreamOut:
    """A streamed answer. Its head leaves with the first body bytes (one send, one wake-up of
    the client); Content-Length framing when the length is known, else chunked (an HTTP/1.0
    client, which knows no chunks, reads to the close instead)."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        self.content_length: int | None = None
        self.close = False
        self._conn: Connection | None = None
        self._head_sent = False
        self.ended = False

    def force_close(self) -> None:
        self.close = True

    async def prepare(self, request: Request) -> None:
        self._conn = request.conn

    def _frame(self, data: bytes, last: bool) -> bytes:
        chunked = self.content_length is None and not self._conn.http10
        out = b""
        if not self._head_sent:
            self._head_sent = self._conn.streaming = True
            if self.content_length is not None:
                framing = f"Content-Length: {self.content_length}"
            else:
                framing = "Transfer-Encoding: chunked" if chunked else ""
            out = _head(self.status, self.headers, framing, self.close or self._conn.closing)
        if chunked and data:
            out += b"%x\r\n%b\r\n" % (len(data), data)
        elif data:
            out += data
        if chunked and last:
            out += b"0\r\n\r\n"
        return out

    async def write(self, data: bytes) -> None:
        """ConnectionResetError once the client is gone; waits while the client reads slowly."""
        self.send(data)
        if self.blocked:
            await self._conn.drained()

    def send(self, data: bytes) -> None:
        """write() without the wait: a relay sends each chunk, then waits only if ``blocked``."""
        self._conn.send(self._frame(data, False))

    @property
    def blocked(self) -> bool:
        """The client reads slower than we write (or is gone): wait on drained() before more."""
        return self._conn._writable is not None or self._conn.lost

    async def drained(self) -> None:
        await self._conn.drained()

    async def write_eof(self, data: bytes = b"") -> None:
        self._conn.send(self._frame(data, True))
        self.ended = True


Handler = Callable[[Request], Awaitable["Response | StreamOut"]]


class Connection(asyncio.Protocol):
    """One client connection: requests are read and answered one after the other."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.closing = False  # answer the current request, then close
        self.lost = False
        self.streaming = False  # the current answer's head is out: an error can only close
        self.http10 = False  # the current request's version: no chunked answers, close after
        self.head_method = False  # HEAD: the answer's head only
        self._writable: asyncio.Future[None] | None = None
        self._continue_sent = False

    # ----------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None:
            self._next()

    # ----------------------------------------------------------------- writing

    def send(self, data: bytes) -> None:
        if self.lost or self.transport.is_closing():
            raise ConnectionResetError("client disconnected")
        self.transport.write(data)

    async def drained(self) -> None:
        if self._writable is not None:
            await self._writable
        if self.lost:
            raise ConnectionResetError("client disconnected")

    def close(self) -> None:
        """Close now if idle, else after the answer being written."""
        self.closing = True
        if self.task is None and not self.lost:
            self.transport.close()

    # ----------------------------------------------------------------- reading

    def _next(self) -> None:
        """Start serving the next complete request in the buffer, if there is one."""
        try:
            request = self._parse()
        except BadRequest as exc:
            self.closing = True
            self._finish(json_answer({"error": {"message": str(exc), "type": "invalid_request_error"}}, exc.status, {}))
            return
        if request is not None:
            self.task = asyncio.ensure_future(self._serve(request))

    def _parse(self) -> Request | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                raise BadRequest(431, "request head too large")
            return None
        method, path, version, headers = parse_head(bytes(self.buffer[:end]))
        self.http10 = version == "HTTP/1.0"
        self.head_method = method == "HEAD"
        if self.http10 or headers.get("connection", "").lower() == "close":
            self.closing = True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body, used = dechunk(self.buffer, end + 4)
        else:
            length = content_length(headers)
            used = end + 4 + length
            body = bytes(self.buffer[end + 4 : used]) if len(self.buffer) >= used else None
        if body is None:
            if headers.get("expect", "").lower() == "100-continue" and not self._continue_sent:
                self._continue_sent = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        del self.buffer[:used]
        self._continue_sent = False
        return Request(method, path, headers, body, self)

    # ----------------------------------------------------------------- serving

    async def _serve(self, request: Request) -> None:
        answer: Response | StreamOut | None
        try:
            answer = await self.server.dispatch(request)
        except asyncio.CancelledError:
            self.closing, answer = True, None
        except Exception:
            LOG.exception("error handling %s %s", request.method, request.path)
            answer = None if self.streaming else json_answer({"error": {"message": "internal proxy error", "type": "internal_error"}}, 500, {})
            self.closing = self.closing or self.streaming
        if isinstance(answer, StreamOut):
            if not answer._head_sent:
                answer = Response(b"", answer.status, answer.headers)  # a stream that never wrote
            elif not answer.ended:
                self.closing = True  # its body was cut short: only closing tells the client
        self.streaming = False
        self._finish(answer)

    def _finish(self, answer: Response | StreamOut | None) -> None:
        """After an answer: write it if whole, then go on with the connection or close it."""
        self.task = None
        if answer is not None and answer.close:
            self.closing = True
        if isinstance(answer, Response) and not self.lost:
            framing = f"Content-Length: {len(answer.body)}"
            body = b"" if self.head_method else answer.body
            self.transport.write(_head(answer.status, answer.headers, framing, self.closing) + body)
        if self.lost:
            return
        if self.closing:
            self.transport.close()
        elif self.buffer:
            self._next()


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, f"bad request line: {lines[0][:200]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, f"bad header line: {line[:200]!r}")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1].split("?", 1)[0], parts[2], headers


def content_length(headers: dict[str, str]) -> int:
    raw = headers.get("content-length", "0")
    if not raw.isdigit():
        raise BadRequest(400, f"bad Content-Length: {raw[:50]!r}")
    if int(raw) > MAX_BODY:
        raise BadRequest(413, f"request body of {raw} bytes is over the limit of {MAX_BODY}")
    return int(raw)


def dechunk(buffer: bytearray, start: int) -> tuple[bytes | None, int]:
    """A chunked body from ``buffer[start:]``: (body, bytes used), or (None, 0) if incomplete."""
    parts, at, total = [], start, 0
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None, 0
        size_text = bytes(buffer[at:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadRequest(400, f"bad chunk size: {size_text[:20]!r}") from None
        total += size
        if total > MAX_BODY:
            raise BadRequest(413, f"request body is over the limit of {MAX_BODY} bytes")
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            if trailer_end < 0:
                return None, 0
            return b"".join(parts), trailer_end + 4
        data_end = line_end + 2 + size
        if len(buffer) < data_end + 2:
            return None, 0
        parts.append(bytes(buffer[line_end + 2 : data_end]))
        at = data_end + 2


class HttpServer:
    """Routes by (method, path); 404 for an unknown path, 405 for a known one asked wrongly."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.connections: set[Connection] = set()

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    async def dispatch(self, request: Request) -> Response | StreamOut:
        handler = self.routes.get(("GET" if request.method == "HEAD" else request.method, request.path))
        if handler is not None:
            return await handler(request)
        allowed = sorted(m for m, p in self.routes if p == request.path)
        if allowed:
            return json_answer({"error": {"message": f"method {request.method} not allowed"}}, 405, {"Allow": ", ".join(allowed)})
        return json_answer({"error": {"message": f"no route {request.path}"}}, 404, {})

    def protocol(self) -> Connection:
        return Connection(self)

    async def shutdown(self, timeout: float) -> None:
        """Cancel what still runs, give it ``timeout`` to end, then close every connection."""
        tasks = [c.task for c in self.connections if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for conn in list(self.connections):
            conn.transport.close()
