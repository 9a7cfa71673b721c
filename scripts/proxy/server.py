"""The proxy as a server: routes, listener, graceful shutdown, event loop.

A signal first stops new connections and lets in-flight requests finish, so
that stopping a pattern does not cut its last measured requests short.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from .backends import DECODE, PREFILL, UNIFIED, Backend, http_url
from .http_server import HttpServer
from .relay import LOG_FIRST_REQUESTS, Proxy

LOG = logging.getLogger("disagg_proxy")

COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
# When the grace is over, handlers still running are cancelled and get this long to end.
HANDLER_CANCEL_S = 0.25


def build_server(proxy: Proxy) -> HttpServer:
    """Routes only; the pools live on the Proxy."""
    http = HttpServer()
    for path in COMPLETION_PATHS:
        http.add("POST", path, proxy.handle_completion)
    http.add("GET", "/health", proxy.handle_health)
    http.add("GET", "/healthcheck", proxy.handle_health)
    http.add("GET", "/v1/models", proxy.handle_models)
    http.add("GET", "/metrics", proxy.handle_metrics)
    return http


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM/SIGINT; then stop accepting, drain up to the grace, close and return."""
    stop = asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):  # before binding: no signal is lost
        loop.add_signal_handler(sig, on_signal)
    unified = [Backend(UNIFIED, h, p) for h, p in zip(args.unified_hosts or [], args.unified_ports or [])]
    proxy = Proxy(
        prefill=[] if unified else [Backend(PREFILL, h, p) for h, p in zip(args.prefiller_hosts, args.prefiller_ports)],
        decode=[] if unified else [Backend(DECODE, h, p) for h, p in zip(args.decoder_hosts, args.decoder_ports)],
        unified=unified,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        health_interval=args.health_interval,
        health_timeout=args.health_timeout,
        eject_after=args.eject_after,
        log_every=args.log_every,
    )
    http = build_server(proxy)
    server: asyncio.AbstractServer | None = None
    try:
        server = await loop.create_server(http.protocol, args.host, args.port, reuse_address=True, backlog=1024)
        port = server.sockets[0].getsockname()[1] if server.sockets else args.port
        LOG.info(
            "backends: prefill %s; decode %s; unified %s; health checks every %gs (timeout %gs, eject after %d failures); event loop: %s",
            " ".join(b.url for b in proxy.prefill) or "-",
            " ".join(b.url for b in proxy.decode) or "-",
            " ".join(b.url for b in proxy.unified) or "-",
            args.health_interval,
            args.health_timeout,
            args.eject_after,
            _loop_name(loop),
        )
        LOG.info(
            "per-request lines: every failure, the first %d requests, then every %dth (--log-every; --log-level debug: all)",
            LOG_FIRST_REQUESTS,
            args.log_every,
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
        for conn in list(http.connections):
            conn.close()  # idle keep-alive connections close now, busy ones after their answer
        if proxy.in_flight:
            waits = [asyncio.ensure_future(proxy.drained.wait()), asyncio.ensure_future(force.wait())]
            await asyncio.wait(waits, timeout=args.shutdown_grace, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()
            if proxy.in_flight:
                LOG.warning("closing %d request(s) still in flight", proxy.in_flight)
        await http.shutdown(HANDLER_CANCEL_S)
    finally:
        if server is not None:
            server.close()
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
