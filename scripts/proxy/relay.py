"""One completion through the proxy: P first, then D's answer relayed as it arrives.

The client's answer starts only with D's first bytes, so that
``X-Proxy-Decode-First-Byte-Ms`` is exact, and is never buffered after that,
so that the client measures D's token timing and not the proxy's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from .backends import PREFILL, Backend, BackendError, RequestStats
from .balancer import BackendState, Balancer
from .conn import BackendFailure, Conn, ConnectFailed
from .http_server import Request, Response, StreamOut
from .metrics import Metrics
from .pool import BODY_EXCERPT_CHARS, describe, excerpt, header_value, request_head
from .responses import diagnostic_headers, json_response, sse_error_event
from .splice import InvalidClientJSON, NotAnObject, check_deferred, decode_body, kv_member_of, parse_members, prefill_body

LOG = logging.getLogger("disagg_proxy")
# Requests logged at INFO before sampling starts, so that a run's start can be read in the log.
LOG_FIRST_REQUESTS = 10


class Proxy(Balancer):
    """Adds to the balancer what a request needs: the relay, the routes and the metrics."""

    def __init__(
        self,
        prefill: list[Backend],
        decode: list[Backend],
        connect_timeout: float,
        read_timeout: float,
        health_interval: float = 2.0,
        health_timeout: float = 1.0,
        eject_after: int = 2,
        unified: list[Backend] | None = None,
        log_every: int = 1000,
    ) -> None:
        super().__init__(prefill, decode, connect_timeout, health_interval, health_timeout, eject_after, unified)
        self.read_timeout = read_timeout
        self.metrics = Metrics()
        self.in_flight = 0
        self.draining = False
        self.log_every = log_every
        self.finished = 0
        self.drained = asyncio.Event()

    def _describe(self, exc: BaseException) -> str:
        return describe(exc, self.connect_timeout, self.read_timeout)

    def _no_healthy(self, role: str, request_id: str) -> Response:
        states = self.roles[role]
        why = [{"url": s.backend.url, "error": s.last_error or "ejected"} for s in states]
        message = f"no healthy {role} backend: " + "; ".join(f"{w['url']} ({w['error']})" for w in why)
        self.metrics.errors[(role, "no_healthy_backend")] += 1
        payload = {"error": {"message": message, "type": "service_unavailable", "role": role, "backends": why}}
        return json_response(payload, 503, {"X-Request-Id": request_id})

    # ----------------------------------------------------------------- completions

    async def handle_completion(self, request: Request) -> Response | StreamOut:
        """POST /v1/completions and /v1/chat/completions: P first, then relay D (or relay a unified replica)."""
        self.in_flight += 1
        status = "499"
        try:
            response = await self._completion(request)
            status = str(response.status)
            return response
        except Exception:
            status = "500"  # the server answers an unhandled exception with a 500
            raise
        finally:
            self.in_flight -= 1
            self.metrics.requests[(request.path, status)] += 1
            if self.draining and not self.in_flight:
                self.drained.set()

    async def _completion(self, request: Request) -> Response | StreamOut:
        request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        if self.draining:
            self.metrics.errors[("proxy", "shutting_down")] += 1
            payload = {"error": {"message": "proxy is shutting down", "type": "service_unavailable", "role": None}}
            response = json_response(payload, 503, {"X-Request-Id": request_id})
            response.force_close()
            return response
        raw = request.body
        deferred: list[tuple[int, int]] = []
        try:
            text = raw.decode("utf-8")
            members = parse_members(text, deferred)
        except NotAnObject:
            return self._client_error("request body must be a JSON object", request_id)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._client_error(f"request body is not valid JSON: {exc}", request_id)

        prefill = None
        if not self.unified:
            prefill = self.pick(PREFILL)
            if prefill is None:
                return self._no_healthy(PREFILL, request_id)
        decode = self.pick(self.target)
        if decode is None:
            return self._no_healthy(self.target, request_id)
        stats = RequestStats(request_id, request.path, prefill.backend if prefill else None, decode.backend)
        extra = f"X-Request-Id: {header_value(request_id)}\r\n"
        authorization = request.headers.get("authorization")
        if authorization:
            extra += f"Authorization: {header_value(authorization)}\r\n"
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
            return json_response(err.payload(), 502, diagnostic_headers(stats))
        except asyncio.CancelledError:
            stats.error = "cancelled (client gone or proxy shutting down)"
            raise
        finally:
            total = time.perf_counter() - stats.started
            if stats.decode_first_byte_ms is not None:
                self.metrics.total.observe(total)
            self._log(stats, total * 1000.0)

    def _log(self, stats: RequestStats, total_ms: float) -> None:
        """Every failure, the first requests and every log_every-th at INFO; all at DEBUG.
        A line per request costs CPU on the measured path and fills disks on long runs."""
        self.finished += 1
        failed = stats.error is not None or stats.status is None or not 200 <= stats.status < 300
        if failed or self.finished <= LOG_FIRST_REQUESTS or self.finished % self.log_every == 0:
            LOG.info(stats.log_line(total_ms))
        elif LOG.isEnabledFor(logging.DEBUG):
            LOG.debug(stats.log_line(total_ms))

    def _client_error(self, message: str, request_id: str) -> Response:
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
        request: Request,
        raw: bytes,
        text: str,
        members: list[tuple[str, Any, int, int]],
        deferred: list[tuple[int, int]],
        extra: str,
        stats: RequestStats,
        prefill: BackendState | None,
        decode: BackendState,
    ) -> Response | StreamOut:
        """The two legs of one request; BackendError means nothing was sent to the client.

        Long token-id arrays are validated while P works on the request (InvalidClientJSON: a
        400, P's connection is dropped and D never sees the request). A unified replica
        (prefill None) gets the client's body as it came, after the same validation."""
        if prefill is None:
            if deferred:
                check_deferred(text, deferred)
            return await self._relay_decode(request, decode, raw, extra, stats)
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
        request: Request,
        state: BackendState,
        body: bytes,
        extra: str,
        stats: RequestStats,
    ) -> Response | StreamOut:
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
            headers = diagnostic_headers(stats)
            headers["Content-Type"] = conn.headers.get("content-type", "application/json")
            out = StreamOut(status=conn.status, headers=headers)
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

    async def _pump(self, first: bytes, conn: Conn, out: StreamOut, stats: RequestStats) -> None:
        """Copy chunks without buffering; turn mid-stream failures into a visible end."""
        try:
            if first:
                await out.write(first)
                stats.bytes_out += len(first)

            def send(data: bytes) -> None:
                out.send(data)
                stats.bytes_out += len(data)

            await conn.relay(send, lambda: out.blocked, out.drained, self.read_timeout)
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

    async def _end_broken_stream(self, conn: Conn, out: StreamOut, stats: RequestStats, exc: BackendFailure) -> None:
        """Headers are gone already: say what broke in-band (SSE) or cut the body short."""
        conn.abort()
        self.metrics.errors[(self.target, "mid_stream")] += 1
        message = f"{stats.decode.role} backend {stats.decode.url} failed after streaming began: {self._describe(exc)}"
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

    async def handle_health(self, request: Request) -> Response:
        """Probe every backend's /health concurrently; ready only if one P and one D (or one unified replica) answer.
        The probes count as health checks (a backend that answers returns to the round robin)."""
        results = await asyncio.gather(*(self.probe(s) for s in self.states))
        healthy_p = bool(self.unified) or any(r["healthy"] for r in results if r["role"] == PREFILL)
        healthy_d = any(r["healthy"] for r in results if r["role"] == self.target)
        ok = healthy_p and healthy_d and not self.draining
        counts = {"unified_instances": len(self.unified)} if self.unified else {
            "prefill_instances": len(self.prefill), "decode_instances": len(self.decode)}
        payload = {"status": "ok" if ok else "unavailable", **counts, "backends": results}
        return json_response(payload, 200 if ok else 503, {})

    async def handle_models(self, request: Request) -> Response:
        """GET /v1/models from a decode server (or unified replica), so clients can discover the model name."""
        request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        state = self.pick(self.target)
        if state is None:
            response = self._no_healthy(self.target, request_id)
        else:
            response = await self._models(state)
        self.metrics.requests[(request.path, str(response.status))] += 1
        return response

    async def _models(self, state: BackendState) -> Response:
        pool = state.pool
        try:
            conn = await pool.request(request_head("GET", "/v1/models", pool.host_header, None), b"", self.read_timeout)
            try:
                raw = await conn.read_body(self.read_timeout)
            finally:
                pool.release(conn)
        except BackendFailure as exc:
            err = self._backend_error(state, exc)
            self.metrics.errors[(self.target, err.kind)] += 1
            return json_response(err.payload(), 502, {})
        return Response(raw, conn.status, {"Content-Type": conn.headers.get("content-type", "application/json")})

    async def handle_metrics(self, request: Request) -> Response:
        return Response(self.metrics.render(self).encode(), 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
