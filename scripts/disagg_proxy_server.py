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

* aiohttp with one pooled ClientSession per process (no per-request session, no access log)
  so the proxy adds as little latency as possible.
* SSE keeps ``text/event-stream`` (the toy proxy relabels it ``application/json``).
* Backend failures become a 502 JSON naming the role and backend instead of a bare 500;
  a decode failure after streaming began ends the stream with an SSE ``error`` event.
* A missing ``kv_transfer_params`` from P (D will silently re-prefill, which doubles TTFT)
  is logged as a warning and shown in the ``X-KV-Transfer-Params: missing`` header.
* ``GET /health`` really probes every backend.

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
"body": <excerpt|null>}}``. If D breaks after streaming began, an SSE stream ends with
``data: {"error": {...}}``; a JSON body is cut short (connection closed). Bad client JSON
gives 400. Every request logs one ``request_id=... prefill_ms=... decode_first_byte_ms=...
total_ms=...`` line on stderr.

Standalone on purpose: stdlib + aiohttp only, because it runs in the vLLM venv on the nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

LOG = logging.getLogger("disagg_proxy")

COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
HEALTH_PROBE_TIMEOUT_S = 1.0
# aiohttp waits up to this for in-flight handlers, then cancels them and waits up to this
# again: 2 x 0.25 s keeps SIGTERM-to-exit under ~1 s even with streams in flight.
SHUTDOWN_GRACE_S = 0.25
BODY_EXCERPT_CHARS = 2000
# Long prompts sent as token-id lists exceed aiohttp's default 1 MiB request body limit.
CLIENT_MAX_BODY = 256 * 1024 * 1024
# What a failing backend raises. asyncio.TimeoutError (not the builtin) on purpose: before
# Python 3.11 they differ, and aiohttp's timeouts derive from the asyncio one.
BACKEND_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)

# The block P needs in order to keep its KV for a remote decoder (vLLM's NixlConnector).
PREFILL_KV_TRANSFER_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


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
    ) -> None:
        super().__init__(f"{backend.role} backend {backend.url} failed: {cause}")
        self.backend = backend
        self.cause = cause
        self.status = status
        self.body = body

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

    def log_line(self) -> str:
        """One greppable key=value line per request."""
        total_ms = (time.perf_counter() - self.started) * 1000.0
        parts = [
            f"request_id={self.request_id}",
            f"path={self.path}",
            f"prefill={self.prefill.url}",
            f"decode={self.decode.url}",
            f"status={self.status}",
            f"kv_transfer_params={self.kv_params}",
            f"prefill_ms={_fmt_ms(self.prefill_ms)}",
            f"decode_first_byte_ms={_fmt_ms(self.decode_first_byte_ms)}",
            f"total_ms={total_ms:.2f}",
            f"bytes={self.bytes_out}",
        ]
        if self.error:
            parts.append(f"error={json.dumps(self.error)}")
        return " ".join(parts)


def _fmt_ms(value: float | None) -> str:
    """Milliseconds with two decimals, ``-`` when not reached."""
    return "-" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------- pure helpers


def build_prefill_request(client_body: dict[str, Any]) -> dict[str, Any]:
    """P gets a one-token, non-streaming copy so it only prefills and then parks the KV."""
    body = dict(client_body)
    body["kv_transfer_params"] = dict(PREFILL_KV_TRANSFER_PARAMS)
    body["stream"] = False
    body["max_tokens"] = 1
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = 1
    # Streaming options and minimum lengths contradict a one-token non-streamed request.
    for key in ("stream_options", "min_tokens", "min_completion_tokens"):
        body.pop(key, None)
    return body


def build_decode_request(
    client_body: dict[str, Any], kv_transfer_params: dict[str, Any] | None
) -> dict[str, Any]:
    """D gets the original request plus P's KV location (as vLLM's proxy: only if non-empty)."""
    body = dict(client_body)
    if kv_transfer_params:
        body["kv_transfer_params"] = kv_transfer_params
    return body


def backend_headers(request_id: str, authorization: str | None) -> dict[str, str]:
    """Same request id (and the client's credentials) on P and D so logs can be joined."""
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    if authorization:
        headers["Authorization"] = authorization
    return headers


