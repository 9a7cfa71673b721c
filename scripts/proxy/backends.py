"""Who the proxy talks to, and what it says when one of them fails.

A 502 that names the role and the backend, and one log line per request, are
what make a broken disaggregated measurement traceable to the node at fault.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

PREFILL = "prefill"
DECODE = "decode"
UNIFIED = "unified"
"""Data-parallel replicas of a unified server: requests go straight to one, round robin (no P leg)."""


@dataclass(frozen=True)
class Backend:
    """One vLLM server; ``role`` is ``prefill``, ``decode`` or ``unified``."""

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
        kind: str = "http_status",
    ) -> None:
        super().__init__(f"{backend.role} backend {backend.url} failed: {cause}")
        self.backend = backend
        self.cause = cause
        self.status = status
        self.body = body
        self.kind = kind

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
    prefill: Backend | None  # None for a unified replica: there is no P leg
    decode: Backend
    started: float = field(default_factory=time.perf_counter)
    prefill_ms: float | None = None
    decode_first_byte_ms: float | None = None
    kv_params: str | None = None
    status: int | None = None
    bytes_out: int = 0
    error: str | None = None

    def log_line(self, total_ms: float) -> str:
        """One greppable key=value line per request."""
        line = (
            f"request_id={self.request_id} path={self.path} prefill={self.prefill.url if self.prefill else '-'} decode={self.decode.url} "
            f"status={self.status} kv_transfer_params={self.kv_params} prefill_ms={_fmt_ms(self.prefill_ms)} "
            f"decode_first_byte_ms={_fmt_ms(self.decode_first_byte_ms)} total_ms={total_ms:.2f} bytes={self.bytes_out}"
        )
        if self.error:
            line += f" error={json.dumps(self.error)}"
        return line


def _fmt_ms(value: float | None) -> str:
    """Milliseconds with two decimals, ``-`` when not reached."""
    return "-" if value is None else f"{value:.2f}"
