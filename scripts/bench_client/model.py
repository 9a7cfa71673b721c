"""The client's data model: what a request is before, during and after it is sent.

Kept apart from the code that fills it so that the request functions, the
load shapes, the metrics and the result writer all agree on one set of
fields, and so that the metrics can be computed from outcomes built by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CLIENT_NAME = "benchmark_common"
# Length of a non-200 response body kept in the error text: enough to show a
# validation message from vLLM, short enough to keep the error list readable.
ERROR_BODY_EXCERPT_CHARS = 500
# Read buffer of the client session. aiohttp's default 64 KiB made vLLM's own
# client collapse at long context (vllm issue #39963); a larger buffer costs
# little and keeps long SSE events from being throttled by flow control.
READ_BUFSIZE = 4 * 1024 * 1024
NO_CONTENT_ERROR = "Never received a valid chunk to calculate TTFT (HTTP 200 without any content event)"


@dataclass
class RequestSpec:
    """One request, fully prepared before any request is sent.

    The JSON body is serialised here, not at dispatch: for an offline batch of
    long prompts, per-request serialisation would otherwise spread the "all at
    once" dispatch over many milliseconds of client CPU.
    """

    index: int
    warmup: bool
    request_id: str
    prompt_tokens: int  # ids in the prompt (chat: ids rendered as words)
    first_token_id: int
    body: bytes


@dataclass
class RequestOutcome:
    """Outcome of one request, in seconds (like vLLM's RequestFuncOutput).

    ``start_time`` is the raw ``perf_counter`` value of ``st`` (the dispatch
    time); the per-second bucket metrics need the absolute values, offsets are
    derived later. ``scheduled_time`` is when an open loop wanted the request
    sent (None where there is no schedule: it is then the dispatch time).
    ``end_time`` is when the request function returned (stream fully read or
    failure), the end of the request's time in flight.
    """

    index: int
    warmup: bool
    request_id: str
    prompt_tokens: int  # tokens sent (chat: ids used to build the text)
    prompt_tokens_reported: int | None = None  # usage.prompt_tokens
    success: bool = False
    error: str = ""
    http_status: int | None = None
    start_time: float = 0.0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0  # E2EL: last content event - st
    output_tokens: int = 0
    output_tokens_from_usage: bool = False
    content_chunks: int = 0
    generated_chars: int = 0
    scheduled_time: float | None = None
    end_time: float = 0.0
    sent_time: float | None = None  # request bytes handed to the socket (TTFT origin)

    @property
    def client_send_delay(self) -> float:
        """sent - dispatch: time the request waited inside the client before hitting the wire."""
        return 0.0 if self.sent_time is None else max(0.0, self.sent_time - self.start_time)

    @property
    def client_queue_time(self) -> float:
        """Dispatch - scheduled time; 0 by definition without a schedule."""
        if self.scheduled_time is None:
            return 0.0
        return self.start_time - self.scheduled_time

    @property
    def in_flight_end(self) -> float:
        """End of the time in flight (``start + latency`` if never stamped)."""
        return self.end_time if self.end_time > 0 else self.start_time + self.latency

    @property
    def effective_prompt_tokens(self) -> int:
        """Input length counted in totals: the server's count when reported.

        vLLM's client overwrites its prompt length with usage.prompt_tokens,
        which is what matters for the chat endpoint, where ours is a guess.
        """
        if self.prompt_tokens_reported is not None:
            return self.prompt_tokens_reported
        return self.prompt_tokens

    @property
    def tpot(self) -> float | None:
        """(E2EL - TTFT) / (output_tokens - 1); None where vLLM excludes it."""
        if not self.success or self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    @property
    def tpot_for_goodput(self) -> float:
        """TPOT as vLLM's goodput sees it: 0 with at most one output token."""
        tpot = self.tpot
        return 0.0 if tpot is None else tpot


@dataclass
class BenchConfig:
    """Parsed, validated command line."""

    base_url: str
    endpoint: str
    model: str
    prompt_tokens: int
    max_tokens: int
    concurrency: int
    warmup_requests: int
    num_requests: int
    measurement_type: str
    seed: int
    token_id_low: int
    token_id_high: int
    percentiles: list[float]
    request_timeout: float
    result_file: str
    label: str | None = None
    request_rate: float = float("inf")
    burstiness: float = 1.0
    goodput_slo_ms: dict[str, float] | None = None

    @property
    def load_mode(self) -> str:
        """closed_loop, open_loop or offline (see docs/node-programs.md)."""
        if self.measurement_type == "offline":
            return "offline"
        return "open_loop" if math.isfinite(self.request_rate) else "closed_loop"

    @property
    def max_concurrency(self) -> int | None:
        """The client-side cap as vLLM saves it (null = no cap)."""
        if self.load_mode == "offline" or self.concurrency == 0:
            return None
        return self.concurrency

    @property
    def requested_concurrency(self) -> int | None:
        """In-flight level the load shape asks for (offline: the batch)."""
        if self.load_mode == "offline":
            return self.num_requests
        return self.max_concurrency

    @property
    def warmup_concurrency(self) -> int:
        """Workers of the warmup closed loop (1 when uncapped)."""
        return max(1, self.concurrency)

    @property
    def is_chat(self) -> bool:
        return self.endpoint.rstrip("/").endswith("chat/completions")

    @property
    def endpoint_type(self) -> str:
        """vLLM's backend name for this endpoint ("openai" / "openai-chat")."""
        return "openai-chat" if self.is_chat else "openai"

    @property
    def url(self) -> str:
        return self.base_url + self.endpoint


class ServerUnreachable(RuntimeError):
    """No TCP connection could be opened to the base URL."""


@dataclass
class RunOutput:
    """Everything a run produced, before it is shaped into the result JSON."""

    warmup: list[RequestOutcome]
    measured: list[RequestOutcome]
    duration_s: float
    benchmark_start: float  # start of the measured phase (open loop: origin)