def describe_exception(
    exc: BaseException, connect_timeout: float, read_timeout: float
) -> str:
    """A cause string that says what actually broke (refused, timeout, reset, ...)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        return f"cannot connect ({type(os_error).__name__}: {os_error})"
    if isinstance(exc, asyncio.TimeoutError):
        detail = str(exc) or type(exc).__name__
        return (
            f"timeout ({detail}; connect timeout {connect_timeout:g}s, "
            f"read timeout {read_timeout:g}s)"
        )
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


def json_response(
    payload: dict[str, Any], status: int, headers: dict[str, str]
) -> web.Response:
    """JSON body with our diagnostic headers."""
    return web.Response(
        body=json.dumps(payload).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


# --------------------------------------------------------------------------- the proxy


class Proxy:
    """Holds the backends, the round-robin cursors and the one shared ClientSession."""

    def __init__(
        self,
        prefill: list[Backend],
        decode: list[Backend],
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.prefill = prefill
        self.decode = decode
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # P and D are chosen independently, each round robin (as vLLM's proxy does).
        self._next_prefill: Iterator[Backend] = itertools.cycle(prefill)
        self._next_decode: Iterator[Backend] = itertools.cycle(decode)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the pooled session inside the running loop (one per process)."""
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, keepalive_timeout=75
        )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def close(self) -> None:
        """Close pooled connections so backends see a clean shutdown."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Proxy.start() was not awaited")
        return self._session

    def _describe(self, exc: BaseException) -> str:
        return describe_exception(exc, self.connect_timeout, self.read_timeout)

    # ----------------------------------------------------------------- completions

    async def handle_completion(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions and /v1/chat/completions: P first, then relay D."""
        request_id = request.headers.get("X-Request-Id") or str(uuid.uuid4())
        try:
            client_body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as exc:
            return _client_error(f"request body is not valid JSON: {exc}", request_id)
        if not isinstance(client_body, dict):
            return _client_error("request body must be a JSON object", request_id)

        stats = RequestStats(
            request_id=request_id,
            path=request.path,
            prefill=next(self._next_prefill),
            decode=next(self._next_decode),
        )
        headers = backend_headers(request_id, request.headers.get("Authorization"))
        try:
            return await self._proxy(request, client_body, headers, stats)
        except BackendError as err:
            stats.status = 502
            stats.error = str(err)
            return json_response(err.payload(), 502, _diagnostic_headers(stats))
        except asyncio.CancelledError:
            stats.error = "cancelled (client gone or proxy shutting down)"
            raise
        finally:
            LOG.info(stats.log_line())

    async def _proxy(
        self,
        request: web.Request,
        client_body: dict[str, Any],
        headers: dict[str, str],
        stats: RequestStats,
    ) -> web.StreamResponse:
        """The two legs of one request; BackendError means nothing was sent to the client."""
        start = time.perf_counter()
        kv_params = await self._prefill(
            stats.prefill, request.path, build_prefill_request(client_body), headers
        )
        stats.prefill_ms = _elapsed_ms(start)
        stats.kv_params = "present" if kv_params else "missing"
        if not kv_params:
            LOG.warning(
                "request_id=%s prefill %s returned no kv_transfer_params: decode %s will "
                "re-prefill locally (no KV transfer)",
                stats.request_id,
                stats.prefill.url,
                stats.decode.url,
            )
        decode_body = build_decode_request(client_body, kv_params)
        return await self._relay_decode(request, decode_body, headers, stats)

    async def _prefill(
        self, backend: Backend, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any] | None:
        """Run the one-token request on P, read it fully, return its kv_transfer_params."""
        try:
            async with self.session.post(
                backend.url + path, data=json.dumps(body).encode(), headers=headers
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except BACKEND_ERRORS as exc:
            raise BackendError(backend, self._describe(exc)) from exc
        if not 200 <= status < 300:
            raise BackendError(backend, f"HTTP {status}", status, excerpt(raw))
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BackendError(
                backend, f"invalid JSON ({exc})", status, excerpt(raw)
            ) from exc
        params = answer.get("kv_transfer_params") if isinstance(answer, dict) else None
        return params if isinstance(params, dict) else None

    async def _open_decode(
        self, backend: Backend, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """Send the request to D; a non-2xx answer is a BackendError (nothing streamed yet)."""
        try:
            resp = await self.session.post(
                backend.url + path, data=json.dumps(body).encode(), headers=headers
            )
        except BACKEND_ERRORS as exc:
            raise BackendError(backend, self._describe(exc)) from exc
        if 200 <= resp.status < 300:
            return resp
        try:
            raw = await resp.content.read(BODY_EXCERPT_CHARS)
        except BACKEND_ERRORS:
            raw = b""
        finally:
            resp.close()
        raise BackendError(backend, f"HTTP {resp.status}", resp.status, excerpt(raw))

    async def _first_chunk(
        self, backend: Backend, resp: aiohttp.ClientResponse
    ) -> bytes:
        """Wait for D's first body bytes; failing here is still a clean 502."""
        try:
            return await resp.content.readany()
        except BACKEND_ERRORS as exc:
            resp.close()
            raise BackendError(
                backend, f"before first byte: {self._describe(exc)}", resp.status
            ) from exc

    async def _relay_decode(
        self,
        request: web.Request,
        body: dict[str, Any],
        headers: dict[str, str],
        stats: RequestStats,
    ) -> web.StreamResponse:
        """Relay D's answer as it arrives, with D's status and content type."""
        start = time.perf_counter()
        resp = await self._open_decode(stats.decode, request.path, body, headers)
        try:
            first = await self._first_chunk(stats.decode, resp)
            stats.decode_first_byte_ms = _elapsed_ms(start)
            out = web.StreamResponse(
                status=resp.status, headers=_diagnostic_headers(stats)
            )
            out.headers["Content-Type"] = resp.headers.get(
                "Content-Type", "application/json"
            )
            stats.status = resp.status
            await out.prepare(request)
            await self._pump(first, resp, out, stats)
            return out
        finally:
            resp.release()

    async def _pump(
        self,
        first: bytes,
        resp: aiohttp.ClientResponse,
        out: web.StreamResponse,
        stats: RequestStats,
    ) -> None:
        """Copy chunks without buffering; turn mid-stream failures into a visible end."""
        try:
            if first:
                await out.write(first)
                stats.bytes_out += len(first)
            async for chunk in resp.content.iter_any():
                await out.write(chunk)
                stats.bytes_out += len(chunk)
        except ConnectionResetError:
            # The client went away: drop D's connection so D stops generating for nobody.
            stats.error = "client disconnected"
            resp.close()
            return
        except BACKEND_ERRORS as exc:
            await self._end_broken_stream(resp, out, stats, exc)
            return
        await out.write_eof()

    async def _end_broken_stream(
        self,
        resp: aiohttp.ClientResponse,
        out: web.StreamResponse,
        stats: RequestStats,
        exc: BaseException,
    ) -> None:
        """Headers are gone already: say what broke in-band (SSE) or cut the body short."""
        resp.close()
        message = f"decode backend {stats.decode.url} failed after streaming began: {self._describe(exc)}"
        stats.error = message
        LOG.error("request_id=%s %s", stats.request_id, message)
        if resp.content_type != "text/event-stream":
            # A JSON body cannot carry an in-band error; a truncated body is the honest signal.
            out.force_close()
            return
        try:
            await out.write(sse_error_event(message, stats.request_id))
            await out.write_eof()
        except ConnectionResetError:
            pass

    # ----------------------------------------------------------------- health & models

    async def handle_health(self, request: web.Request) -> web.Response:
        """Probe every backend's /health concurrently; ready only if one P and one D answer."""
        backends = self.prefill + self.decode
        results = await asyncio.gather(*(self._probe(b) for b in backends))
        healthy_p = any(r["healthy"] for r in results if r["role"] == "prefill")
        healthy_d = any(r["healthy"] for r in results if r["role"] == "decode")
        ok = healthy_p and healthy_d
        payload = {
            "status": "ok" if ok else "unavailable",
            "prefill_instances": len(self.prefill),
            "decode_instances": len(self.decode),
            "backends": results,
        }
        return json_response(payload, 200 if ok else 503, {})

    async def _probe(self, backend: Backend) -> dict[str, Any]:
        """One short GET /health; any failure is reported, never raised."""
        error: str | None = None
        try:
            async with self.session.get(
                backend.url + "/health",
                timeout=aiohttp.ClientTimeout(total=HEALTH_PROBE_TIMEOUT_S),
            ) as resp:
                await resp.read()
                if resp.status != 200:
                    error = f"HTTP {resp.status}"
        except BACKEND_ERRORS as exc:
            error = describe_exception(
                exc, HEALTH_PROBE_TIMEOUT_S, HEALTH_PROBE_TIMEOUT_S
            )
        return {
            "url": backend.url,
            "role": backend.role,
            "healthy": error is None,
            "error": error,
        }

    async def handle_models(self, request: web.Request) -> web.Response:
        """GET /v1/models from a decode server, so clients can discover the model name."""
        backend = next(self._next_decode)
        try:
            async with self.session.get(backend.url + "/v1/models") as resp:
                raw = await resp.read()
                return web.Response(
                    body=raw,
                    status=resp.status,
                    headers={
                        "Content-Type": resp.headers.get(
                            "Content-Type", "application/json"
                        )
                    },
                )
        except BACKEND_ERRORS as exc:
            err = BackendError(backend, self._describe(exc))
            return json_response(err.payload(), 502, {})


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


def _client_error(message: str, request_id: str) -> web.Response:
    """400 in the OpenAI error shape; the client's mistake, no backend involved."""
    payload = {"error": {"message": message, "type": "invalid_request_error"}}
    return json_response(payload, 400, {"X-Request-Id": request_id})


# --------------------------------------------------------------------------- server


def build_app(proxy: Proxy) -> web.Application:
    """Routes only; the session lives on the Proxy."""
    app = web.Application(client_max_size=CLIENT_MAX_BODY)
    for path in COMPLETION_PATHS:
        app.router.add_post(path, proxy.handle_completion)
    app.router.add_get("/health", proxy.handle_health)
    app.router.add_get("/healthcheck", proxy.handle_health)
    app.router.add_get("/v1/models", proxy.handle_models)
    return app


def _make_runner(app: web.Application) -> tuple[web.AppRunner, dict[str, Any]]:
    """Short shutdown grace on both old (site kwarg) and new (runner kwarg) aiohttp."""
    if "shutdown_timeout" in inspect.signature(web.BaseRunner.__init__).parameters:
        return web.AppRunner(
            app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
        ), {}
    return web.AppRunner(app, access_log=None), {"shutdown_timeout": SHUTDOWN_GRACE_S}


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM/SIGINT, then stop accepting, close the session and return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before binding: no signal is lost
        loop.add_signal_handler(sig, stop.set)
    proxy = Proxy(
        prefill=[
            Backend("prefill", h, p)
            for h, p in zip(args.prefiller_hosts, args.prefiller_ports)
        ],
        decode=[
            Backend("decode", h, p)
            for h, p in zip(args.decoder_hosts, args.decoder_ports)
        ],
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
    )
    await proxy.start()
    runner, site_kwargs = _make_runner(build_app(proxy))
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port, **site_kwargs).start()
        port = runner.addresses[0][1] if runner.addresses else args.port
        LOG.info(
            "backends: prefill %s; decode %s",
            " ".join(b.url for b in proxy.prefill),
            " ".join(b.url for b in proxy.decode),
        )
        # Exactly this line signals readiness (--port 0 resolves to the real port here).
        LOG.info("proxy listening on %s", http_url(args.host, port))
        await stop.wait()
        LOG.info("signal received, shutting down")
    finally:
        await runner.cleanup()
        await proxy.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI compatible with vLLM's toy proxy (plural and singular spellings)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=8000, help="0 picks a free port (logged)"
    )
    parser.add_argument(
        "--prefiller-hosts", "--prefiller-host", nargs="+", default=["localhost"]
    )
    parser.add_argument(
        "--prefiller-ports", "--prefiller-port", nargs="+", type=int, default=[8100]
    )
    parser.add_argument(
        "--decoder-hosts", "--decoder-host", nargs="+", default=["localhost"]
    )
    parser.add_argument(
        "--decoder-ports", "--decoder-port", nargs="+", type=int, default=[8200]
    )
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
    args = parser.parse_args(argv)
    for role, hosts, ports in (
        ("prefiller", args.prefiller_hosts, args.prefiller_ports),
        ("decoder", args.decoder_hosts, args.decoder_ports),
    ):
        if len(hosts) != len(ports):
            parser.error(
                f"--{role}-hosts has {len(hosts)} value(s) but --{role}-ports has {len(ports)}; "
                "give one port per host"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 0 after a signal-driven shutdown."""
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s disagg_proxy: %(message)s",
    )
    try:
        asyncio.run(serve(args))
    except OSError as exc:  # typically: port in use, or host not local
        LOG.error("cannot listen on %s: %s", http_url(args.host, args.port), exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
