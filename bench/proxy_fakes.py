#!/usr/bin/env python3
"""Fake prefill (P) and decode (D) servers with fixed, known timing, for bench/proxy_overhead.py.

``--role prefill``: every POST to /v1/completions or /v1/chat/completions is read and answered at
once with a precomputed non-streaming completion carrying ``kv_transfer_params`` (the shape
vLLM's NixlConnector returns). The body is not parsed, so P costs as little as an HTTP server can.

``--role decode``: the body is parsed (a real D parses it too) for ``max_tokens`` (= number of
SSE chunks, N) and ``stream``. A streamed answer is N ``data: {...}`` events, the first sent
right after the headers (with them when the server coalesces), the next ones a fixed gap apart
(``bench_gap_ms`` from the request, else ``--gap-ms``), then ``data: [DONE]``. So the time to the first byte is the server's own cost and nothing else,
and the whole stream takes (N - 1) x gap. A non-streamed answer is one JSON body.

Both print ``LISTENING <port>`` on stdout once bound (``--port 0`` picks a free port) and exit 0
on SIGTERM/SIGINT. aiohttp, with uvloop when importable, no access log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from aiohttp import web
from proxy_common import run_fast

KV_TRANSFER_PARAMS = {
    "do_remote_prefill": True,
    "do_remote_decode": False,
    "remote_block_ids": list(range(1, 65)),
    "remote_engine_id": "bench-prefill-engine",
    "remote_host": "127.0.0.1",
    "remote_port": 5600,
    "tp_size": 1,
}


def prefill_answer() -> bytes:
    """What P returns to the proxy: one sampled token plus where its KV blocks are."""
    return json.dumps(
        {
            "id": "cmpl-bench-p",
            "object": "text_completion",
            "created": 0,
            "model": "bench-model",
            "choices": [{"index": 0, "text": " x", "logprobs": None, "finish_reason": "length", "stop_reason": None}],
            "usage": {"prompt_tokens": 128, "total_tokens": 129, "completion_tokens": 1},
            "kv_transfer_params": KV_TRANSFER_PARAMS,
        }
    ).encode()


def sse_event(i: int) -> bytes:
    """One vLLM-shaped completion chunk."""
    chunk = {
        "id": "cmpl-bench-d",
        "object": "text_completion",
        "created": 0,
        "model": "bench-model",
        "choices": [{"index": 0, "text": f" tok{i}", "logprobs": None, "finish_reason": None, "stop_reason": None}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


class Fake:
    def __init__(self, role: str, gap_s: float) -> None:
        self.role = role
        self.gap_s = gap_s
        self.prefill_body = prefill_answer()
        self.events = [sse_event(i) for i in range(4096)]
        self.full_json = json.dumps({"id": "cmpl-bench-d", "choices": [{"index": 0, "text": " tok", "finish_reason": "length"}]}).encode()

    async def completion(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if self.role == "prefill":
            return web.Response(body=self.prefill_body, content_type="application/json")
        body = json.loads(raw)
        if not body.get("stream"):
            return web.Response(body=self.full_json, content_type="application/json")
        chunks = max(1, min(int(body.get("max_tokens") or 1), len(self.events)))
        gap_ms = body.get("bench_gap_ms")
        gap_s = self.gap_s if gap_ms is None else float(gap_ms) / 1000.0
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            await resp.write(self.events[0])
            for i in range(1, chunks):
                await asyncio.sleep(gap_s)
                await resp.write(self.events[i])
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench-model"}]})


async def serve(args: argparse.Namespace) -> None:
    fake = Fake(args.role, args.gap_ms / 1000.0)
    app = web.Application()
    app.router.add_post("/v1/completions", fake.completion)
    app.router.add_post("/v1/chat/completions", fake.completion)
    app.router.add_get("/health", fake.health)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
    await site.start()
    print(f"LISTENING {runner.addresses[0][1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=("prefill", "decode"), required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gap-ms", type=float, default=10.0, help="decode: time between SSE chunks")
    args = parser.parse_args()
    run_fast(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
