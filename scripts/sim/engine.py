"""The simulated GPU: one task runs prefill and decode steps on a timeline.

Like vLLM's scheduler loop, a single owner of the batch, so the timing model
(docs/node-programs.md, "Timing model") holds however many requests arrive.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from .config import ServeConfig
from .metrics import Stats

MAX_CATCHUP_S = 0.05  # engine backlog beyond this is dropped, not replayed
PREFIX_CACHE_BLOCKS = 200_000


@dataclass(eq=False)
class SimRequest:
    """One request as the simulated scheduler sees it."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    block_hashes: list[int]
    arrival: float
    needs_prefill: bool = True
    source: str = "local"
    generated: int = 0
    cached_tokens: int = 0
    aborted: bool = False
    finished: bool = False
    t_scheduled: float | None = None
    t_first_token: float | None = None
    t_finished: float | None = None
    prefill_s: float = 0.0
    xfer_s: float = 0.0
    waiter: asyncio.Future[None] | None = None

    def notify(self) -> None:
        """Wake the HTTP handler waiting for this request's progress."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_beyond(self, seen: int) -> None:
        """Return once more than ``seen`` tokens exist (or the request ended)."""
        loop = asyncio.get_running_loop()
        while self.generated <= seen and not self.finished and not self.aborted:
            self.waiter = loop.create_future()
            await self.waiter


def block_hash_chain(tokens: list[Any], block_size: int) -> list[int]:
    """Hash each full block chained with its prefix, like vLLM's prefix cache keys."""
    hashes: list[int] = []
    prev = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        prev = hash((prev, tuple(tokens[start : start + block_size])))
        hashes.append(prev)
    return hashes


class Engine:
    """The simulated GPU: one task runs prefill and decode steps on a timeline."""

    def __init__(self, cfg: ServeConfig, stats: Stats) -> None:
        self.cfg = cfg
        self.profile = cfg.profile
        self.stats = stats
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.prefilling: SimRequest | None = None
        self.cache: OrderedDict[int, None] = OrderedDict()
        self._wake = asyncio.Event()
        self._aborted_pending = 0

    @property
    def num_running(self) -> int:
        """Sequences in the batch, counting the one being prefilled (as vLLM's running queue does)."""
        return len(self.running) + (1 if self.prefilling is not None else 0)

    @property
    def num_waiting(self) -> int:
        """Requests queued for prefill or for a free batch slot."""
        return len(self.waiting)

    def submit(self, req: SimRequest) -> None:
        """Queue a request (FCFS) and wake the scheduler loop if it is idle."""
        self.waiting.append(req)
        self._wake.set()

    def abort(self, req: SimRequest) -> None:
        """Stop working on a request whose client went away (counted as finished_reason=abort)."""
        if not req.finished and not req.aborted:
            req.aborted = True
            self._aborted_pending += 1
            self.stats.finished["abort"] += 1
            self._wake.set()
            req.notify()

    def _reap(self) -> None:
        """Drop aborted requests from the queues lazily, only when some were aborted."""
        if self._aborted_pending:
            self.waiting = deque(r for r in self.waiting if not r.aborted)
            self.running = [r for r in self.running if not r.aborted]
            self._aborted_pending = 0

    def _prefix_hit_tokens(self, req: SimRequest) -> int:
        """Leading prompt tokens whose blocks are cached; vLLM always recomputes at least one token."""
        if not self.cfg.enable_prefix_caching or not req.block_hashes:
            return 0
        hits = 0
        for h in req.block_hashes:
            if h not in self.cache:
                break
            self.cache.move_to_end(h)
            hits += 1
        return min(hits * self.cfg.block_size, req.prompt_tokens - 1)

    def remember_blocks(self, req: SimRequest) -> None:
        """Record a prompt's blocks as cached (after prefill or KV load)."""
        if not self.cfg.enable_prefix_caching:
            return
        for h in req.block_hashes:
            self.cache[h] = None
            self.cache.move_to_end(h)
        while len(self.cache) > PREFIX_CACHE_BLOCKS:
            self.cache.popitem(last=False)

    def _finish(self, req: SimRequest, now: float) -> None:
        """Mark a request done; the sim always stops on length (max_tokens reached)."""
        req.finished = True
        req.t_finished = now
        self.stats.finished["length"] += 1

    async def run(self) -> None:
        """The scheduler loop; never returns while the server lives."""
        loop = asyncio.get_running_loop()
        clock = loop.time()
        cap = self.cfg.max_num_seqs
        while True:
            self._reap()
            if not self.waiting and not self.running:
                self._wake.clear()
                await self._wake.wait()
                clock = loop.time()
                continue
            now = loop.time()
            if now - clock > MAX_CATCHUP_S:
                clock = now
            while self.waiting and not self.waiting[0].needs_prefill and len(self.running) < cap:
                req = self.waiting.popleft()
                req.t_scheduled = clock
                self.running.append(req)
            if self.waiting and len(self.running) < cap:
                req = self.waiting.popleft()
                if not req.aborted:
                    clock = await self._prefill(req, clock)
            elif self.running:
                clock = await self._decode(clock)
            else:  # only aborted entries were left
                await asyncio.sleep(0)

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep to an absolute deadline so per-step timer lateness does not accumulate."""
        delay = deadline - asyncio.get_running_loop().time()
        await asyncio.sleep(max(0.0, delay))

    async def _prefill(self, req: SimRequest, clock: float) -> float:
        """Run one prefill step (which also samples the first token); return the step's end time."""
        cached = self._prefix_hit_tokens(req)
        duration = self.profile.prefill_s(req.prompt_tokens - cached, self.cfg.tensor_parallel_size)
        req.t_scheduled = clock
        req.cached_tokens = cached
        req.prefill_s = duration
        self.prefilling = req
        end = clock + duration
        try:
            await self._sleep_until(end)
        finally:
            self.prefilling = None
        stats = self.stats
        stats.prefix_queries += req.prompt_tokens if self.cfg.enable_prefix_caching else 0
        stats.prefix_hits += cached
        if req.aborted:
            return end
        self.remember_blocks(req)
        stats.prompt_tokens += req.prompt_tokens
        stats.by_source["local_cache_hit"] += cached
        stats.by_source["local_compute"] += req.prompt_tokens - cached
        stats.generation_tokens += 1
        req.generated = 1
        req.t_first_token = end
        if req.max_tokens <= 1:
            self._finish(req, end)
        else:
            self.running.append(req)
        req.notify()
        return end

    async def _decode(self, clock: float) -> float:
        """Run one decode step: every running sequence gains one token at the step's end."""
        end = clock + self.profile.decode_step_s(len(self.running), self.cfg.tensor_parallel_size)
        await self._sleep_until(end)
        still: list[SimRequest] = []
        emitted = 0
        for req in self.running:
            if req.aborted:
                continue
            req.generated += 1
            emitted += 1
            if req.t_first_token is None:
                req.t_first_token = end
            if req.generated >= req.max_tokens:
                self._finish(req, end)
            else:
                still.append(req)
            req.notify()
        self.stats.generation_tokens += emitted
        self.running = still
        return end
