"""What the client gets back besides D's own bytes: errors and diagnostic headers.

They say which backends served a request and which one failed, so that every
measurement can be traced to the nodes behind it.
"""

from __future__ import annotations

import json
from typing import Any

from .backends import RequestStats
from .http_server import Response, json_answer


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


def json_response(payload: dict[str, Any], status: int, headers: dict[str, str]) -> Response:
    """JSON body with our diagnostic headers."""
    return json_answer(payload, status, headers)


def diagnostic_headers(stats: RequestStats) -> dict[str, str]:
    """Headers that make every measurement traceable (docs/node-programs.md, "Response headers")."""
    headers = {"X-Request-Id": stats.request_id}
    if stats.prefill is not None:  # a unified replica has no P leg
        headers["X-Proxy-Prefill-Backend"] = stats.prefill.url
    headers["X-Proxy-Decode-Backend"] = stats.decode.url
    if stats.kv_params is not None:
        headers["X-KV-Transfer-Params"] = stats.kv_params
    if stats.prefill_ms is not None:
        headers["X-Proxy-Prefill-Ms"] = f"{stats.prefill_ms:.2f}"
    if stats.decode_first_byte_ms is not None:
        headers["X-Proxy-Decode-First-Byte-Ms"] = f"{stats.decode_first_byte_ms:.2f}"
    return headers
