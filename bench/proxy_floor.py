#!/usr/bin/env python3
"""The least a P/D proxy written in Python can cost: a floor for bench/proxy_overhead.py.

Not a product: it does only what every disaggregating proxy must do per request, on raw asyncio
protocols (uvloop when importable), and nothing a real one needs besides (no JSON validation, no
error answers, no timeouts, no metrics, no health checks of its backends, no logging):

1. read the client's request (head up to the blank line, then Content-Length bytes);
2. send P the body with ``"stream":false,"max_tokens":1`` and NIXL's ``kv_transfer_params``
   appended (duplicate JSON keys: the last one wins), on a kept-alive connection;
3. read P's answer (Content-Length), cut its ``kv_transfer_params`` object out of the bytes;
4. send D the client's body with that object appended, on a kept-alive connection;
5. relay D's response bytes to the client unchanged as they arrive, until the chunked body's
   terminator.

With ``--check-json`` it also parses the client's body and P's answer with ``json.loads`` (and
drops the request on invalid JSON): the least a proxy that checks its input pays.

Same command line as scripts/disagg_proxy_server.py for the flags the benchmark passes
(``--host --port --prefiller-hosts --prefiller-ports --decoder-hosts --decoder-ports``), prints
the same ``proxy listening on http://127.0.0.1:<port>`` line on stderr, answers GET /health.

    .venv/bin/python bench/proxy_overhead.py --quick --baseline-proxy bench/proxy_floor.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time

from proxy_common import run_fast

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
KV_MEMBER = re.compile(rb'"kv_transfer_params"\s*:\s*(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')
P_EXTRA = (
    b',"stream":false,"max_tokens":1,"kv_transfer_params":{"do_remote_decode":true,'
    b'"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,'
    b'"remote_host":null,"remote_port":null}}'
)
HEALTH_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
CHUNKED_END = b"\r\n0\r\n\r\n"


def post(host: bytes, body: bytes) -> bytes:
    head = b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % (host, len(body)) + body


class Backend(asyncio.Protocol):
    """One kept-alive connection; ``on_data`` gets every byte received while a request is on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_data = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.on_data(data)


class Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}".encode()
        self.idle: list[Backend] = []

    async def get(self) -> Backend:
        if self.idle:
            return self.idle.pop()
        _, conn = await asyncio.get_running_loop().create_connection(Backend, self.host, self.port)
        return conn


class Client(asyncio.Protocol):
    """One client connection; requests on it are served one after the other (no pipelining)."""

    def __init__(self, p: Pool, d: Pool, check_json: bool) -> None:
        self.p, self.d = p, d
        self.check_json = check_json
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        found = CONTENT_LENGTH.search(self.buf, 0, end + 2)
        length = int(found.group(1)) if found else 0
        if len(self.buf) < end + 4 + length:
            return
        head, body = bytes(self.buf[:end]), bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        if head.startswith(b"GET "):
            self.transport.write(HEALTH_OK)
        else:
            asyncio.ensure_future(self.relay(body))

    async def relay(self, body: bytes) -> None:
        if self.check_json:
            json.loads(body)
        sent = time.perf_counter()
        answer = await self.round_trip(await self.p.get(), self.p, post(self.p.host_header, body[:-1] + P_EXTRA))
        # The P round trip as this proxy saw it, in the header the benchmark reads from ours too.
        prefill_ms = b"X-Proxy-Prefill-Ms: %.3f\r\n" % ((time.perf_counter() - sent) * 1000.0)
        if self.check_json:
            json.loads(answer)
        kv = KV_MEMBER.search(answer)
        d_body = body[:-1] + b',"kv_transfer_params":' + (kv.group(1) if kv else b"null") + b"}"
        conn = await self.d.get()
        done = asyncio.get_running_loop().create_future()
        tail = bytearray()
        first = [True]

        def on_data(data: bytes) -> None:
            if first[0]:
                first[0] = False
                line_end = data.find(b"\r\n") + 2
                data = data[:line_end] + prefill_ms + data[line_end:]
            self.transport.write(data)
            tail[:] = (bytes(tail) + data)[-len(CHUNKED_END) :]
            if tail == CHUNKED_END and not done.done():
                done.set_result(None)

        conn.on_data = on_data
        conn.transport.write(post(self.d.host_header, d_body))
        await done
        self.d.idle.append(conn)

    @staticmethod
    async def round_trip(conn: Backend, pool: Pool, request: bytes) -> bytes:
        done = asyncio.get_running_loop().create_future()
        buf = bytearray()

        def on_data(data: bytes) -> None:
            buf.extend(data)
            end = buf.find(b"\r\n\r\n")
            found = CONTENT_LENGTH.search(buf, 0, end + 2) if end >= 0 else None
            if found and len(buf) >= end + 4 + int(found.group(1)) and not done.done():
                done.set_result(bytes(buf[end + 4 :]))

        conn.on_data = on_data
        conn.transport.write(request)
        answer = await done
        pool.idle.append(conn)
        return answer


async def serve(args: argparse.Namespace) -> None:
    p = Pool(args.prefiller_hosts[0], args.prefiller_ports[0])
    d = Pool(args.decoder_hosts[0], args.decoder_ports[0])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(p, d, args.check_json), args.host, args.port, backlog=1024)
    print(f"proxy listening on http://{args.host}:{server.sockets[0].getsockname()[1]}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    for role in ("prefiller", "decoder"):
        parser.add_argument(f"--{role}-hosts", nargs="+", required=True)
        parser.add_argument(f"--{role}-ports", nargs="+", type=int, required=True)
    parser.add_argument("--check-json", action="store_true", help="parse the client's body and P's answer")
    run_fast(serve(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
