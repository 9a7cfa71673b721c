"""Start-up, listeners and shutdown, timed like vLLM's so the pipeline's waits are exercised."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from .config import ServeConfig
from .errors import TIMEOUT_ERRORS
from .server import SimServer
from .trace import STAMPS, clocks

LOG = logging.getLogger("vllm_sim")


class FirstByteStamp(asyncio.Protocol):
    """Stamps when the first bytes of each request reach the server (the trace's ``first_byte``),
    then hands everything to aiohttp's own protocol for the connection.

    The handler runs later, after aiohttp has parsed the request and the event loop has got to
    it; under load that lag is the server's, and a client's TTFT error must not be charged with
    it (bench/client_fidelity.py). The handler takes the stamp (take_first_byte) and clears it
    when it returns, so the next bytes on the connection start the next request."""

    def __init__(self, inner: asyncio.Protocol) -> None:
        self.inner = inner
        self.first_byte: tuple[float, float] | None = None
        self.transport_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport_id = id(transport)
        STAMPS[self.transport_id] = self
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.first_byte is None:
            self.first_byte = clocks()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        STAMPS.pop(self.transport_id, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def serve(cfg: ServeConfig) -> int:
    """Simulate engine start-up, bind the listeners, run until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = SimServer(cfg)
    startup = cfg.profile.startup_s * cfg.profile.time_scale
    if cfg.fault.slow_start_s is not None:
        startup = cfg.fault.slow_start_s
    t0 = time.monotonic()
    if server.kv is not None:  # vLLM starts the NIXL handshake listener during engine init
        try:
            await server.kv.start()
        except OSError as exc:
            LOG.error(
                "Cannot bind NIXL side channel tcp://%s:%d: %s",
                cfg.side_host,
                cfg.side_port,
                exc,
            )
            return 1
        LOG.info(
            "NIXL side channel listening on %s:%d (engine_id=%s)",
            cfg.side_host,
            cfg.side_port,
            server.kv.engine_id,
        )
    try:
        await asyncio.wait_for(stop.wait(), timeout=startup)
    except TIMEOUT_ERRORS:
        pass
    if stop.is_set():
        LOG.info("Stopped during start-up")
        return 0
    LOG.info(
        "init engine (profile, create kv cache, warmup model) took %.2f seconds",
        time.monotonic() - t0,
    )
    server.engine_task = loop.create_task(server.engine.run())
    if server.kv is not None:
        server.background.append(loop.create_task(server.kv.sweep_leases()))
    try:
        runner = web.AppRunner(server.make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.3)
    except TypeError:  # aiohttp < 3.9 has no runner-level shutdown_timeout
        runner = web.AppRunner(server.make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        listener = await loop.create_server(lambda: FirstByteStamp(runner.server()), cfg.host, cfg.port, reuse_address=True, backlog=1024)
    except OSError as exc:
        LOG.error("Cannot bind http://%s:%d: %s", cfg.host, cfg.port, exc)
        return 1
    LOG.info("Starting vLLM API server on http://%s:%d", cfg.host, cfg.port)
    waiter = loop.create_task(stop.wait())
    await asyncio.wait([waiter, server.engine_task], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if not waiter.done():
        LOG.error("Engine loop died: %r", server.engine_task.exception())
        code = 1
    LOG.info("Shutting down")
    listener.close()
    if server.kv is not None and server.kv.server is not None:
        server.kv.server.close()
    for task in (*server.background, server.engine_task, waiter):
        task.cancel()
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=0.8)
    except TIMEOUT_ERRORS:
        LOG.warning("HTTP shutdown timed out; exiting anyway")
    return code
