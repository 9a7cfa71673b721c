"""Round robin over the healthy backends of each role, and the health checks behind it.

A backend that cannot serve is taken out at once, so that requests fail fast
with a 503 that says why instead of waiting on a dead node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .backends import DECODE, PREFILL, UNIFIED, Backend
from .conn import WAIT_TIMEOUT, BackendFailure, Conn
from .pool import BODY_EXCERPT_CHARS, Pool, request_head

LOG = logging.getLogger("disagg_proxy")


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


class Balancer:
    """The backends of both roles, their pools and health, and the round-robin cursors.

    The base of ``Proxy``: the request path picks and ejects backends here, and
    the health loop brings them back, independently of any request.
    """

    def __init__(
        self,
        prefill: list[Backend],
        decode: list[Backend],
        connect_timeout: float,
        health_interval: float,
        health_timeout: float,
        eject_after: int,
        unified: list[Backend] | None = None,
    ) -> None:
        self.prefill = prefill
        self.decode = decode
        self.unified = unified or []
        # Where a completion is relayed: the decode servers, or the unified replicas (no P leg).
        self.target = UNIFIED if self.unified else DECODE
        self.connect_timeout = connect_timeout
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.eject_after = eject_after
        self.roles: dict[str, list[BackendState]] = {
            PREFILL: [BackendState(b, Pool(b, connect_timeout)) for b in prefill],
            DECODE: [BackendState(b, Pool(b, connect_timeout)) for b in decode],
            UNIFIED: [BackendState(b, Pool(b, connect_timeout)) for b in self.unified],
        }
        self.states = self.roles[PREFILL] + self.roles[DECODE] + self.roles[UNIFIED]
        self._cursor = {PREFILL: 0, DECODE: 0, UNIFIED: 0}
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

    def pick(self, role: str) -> BackendState | None:
        """Next healthy backend of the role, round robin (each role independently)."""
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
