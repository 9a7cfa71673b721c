"""Load generation: when each request is sent (docs/node-programs.md, "Load shapes").

The dispatchers only decide *when* a request goes out; what a request does is
the ``send`` function they are given, so they can be tested without a server.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from .model import RequestOutcome, RequestSpec

RequestFn = Callable[[RequestSpec], Awaitable[RequestOutcome]]


async def run_closed_loop(specs: Sequence[RequestSpec], concurrency: int, send: RequestFn) -> list[RequestOutcome]:
    """Exactly ``concurrency`` workers, each sending its next request at once.

    The shared iterator is advanced without an await in between, so each
    spec is taken by exactly one worker, and never more than ``concurrency``
    requests are in flight.
    """
    results: list[RequestOutcome | None] = [None] * len(specs)
    queue = iter(range(len(specs)))

    async def worker() -> None:
        for i in queue:
            results[i] = await send(specs[i])

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
    return [r for r in results if r is not None]


async def run_all_at_once(specs: Sequence[RequestSpec], send: RequestFn) -> list[RequestOutcome]:
    """Dispatch every request immediately (offline batch)."""
    return list(await asyncio.gather(*(send(s) for s in specs)))


def arrival_schedule(count: int, rate: float, burstiness: float, seed: int, rescale: bool = True) -> np.ndarray:
    """Due times (s after the phase origin) of ``count`` open-loop requests.

    Gaps ~ ``default_rng(seed).gamma(shape=burstiness, scale=1/(rate*burstiness))``
    (fixed gaps of 1/rate for ``burstiness=inf``); request i is due at the
    sum of gaps 0..i. With ``rescale`` (what the benchmark uses, as vLLM)
    the times are multiplied by one factor so the last is due at exactly
    count/rate; see docs/node-programs.md for why. Pure and deterministic.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError("rate must be a finite number > 0")
    if not burstiness > 0:
        raise ValueError("burstiness must be > 0")
    if count == 0:
        return np.zeros(0)
    if math.isinf(burstiness):
        gaps = np.full(count, 1.0 / rate)
    else:
        gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=count)
    times = np.cumsum(gaps)
    if rescale and times[-1] > 0:
        times *= (count / rate) / times[-1]
    return times


async def run_open_loop(
    specs: Sequence[RequestSpec],
    due_s: Sequence[float],
    cap: int,
    send: RequestFn,
    origin: float,
) -> list[RequestOutcome]:
    """Send ``specs[i]`` at ``origin + due_s[i]``, at most ``cap`` in flight.

    One dispatcher walks the schedule in order: it sleeps until a request is
    due (re-checking the clock, so it never sends early), then, when capped,
    waits for a free slot, then starts the request as a task. A request held
    back by the cap therefore keeps its place in line, and the wait shows as
    its ``client_queue_time`` (dispatch ``st`` minus due time). ``cap`` 0 is
    uncapped. The slot is released when the request function returns.
    """
    sem = asyncio.Semaphore(cap) if cap > 0 else None
    tasks: list[asyncio.Task[RequestOutcome]] = []

    async def one(spec: RequestSpec, due: float) -> RequestOutcome:
        try:
            out = await send(spec)
        finally:
            if sem is not None:
                sem.release()
        out.scheduled_time = due
        return out

    try:
        for spec, offset in zip(specs, due_s):
            due = origin + float(offset)
            while (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            if sem is not None:
                await sem.acquire()
            tasks.append(asyncio.create_task(one(spec, due)))
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()  # no-op for finished tasks; stops strays on error
