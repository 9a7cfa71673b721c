#!/usr/bin/env python3
"""Reference P/D proxy for bench/proxy_overhead.py, built the way vLLM's toy proxy is built.

Written from the protocol description (docs: vllm-nixl-disaggregation reference, section 2), not
copied: FastAPI app, one ``httpx.AsyncClient(timeout=None, base_url=http://host:port/v1)`` per
backend with unlimited pool limits, created at start-up; P and D each chosen round robin
(``itertools.cycle``), independently; per request a fresh uuid4 request id; P gets a copy of the
client's JSON with ``kv_transfer_params = {do_remote_decode: true, ...}``, ``stream = false``,
``max_tokens = 1`` (and ``max_completion_tokens = 1`` if present), no ``stream_options``,
``min_tokens`` or ``min_completion_tokens``; P's answer is read in full and its
``kv_transfer_params`` copied into the original request, which goes to D with
``client.stream("POST", ...)``; D's bytes are relayed with ``StreamingResponse(aiter_bytes(),
media_type="application/json")``. Served by uvicorn with ``uvicorn.run``'s defaults: auto loop and
HTTP parser (uvloop and httptools when importable, as in vLLM's venvs) and the access log on.

The one addition: it binds the socket itself so ``--port 0`` works, and prints
``LISTENING <port>`` on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import sys
import uuid
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


def build_app(prefill: list[tuple[str, int]], decode: list[tuple[str, int]]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        app.state.prefill_clients = [httpx.AsyncClient(timeout=None, base_url=f"http://{h}:{p}/v1", limits=limits) for h, p in prefill]
        app.state.decode_clients = [httpx.AsyncClient(timeout=None, base_url=f"http://{h}:{p}/v1", limits=limits) for h, p in decode]
        app.state.next_prefill = itertools.cycle(app.state.prefill_clients)
        app.state.next_decode = itertools.cycle(app.state.decode_clients)
        yield
        for client in app.state.prefill_clients + app.state.decode_clients:
            await client.aclose()

    app = FastAPI(lifespan=lifespan)

    def auth_headers(request_id: str) -> dict[str, str]:
        # As vLLM's toy proxy: "Bearer None" when OPENAI_API_KEY is unset.
        return {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY')}", "X-Request-Id": request_id}

    async def send_to_prefill(client: httpx.AsyncClient, endpoint: str, req_data: dict, request_id: str) -> httpx.Response:
        req_data = req_data.copy()
        req_data["kv_transfer_params"] = {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        }
        req_data["stream"] = False
        req_data["max_tokens"] = 1
        if "max_completion_tokens" in req_data:
            req_data["max_completion_tokens"] = 1
        req_data.pop("stream_options", None)
        req_data.pop("min_tokens", None)
        req_data.pop("min_completion_tokens", None)
        response = await client.post(endpoint, json=req_data, headers=auth_headers(request_id))
        response.raise_for_status()
        await response.aread()
        return response

    async def stream_from_decode(client: httpx.AsyncClient, endpoint: str, req_data: dict, request_id: str):
        async with client.stream("POST", endpoint, json=req_data, headers=auth_headers(request_id)) as response:
            response.raise_for_status()
            async for chunk in response.aiter_bytes():
                yield chunk

    async def handle(api: str, request: Request) -> StreamingResponse:
        req_data = await request.json()
        request_id = str(uuid.uuid4())
        prefill_client = next(app.state.next_prefill)
        prefill_response = await send_to_prefill(prefill_client, api, req_data, request_id)
        kv_transfer_params = prefill_response.json().get("kv_transfer_params", {})
        if kv_transfer_params:
            req_data["kv_transfer_params"] = kv_transfer_params
        decode_client = next(app.state.next_decode)
        return StreamingResponse(stream_from_decode(decode_client, api, req_data, request_id), media_type="application/json")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle("/completions", request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle("/chat/completions", request)

    @app.get("/healthcheck")
    async def healthcheck():
        return {"status": "ok", "prefill_instances": len(prefill), "decode_instances": len(decode)}

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prefiller-hosts", nargs="+", default=["127.0.0.1"])
    parser.add_argument("--prefiller-ports", nargs="+", type=int, required=True)
    parser.add_argument("--decoder-hosts", nargs="+", default=["127.0.0.1"])
    parser.add_argument("--decoder-ports", nargs="+", type=int, required=True)
    args = parser.parse_args()
    app = build_app(list(zip(args.prefiller_hosts, args.prefiller_ports)), list(zip(args.decoder_hosts, args.decoder_ports)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    # uvicorn.run(app, host, port)'s defaults: auto loop (uvloop if importable), auto HTTP parser
    # (httptools if importable), info logging with one access-log line per request.
    config = uvicorn.Config(app)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
