"""Pooled backend connections and the request heads sent over them.

Kept-alive connections are reused so that no request pays for a new TCP
connection to P or D inside the latency being measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .backends import Backend, http_url
from .conn import WAIT_TIMEOUT, BackendTimeout, Conn, ConnectFailed, Disconnected

BODY_EXCERPT_CHARS = 2000
# Idle pooled connections are dropped after this; vLLM (uvicorn) closes them after 5 s.
IDLE_EXPIRY_S = 4.0


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


def header_value(value: str) -> str:
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
