"""One keep-alive HTTP/1.1 connection to a backend, on an asyncio protocol.

A small client of our own instead of an aiohttp session: no per-request
session, timeout task or header parsing beyond what relaying needs, so the
proxy adds as little as possible to every disaggregated measurement.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Awaitable, Callable

# A backend's response head larger than this is a protocol error.
MAX_RESPONSE_HEAD = 64 * 1024
# Stop reading from a backend while this much of its body waits for a slow client.
READ_PAUSE_BYTES = 1024 * 1024
# What asyncio.wait_for raises on a timeout. asyncio.TimeoutError (not the builtin) on purpose:
# before Python 3.11 they differ, and vLLM venvs may be older.
WAIT_TIMEOUT = (asyncio.TimeoutError,)


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
        # One lazily re-armed timer instead of one per wait (a wait per relayed chunk).
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.wait_timeout = 0.0
        self.wait_started = 0.0
        self.last_data = 0.0
        # While relay() runs: where body pieces go as they are parsed, with no task switch.
        self.sink: Callable[[bytes], None] | None = None
        self.sink_blocked: Callable[[], bool] | None = None
        self.sink_error: ConnectionResetError | None = None
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
        self.last_data = self.loop.time()
        if self.state == _CHUNK_SIZE and not self.buf:
            data = self._whole_chunks(data)
        self.buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(ProtocolFailure(f"invalid HTTP response from backend: {exc}"))
            return
        if self.sink is not None and self.pieces:
            self._to_sink()
            if self.state != _DONE and self.sink is not None:
                return  # relayed; nothing for the waiting task to do
        if self.queued > READ_PAUSE_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def _to_sink(self) -> None:
        """Hand the parsed pieces on; stop handing on (and wake relay()) when the client is
        gone or reads slower than we write."""
        pieces = self.pieces
        data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self.queued = 0
        try:
            self.sink(data)  # type: ignore[misc]
        except ConnectionResetError as exc:
            self.sink_error = exc
            self.sink = None
            return
        if self.sink_blocked():  # type: ignore[misc]
            self.sink = None

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

    def _whole_chunks(self, data: bytes) -> bytes:
        """The relay's common case, one or more whole chunks (an SSE event each): their data
        becomes pieces without a pass through ``buf``. What is left (a partial chunk, the last
        chunk, a chunk extension) goes to the state machine."""
        at = 0
        while True:
            end = data.find(b"\r\n", at)
            if end < 0:
                break
            try:
                size = int(data[at:end], 16)
            except ValueError:
                break
            stop = end + 2 + size
            if size <= 0 or data[stop : stop + 2] != b"\r\n":
                break
            self.pieces.append(data[end + 2 : stop])
            self.queued += size
            at = stop + 2
        return data[at:] if at else data

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

    def _arm(self, at: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = at
        self.timer = self.loop.call_at(at, self._check_timeout)

    def _check_timeout(self) -> None:
        """A wait fails after wait_timeout without data (counted from the later of its start and
        the last bytes received); with no one waiting the timer is not re-armed."""
        self.timer = None
        if self.waiter is None or self.waiter.done():
            return
        deadline = max(self.last_data, self.wait_started) + self.wait_timeout
        if self.loop.time() >= deadline:
            self._fail(BackendTimeout(f"no data for {self.wait_timeout:g}s"))
        else:
            self._arm(deadline)

    async def _wait(self, timeout: float) -> None:
        if self.failure is not None:
            raise self.failure
        if self.closed:
            raise Disconnected("connection closed")
        waiter = self.waiter = self.loop.create_future()
        now = self.wait_started = self.loop.time()
        self.wait_timeout = timeout
        if self.timer is None or self.timer_at > now + timeout:
            self._arm(now + timeout)
        try:
            await waiter
        finally:
            self.waiter = None

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

    async def relay(
        self, send: Callable[[bytes], None], blocked: Callable[[], bool], drained: Callable[[], Awaitable[None]], timeout: float
    ) -> None:
        """Send the rest of the body to ``send`` as it arrives, straight from data_received (one
        task switch per stream, not per chunk); wait on ``drained`` while ``blocked``.
        ConnectionResetError from ``send`` (the client left) and BackendFailure propagate."""
        while True:
            if self.pieces:
                self.sink, self.sink_blocked = send, blocked
                self._to_sink()
                self.sink = None
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
            if self.sink_error is not None:
                error, self.sink_error = self.sink_error, None
                raise error
            if self.state == _DONE:
                return
            if blocked():
                await drained()
                continue
            self.sink, self.sink_blocked = send, blocked
            try:
                await self._wait(timeout)
            finally:
                self.sink = None

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
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """A clean close (FIN) after a complete response, an abort (RST) otherwise."""
        if not self.complete:
            self.abort()
        elif self.transport is not None:
            self.closed = True
            self.transport.close()
