#!/usr/bin/env python3
"""The one load generator of bench/proxy_overhead.py: a long-lived aiohttp client process.

It reads one JSON command per line on stdin and answers each with one JSON line on stdout, so
every path is measured by the same process, with its connection pools kept warm between
commands:

* ``{"op": "ttft", "url": ..., "body": {...}, "concurrency": C, "requests": N}``: N requests, C at
  a time (closed loop). Per request: seconds from just before the request is sent to the receipt
  of the first body bytes (``ttft``), and to the end of the body (``total``).
* ``{"op": "rate", "url": ..., "body": {...}, "concurrency": C, "duration": S}``: C closed-loop
  workers for S seconds; answers the number of completed requests, their TTFTs and the elapsed
  time.

A proxy's ``X-Proxy-Prefill-Ms`` header (its own P round trip) is collected too.
* ``{"op": "quit"}``.

A request counts as failed (and is left out of the timings) unless it is a 200 whose body ends
the way the path should end it (``data: [DONE]`` for a stream, ``}`` for JSON).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
from proxy_common import run_fast

HEADERS = {"Content-Type": "application/json"}


class LoadGen:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def one(self, url: str, data: bytes, tail: bytes) -> tuple[float, float, float | None] | str:
        """(ttft, total, the proxy's X-Proxy-Prefill-Ms if any) in seconds, or an error string."""
        assert self.session is not None
        start = time.perf_counter()
        try:
            async with self.session.post(url, data=data, headers=HEADERS) as resp:
                first = await resp.content.readany()
                ttft = time.perf_counter() - start
                last = first
                async for chunk in resp.content.iter_any():
                    last = chunk
                total = time.perf_counter() - start
                status = resp.status
                prefill_ms = resp.headers.get("X-Proxy-Prefill-Ms")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"
        if status != 200:
            return f"HTTP {status}"
        if not last.rstrip().endswith(tail):
            return f"unexpected end of body: {last[-60:]!r}"
        return ttft, total, float(prefill_ms) / 1000.0 if prefill_ms else None

    async def ttft(self, cmd: dict[str, Any]) -> dict[str, Any]:
        url, data, tail = cmd["url"], json.dumps(cmd["body"]).encode(), cmd["tail"].encode()
        remaining = int(cmd["requests"])
        ttfts: list[float] = []
        totals: list[float] = []
        prefills: list[float] = []
        errors: list[str] = []

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                result = await self.one(url, data, tail)
                if isinstance(result, str):
                    errors.append(result)
                else:
                    ttfts.append(result[0])
                    totals.append(result[1])
                    if result[2] is not None:
                        prefills.append(result[2])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(int(cmd["concurrency"]))))
        return {"ttft": ttfts, "total": totals, "proxy_prefill": prefills, "errors": errors[:5], "failed": len(errors), "elapsed": time.perf_counter() - start}

    async def rate(self, cmd: dict[str, Any]) -> dict[str, Any]:
        url, data, tail = cmd["url"], json.dumps(cmd["body"]).encode(), cmd["tail"].encode()
        completed = 0
        ttfts: list[float] = []
        errors: list[str] = []
        start = time.perf_counter()
        deadline = start + float(cmd["duration"])

        async def worker() -> None:
            nonlocal completed
            while time.perf_counter() < deadline:
                result = await self.one(url, data, tail)
                if isinstance(result, str):
                    errors.append(result)
                else:
                    completed += 1
                    ttfts.append(result[0])

        await asyncio.gather(*(worker() for _ in range(int(cmd["concurrency"]))))
        return {"completed": completed, "ttft": ttfts, "errors": errors[:5], "failed": len(errors), "elapsed": time.perf_counter() - start}

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        loop = asyncio.get_running_loop()
        try:
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    return
                cmd = json.loads(line)
                if cmd["op"] == "quit":
                    return
                answer = await (self.ttft(cmd) if cmd["op"] == "ttft" else self.rate(cmd))
                sys.stdout.write(json.dumps(answer) + "\n")
                sys.stdout.flush()
        finally:
            await self.session.close()


def main() -> int:
    run_fast(LoadGen().run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
