#!/usr/bin/env python3
"""Naive streaming client used by bench/client_fidelity.py as a reference row (not a floor) and for calibration.

Standard library only.  ``--concurrency`` keep-alive HTTP/1.1 connections
(TCP_NODELAY), one ``selectors`` loop, a closed loop of streamed
``/v1/completions`` requests with token-id prompts and ``X-Request-Id:
<label>-<index>``.  It does as little as possible between the kernel and its
timestamps: ``time.monotonic()`` just before ``sendall`` and just after each
``recv`` (every SSE event completed by that ``recv`` gets its time), no JSON
parsing, no HTTP library.  Both stamps are on CLOCK_MONOTONIC, the clock of the
stand-in's ``/sim/trace``, so request and response legs can be measured
exactly.  Written for the stand-in's framing (chunked SSE, ``"choices": [{``
in token events); it is not a general client.

Output (``--out``): ``{"requests": [{"id", "send", "first", "tokens": [...]}]}``
for the measured requests (monotonic seconds); warmup requests are left out.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import time

TOKEN_MARK = b'"choices": [{'


class Conn:
    """One keep-alive connection running one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = f"{host}:{port}"
        self.buf = bytearray()
        self.rec: dict | None = None
        self.done_seen = False

    def send(self, rid: str, body: bytes) -> None:
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"X-Request-Id: {rid}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        data = head + body
        self.buf.clear()
        self.done_seen = False
        self.rec = {"id": rid, "send": time.monotonic(), "first": None, "tokens": []}
        self.sock.sendall(data)

    def on_readable(self) -> bool:
        """Read what is there; True once the response is complete."""
        chunk = self.sock.recv(1 << 18)
        now = time.monotonic()
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf = self.buf
        buf += chunk
        rec = self.rec
        assert rec is not None
        while True:
            cut = buf.find(b"\n\n")
            if cut < 0:
                break
            event = bytes(buf[:cut])
            del buf[: cut + 2]
            if TOKEN_MARK in event:
                rec["tokens"].append(now)
                if rec["first"] is None:
                    rec["first"] = now
            elif b"data: [DONE]" in event:
                self.done_seen = True
        return self.done_seen and buf.endswith(b"0\r\n\r\n")


def run_phase(conns: list[Conn], sel: selectors.BaseSelector, jobs: list[tuple[str, bytes]]) -> list[dict]:
    """Closed loop: each connection sends its next job as soon as its previous answer is complete."""
    pending = iter(jobs)
    done: list[dict] = []
    active = 0
    for conn in conns:
        job = next(pending, None)
        if job is None:
            break
        conn.send(*job)
        sel.register(conn.sock, selectors.EVENT_READ, conn)
        active += 1
    while active:
        for key, _ in sel.select(timeout=60):
            conn = key.data
            if conn.on_readable():
                done.append(conn.rec)
                job = next(pending, None)
                if job is None:
                    sel.unregister(conn.sock)
                    active -= 1
                else:
                    conn.send(*job)
    return done


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--num", type=int, required=True)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--label", default="raw")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    def job(i: int) -> tuple[str, bytes]:
        prompt = [1000 + i] + [7] * (a.prompt_tokens - 1)
        body = json.dumps({"model": a.model, "prompt": prompt, "max_tokens": a.max_tokens, "stream": True, "ignore_eos": True})
        return f"{a.label}-{i}", body.encode()

    conns = [Conn(a.host, a.port) for _ in range(max(1, min(a.concurrency, a.warmup + a.num)))]
    sel = selectors.DefaultSelector()
    try:
        run_phase(conns, sel, [job(i) for i in range(a.warmup)])
        measured = run_phase(conns, sel, [job(i) for i in range(a.warmup, a.warmup + a.num)])
    finally:
        for conn in conns:
            conn.sock.close()
        sel.close()
    with open(a.out, "w", encoding="utf-8") as fh:
        json.dump({"requests": measured}, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
