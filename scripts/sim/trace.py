"""The ground-truth trace behind ``GET /sim/trace``.

The server's own clocks say when a request arrived and when each token left,
so a client's measured latencies can be checked against the truth
(docs/node-programs.md, "Ground-truth trace").
"""

from __future__ import annotations

import hashlib
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .engine import SimRequest

# The first-byte stamper of each open connection (lifecycle.FirstByteStamp), by id(transport).
STAMPS: dict[int, Any] = {}


def take_first_byte(transport: object) -> tuple[float, float] | None:
    """The (mono, wall) instant the current request's first bytes arrived, if stamped."""
    stamper = STAMPS.get(id(transport))
    return None if stamper is None else stamper.first_byte


def request_done(transport: object) -> None:
    """The next bytes on this connection belong to the next request."""
    stamper = STAMPS.get(id(transport))
    if stamper is not None:
        stamper.first_byte = None


def clocks() -> tuple[float, float]:
    """(time.monotonic(), time.time()) read back to back."""
    return time.monotonic(), time.time()


@dataclass(eq=False)
class TraceRecord:
    """What the server did for one request, on its own clocks (see GET /sim/trace)."""

    seq: int
    request_id: str
    endpoint: str
    stream: bool
    prompt_tokens: int
    max_tokens: int
    arrival_mono: float
    arrival_wall: float
    status: str = "in_flight"
    kv: str = "local"
    token_mono: array = field(default_factory=lambda: array("d"))
    token_wall: array = field(default_factory=lambda: array("d"))
    completion_tokens: int = 0
    first_mono: float | None = None
    first_wall: float | None = None
    end_mono: float | None = None
    end_wall: float | None = None
    headers_mono: float | None = None
    first_byte_mono: float | None = None  # the request's first bytes reached the server
    first_byte_wall: float | None = None
    prompt_sha1: str | None = None
    req: SimRequest | None = None

    def tokens_written(self, count: int) -> None:
        """``count`` tokens are about to be handed to the transport in one write."""
        mono, wall = clocks()
        if self.first_mono is None:
            self.first_mono, self.first_wall = mono, wall
        for _ in range(count):
            self.token_mono.append(mono)
            self.token_wall.append(wall)
        self.completion_tokens += count

    def body_written(self, tokens: int) -> None:
        """A non-streaming answer carrying ``tokens`` tokens is about to be returned."""
        self.end_mono, self.end_wall = clocks()
        self.first_mono, self.first_wall = self.end_mono, self.end_wall
        self.completion_tokens = tokens

    def finish(self, status: str) -> None:
        """Close the record (first status wins; end time kept if already set)."""
        if self.status == "in_flight":
            self.status = status
        if self.end_mono is None:
            self.end_mono, self.end_wall = clocks()

    def to_json(self) -> dict[str, Any]:
        req = self.req
        ttft = None if self.first_mono is None else round((self.first_mono - self.arrival_mono) * 1000.0, 6)
        return {
            "request_id": self.request_id,
            "seq": self.seq,
            "endpoint": self.endpoint,
            "stream": self.stream,
            "status": self.status,
            "kv": req.source if req is not None else self.kv,
            "prompt_tokens": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "completion_tokens": self.completion_tokens,
            "arrival_mono": self.arrival_mono,
            "arrival_wall": self.arrival_wall,
            "headers_mono": self.headers_mono,
            "first_byte_mono": self.first_byte_mono,
            "first_byte_wall": self.first_byte_wall,
            "prompt_sha1": self.prompt_sha1,
            "scheduled_mono": req.t_scheduled if req is not None else None,
            "engine_first_token_mono": req.t_first_token if req is not None else None,
            "first_token_mono": self.first_mono,
            "first_token_wall": self.first_wall,
            "end_mono": self.end_mono,
            "end_wall": self.end_wall,
            "ttft_ms": ttft,
            "token_mono": self.token_mono.tolist(),
            "token_wall": self.token_wall.tolist(),
        }


def prompt_fingerprint(body: dict[str, Any], chat: bool) -> str | None:
    """sha1 hex of a text prompt's UTF-8 bytes, so clients that send no request id can be matched."""
    prompt = None if chat else body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        return None
    return hashlib.sha1(prompt.encode("utf-8", errors="surrogatepass")).hexdigest()


class TraceStore:
    """The most recent ``max_requests`` TraceRecords, oldest first (0 disables tracing)."""

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self.records: deque[TraceRecord] = deque()
        self.dropped = 0
        self._seq = 0

    def start(
        self,
        request_id: str,
        endpoint: str,
        stream: bool,
        prompt_tokens: int,
        max_tokens: int,
        arrival: tuple[float, float],
    ) -> TraceRecord | None:
        """Open a record for an accepted request; None when tracing is off."""
        if self.max_requests <= 0:
            return None
        self._seq += 1
        rec = TraceRecord(self._seq, request_id, endpoint, stream, prompt_tokens, max_tokens, *arrival)
        self.records.append(rec)
        while len(self.records) > self.max_requests:
            self.records.popleft().req = None
            self.dropped += 1
        return rec

    def select(self, request_id: str | None) -> list[TraceRecord]:
        if request_id is None:
            return list(self.records)
        return [r for r in self.records if r.request_id == request_id]

    def remove(self, records: list[TraceRecord]) -> None:
        if len(records) == len(self.records):
            self.records.clear()
        else:
            gone = {id(r) for r in records}
            self.records = deque(r for r in self.records if id(r) not in gone)
        for rec in records:
            rec.req = None
