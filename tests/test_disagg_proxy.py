"""End-to-end tests of scripts/disagg_proxy_server.py.

The proxy runs as a real subprocess (exactly as on a node) in front of fake prefill (P) and
decode (D) servers. The fakes are small aiohttp apps on a background event loop in this
process; they record every request so the tests can assert the exact bodies and headers the
proxy sent. Everything binds 127.0.0.1 on ephemeral ports (the proxy with ``--port 0``).

Prompt markers steer the fakes: ``NOKV`` (P returns no kv_transfer_params), ``SLOW`` (D sends
SSE chunks 100 ms apart), ``HANG`` (D pauses 2 s between chunks), ``DIE`` (D drops the
connection after the first chunk).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "disagg_proxy_server.py"
LISTENING = re.compile(r"proxy listening on http://127\.0\.0\.1:(\d+)$")
KV_BLOCK_FOR_P = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


# --------------------------------------------------------------------------- fake backends


@dataclass
class Received:
    """One request a fake backend saw."""

    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]


@dataclass
class FakeBackend:
    """A fake vLLM server in the role of P or D; records what it receives."""

    role: str
    name: str
    fail_status: int | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kv_params(self) -> dict[str, Any]:
        """What this P hands to D (shape of vLLM 0.10's NixlConnector output)."""
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": [1, 2, 3],
            "remote_engine_id": f"engine-{self.name}",
            "remote_host": "127.0.0.1",
            "remote_port": 5600,
            "tp_size": 1,
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completion)
        app.router.add_post("/v1/chat/completions", self.completion)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model"}]})

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(
            Received(
                request.path, {k.lower(): v for k, v in request.headers.items()}, body
            )
        )
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text=f"{self.name} exploded")
        if self.role == "prefill":
            return self.prefill_answer(body)
        if body.get("stream"):
            return await self.stream(request, json.dumps(body))
        return web.json_response({"id": "cmpl-d", "served_by": self.name, "text": "hi"})

    def prefill_answer(self, body: dict[str, Any]) -> web.Response:
        answer: dict[str, Any] = {"id": "cmpl-p", "choices": [{"text": "x"}]}
        if "NOKV" not in json.dumps(body):
            answer["kv_transfer_params"] = self.kv_params()
        return web.json_response(answer)

    async def stream(self, request: web.Request, marker: str) -> web.StreamResponse:
        delay = 2.0 if "HANG" in marker else 0.1 if "SLOW" in marker else 0.0
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(5):
                if i:
                    await asyncio.sleep(delay)
                event = f'data: {{"i": {i}, "served_by": "{self.name}"}}\n\n'
                await resp.write(event.encode())
                if "DIE" in marker:
                    await asyncio.sleep(0.05)
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the proxy hung up on us (client gone or proxy shutting down)
        return resp


class FakeCluster:
    """Runs fake backends on one event loop in a background thread."""

    def __init__(self, backends: list[FakeBackend]) -> None:
        self.backends = backends
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runners: list[web.AppRunner] = []

    def start(self) -> None:
        self.thread.start()
        for backend in self.backends:
            asyncio.run_coroutine_threadsafe(self._serve(backend), self.loop).result(10)

    async def _serve(self, backend: FakeBackend) -> None:
        runner = web.AppRunner(backend.app(), access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        backend.port = runner.addresses[0][1]
        self.runners.append(runner)

    def stop(self) -> None:
        for runner in self.runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(10)
        asyncio.run_coroutine_threadsafe(self._cancel_leftovers(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    @staticmethod
    async def _cancel_leftovers() -> None:
        """Handlers still sleeping (the HANG stream) must not outlive the loop."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(scope="module")
def silent_port():
    """A port that accepts TCP connections (kernel backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- proxy process


class ProxyProcess:
    """The proxy script as a subprocess; collects its stderr lines."""

    def __init__(
        self, prefill: list[int], decode: list[int], read_timeout: float = 10
    ) -> None:
        argv = [sys.executable, str(SCRIPT), "--host", "127.0.0.1", "--port", "0"]
        argv += ["--prefiller-hosts", *["127.0.0.1"] * len(prefill)]
        argv += ["--prefiller-ports", *map(str, prefill)]
        argv += ["--decoder-hosts", *["127.0.0.1"] * len(decode)]
        argv += ["--decoder-ports", *map(str, decode)]
        argv += ["--connect-timeout", "2", "--read-timeout", str(read_timeout)]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._ready.wait(15):
            self.stop()
            pytest.fail("proxy did not start:\n" + "".join(self.lines))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_for(self, request_id: str) -> list[str]:
        time.sleep(0.05)  # the line is written right after the response ends
        return [line for line in self.lines if request_id in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster():
    backends = [
        FakeBackend("prefill", "P0"),
        FakeBackend("prefill", "P1"),
        FakeBackend("decode", "D0"),
        FakeBackend("decode", "D1"),
        FakeBackend("prefill", "P500", fail_status=500),
    ]
    fakes = FakeCluster(backends)
    fakes.start()
    yield {b.name: b for b in backends}
    fakes.stop()


@pytest.fixture(scope="module")
def proxies(cluster, silent_port):
    """Proxy processes for every topology the tests need, started once."""
    p0, p1, d0, d1 = (cluster[n].port for n in ("P0", "P1", "D0", "D1"))
    started: dict[str, ProxyProcess] = {}
    try:
        started["main"] = ProxyProcess([p0, p1], [d0, d1])
        started["1p1d"] = ProxyProcess([p0], [d0])
        started["p_down"] = ProxyProcess([closed_port()], [d0])
        started["d_down"] = ProxyProcess([p0], [closed_port()])
        started["p_500"] = ProxyProcess([cluster["P500"].port], [d0])
        started["p_silent"] = ProxyProcess([silent_port], [d0], read_timeout=0.5)
        yield started
    finally:
        for proxy in started.values():
            proxy.proc.terminate()  # all at once: each takes a moment to exit
        for proxy in started.values():
            proxy.stop()


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=10) as http:
        yield http


def received_by(cluster: dict[str, FakeBackend], role: str, request_id: str):
    """(backend, request) pairs of one role that carried this request id."""
    return [
        (backend, rec)
        for backend in cluster.values()
        if backend.role == role
        for rec in backend.received
        if rec.headers.get("x-request-id") == request_id
    ]


def one(cluster: dict[str, FakeBackend], role: str, request_id: str):
    hits = received_by(cluster, role, request_id)
    assert len(hits) == 1, f"{role} saw {request_id} {len(hits)} times"
    return hits[0]


def completion_body(**extra: Any) -> dict[str, Any]:
    body = {
        "model": "fake-model",
        "prompt": "hello",
        "temperature": 0.0,
        "max_tokens": 17,
        "stream": True,
        "stream_options": {"include_usage": True},
        "min_tokens": 5,
        "ignore_eos": True,
    }
    body.update(extra)
    return body


# --------------------------------------------------------------------------- request shapes


def test_prefill_and_decode_bodies_exact(cluster, proxies, client):
    rid = f"rid-{uuid.uuid4()}"
    body = completion_body()
    r = client.post(
        proxies["main"].url + "/v1/completions",
        json=body,
        headers={"X-Request-Id": rid, "Authorization": "Bearer sk-test"},
    )
    assert r.status_code == 200, r.text

    p_backend, p_rec = one(cluster, "prefill", rid)
    assert p_rec.path == "/v1/completions"
    assert p_rec.body == {
        "model": "fake-model",
        "prompt": "hello",
        "temperature": 0.0,
        "max_tokens": 1,
        "stream": False,
        "ignore_eos": True,
        "kv_transfer_params": KV_BLOCK_FOR_P,
    }
    assert "max_completion_tokens" not in p_rec.body
    assert p_rec.headers["authorization"] == "Bearer sk-test"

    _, d_rec = one(cluster, "decode", rid)
    assert d_rec.path == "/v1/completions"
    assert d_rec.body == {**body, "kv_transfer_params": p_backend.kv_params()}
    assert d_rec.headers["authorization"] == "Bearer sk-test"
    assert r.headers["X-KV-Transfer-Params"] == "present"


def test_chat_max_completion_tokens_rule(cluster, proxies, client):
    rid = f"rid-{uuid.uuid4()}"
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 50,
        "min_completion_tokens": 3,
        "stream": False,
    }
    r = client.post(
        proxies["main"].url + "/v1/chat/completions",
        json=body,
        headers={"X-Request-Id": rid},
    )
    assert r.status_code == 200, r.text
    p_backend, p_rec = one(cluster, "prefill", rid)
    assert p_rec.path == "/v1/chat/completions"
    assert p_rec.body == {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 1,
        "max_tokens": 1,
        "stream": False,
        "kv_transfer_params": KV_BLOCK_FOR_P,
    }
    _, d_rec = one(cluster, "decode", rid)
    assert d_rec.path == "/v1/chat/completions"
    assert d_rec.body == {**body, "kv_transfer_params": p_backend.kv_params()}


def test_request_id_propagated_or_generated(cluster, proxies, client):
    rid = f"client-{uuid.uuid4()}"
    r = client.post(
        proxies["main"].url + "/v1/completions",
        json=completion_body(stream=False),
        headers={"X-Request-Id": rid},
    )
    assert r.headers["X-Request-Id"] == rid
    one(cluster, "prefill", rid)
    one(cluster, "decode", rid)

    r = client.post(
        proxies["main"].url + "/v1/completions", json=completion_body(stream=False)
    )
    generated = r.headers["X-Request-Id"]
    assert uuid.UUID(generated)
    one(cluster, "prefill", generated)
    one(cluster, "decode", generated)


def test_one_log_line_per_request(proxies, client):
    rid = f"rid-{uuid.uuid4()}"
    client.post(
        proxies["main"].url + "/v1/completions",
        json=completion_body(stream=False),
        headers={"X-Request-Id": rid},
    )
    lines = proxies["main"].log_for(rid)
    assert len(lines) == 1, lines
    for key in (
        "prefill=http://",
        "decode=http://",
        "prefill_ms=",
        "decode_first_byte_ms=",
    ):
        assert key in lines[0]
    assert re.search(r"total_ms=\d+\.\d+", lines[0])


# --------------------------------------------------------------------------- relaying


def test_sse_relayed_as_it_arrives(proxies, client):
    arrivals: list[float] = []
    events: list[bytes] = []
    buffer = b""
    start = time.perf_counter()
    with client.stream(
        "POST",
        proxies["main"].url + "/v1/completions",
        json=completion_body(prompt="SLOW"),
    ) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert float(r.headers["X-Proxy-Prefill-Ms"]) >= 0
        assert float(r.headers["X-Proxy-Decode-First-Byte-Ms"]) >= 0
        for chunk in r.iter_raw():
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                events.append(event)
                arrivals.append(time.perf_counter() - start)
    assert len(events) == 6 and events[-1] == b"data: [DONE]"
    gaps = [b - a for a, b in itertools.pairwise(arrivals[:5])]
    print(
        f"\nSSE arrival gaps through proxy (ms): {[round(g * 1000, 1) for g in gaps]}"
    )
    assert all(gap > 0.06 for gap in gaps), gaps
    assert arrivals[4] - arrivals[0] > 0.3


def test_non_streaming_json_relayed(proxies, client):
    r = client.post(
        proxies["main"].url + "/v1/completions", json=completion_body(stream=False)
    )
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["id"] == "cmpl-d" and r.json()["text"] == "hi"


def test_round_robin_over_two_p_and_two_d(cluster, proxies, client):
    chosen = []
    for _ in range(4):
        rid = f"rr-{uuid.uuid4()}"
        client.post(
            proxies["main"].url + "/v1/completions",
            json=completion_body(stream=False),
            headers={"X-Request-Id": rid},
        )
        chosen.append(
            (one(cluster, "prefill", rid)[0].name, one(cluster, "decode", rid)[0].name)
        )
    p_seq = [p for p, _ in chosen]
    d_seq = [d for _, d in chosen]
    assert (
        sorted(p_seq) == ["P0", "P0", "P1", "P1"] and p_seq[0] != p_seq[1] == p_seq[3]
    )
    assert (
        sorted(d_seq) == ["D0", "D0", "D1", "D1"] and d_seq[0] != d_seq[1] == d_seq[3]
    )


def test_missing_kv_transfer_params_is_visible(cluster, proxies, client):
    rid = f"nokv-{uuid.uuid4()}"
    body = completion_body(prompt="NOKV please", stream=False)
    r = client.post(
        proxies["main"].url + "/v1/completions",
        json=body,
        headers={"X-Request-Id": rid},
    )
    assert r.status_code == 200
    assert r.headers["X-KV-Transfer-Params"] == "missing"
    _, d_rec = one(cluster, "decode", rid)
    assert d_rec.body == body  # forwarded anyway, as vLLM's proxy does
    assert any("WARNING" in line for line in proxies["main"].log_for(rid))


def test_models_passthrough(proxies, client):
    r = client.get(proxies["main"].url + "/v1/models")
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "fake-model"


# --------------------------------------------------------------------------- failures


def assert_bad_gateway(r: httpx.Response, role: str, backend: str) -> dict[str, Any]:
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["type"] == "bad_gateway"
    assert err["role"] == role
    assert err["backend"] == backend
    assert err["message"].startswith(f"{role} backend {backend} failed: ")
    return err


def test_prefill_down_gives_502(proxies, client):
    proxy = proxies["p_down"]
    r = client.post(proxy.url + "/v1/completions", json=completion_body())
    p_port = re.search(r"prefill http://127.0.0.1:(\d+)", "".join(proxy.lines)).group(1)
    err = assert_bad_gateway(r, "prefill", f"http://127.0.0.1:{p_port}")
    assert "cannot connect" in err["message"] and err["status"] is None
    assert r.headers["X-Request-Id"]


def test_decode_down_gives_502(cluster, proxies, client):
    proxy = proxies["d_down"]
    rid = f"ddown-{uuid.uuid4()}"
    r = client.post(
        proxy.url + "/v1/completions",
        json=completion_body(),
        headers={"X-Request-Id": rid},
    )
    d_port = re.search(r"decode http://127.0.0.1:(\d+)", "".join(proxy.lines)).group(1)
    err = assert_bad_gateway(r, "decode", f"http://127.0.0.1:{d_port}")
    assert "ConnectionRefusedError" in err["message"]
    one(cluster, "prefill", rid)  # P was done; D is what broke


def test_prefill_500_gives_502_with_status_and_body(cluster, proxies, client):
    r = client.post(proxies["p_500"].url + "/v1/completions", json=completion_body())
    err = assert_bad_gateway(r, "prefill", cluster["P500"].url)
    assert err["status"] == 500
    assert "P500 exploded" in err["body"]


def test_silent_prefill_times_out_with_502(proxies, silent_port, client):
    start = time.perf_counter()
    r = client.post(proxies["p_silent"].url + "/v1/completions", json=completion_body())
    elapsed = time.perf_counter() - start
    err = assert_bad_gateway(r, "prefill", f"http://127.0.0.1:{silent_port}")
    assert "timeout" in err["message"] and "read timeout 0.5s" in err["message"]
    assert elapsed < 3

    start = time.perf_counter()
    r = client.get(proxies["p_silent"].url + "/health")
    assert r.status_code == 503 and time.perf_counter() - start < 2.5


def test_client_disconnect_is_logged(proxies):
    rid = f"gone-{uuid.uuid4()}"
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST",
            proxies["1p1d"].url + "/v1/completions",
            json=completion_body(prompt="SLOW"),
            headers={"X-Request-Id": rid},
        ) as r,
    ):
        next(r.iter_raw())  # first event, then hang up
    time.sleep(0.4)  # the proxy notices at its next write (D's next chunk, 100 ms)
    lines = proxies["1p1d"].log_for(rid)
    assert len(lines) == 1 and "client disconnected" in lines[0], lines


def test_decode_dying_mid_stream_ends_with_sse_error(proxies, client):
    r = client.post(
        proxies["1p1d"].url + "/v1/completions", json=completion_body(prompt="DIE")
    )
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert events[0].startswith('data: {"i": 0')
    err = json.loads(events[-1].removeprefix("data: "))["error"]
    assert err["role"] == "decode" and "after streaming began" in err["message"]


def test_invalid_json_gives_400(proxies, client):
    r = client.post(
        proxies["main"].url + "/v1/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_health_probes_backends(cluster, proxies, client):
    for path in ("/health", "/healthcheck"):
        r = client.get(proxies["main"].url + path)
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok"
        assert (body["prefill_instances"], body["decode_instances"]) == (2, 2)
        assert len(body["backends"]) == 4 and all(
            b["healthy"] for b in body["backends"]
        )

    start = time.perf_counter()
    r = client.get(proxies["p_down"].url + "/health")
    assert time.perf_counter() - start < 2
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    down = [b for b in body["backends"] if not b["healthy"]]
    assert len(down) == 1 and down[0]["role"] == "prefill" and down[0]["error"]


def test_mismatched_host_and_port_counts_exit_2():
    for args in (
        ["--prefiller-hosts", "a", "b", "--prefiller-ports", "1"],
        ["--decoder-host", "a", "--decoder-port", "1", "2"],
    ):
        done = subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert done.returncode == 2
        assert "one port per host" in done.stderr


def test_sigterm_exits_zero_quickly_even_mid_stream(cluster):
    proxy = ProxyProcess([cluster["P0"].port], [cluster["D0"].port])
    got_first = threading.Event()

    def hanging_stream() -> None:
        try:
            with httpx.stream(
                "POST",
                proxy.url + "/v1/completions",
                json=completion_body(prompt="HANG"),
            ) as r:
                for _ in r.iter_raw():
                    got_first.set()
        except httpx.HTTPError:
            pass

    threading.Thread(target=hanging_stream, daemon=True).start()
    try:
        assert got_first.wait(5)
        start = time.perf_counter()
        proxy.proc.send_signal(signal.SIGTERM)
        rc = proxy.proc.wait(5)
        elapsed = time.perf_counter() - start
    finally:
        proxy.stop()
    print(
        f"\nproxy exit after SIGTERM with a stream in flight: {elapsed * 1000:.0f} ms, rc={rc}"
    )
    assert rc == 0
    assert elapsed < 1.5


# --------------------------------------------------------------------------- latency


def ttfb(http: httpx.Client, url: str, body: dict[str, Any]) -> float:
    """Seconds from sending the request to the first body bytes."""
    start = time.perf_counter()
    with http.stream("POST", url, json=body) as r:
        chunks = r.iter_raw()
        next(chunks)
        first = time.perf_counter() - start
        for _ in chunks:
            pass
    return first


def test_proxy_adds_little_latency(cluster, proxies):
    body = completion_body(prompt="fast")
    direct_url = cluster["D0"].url + "/v1/completions"
    proxy_url = proxies["1p1d"].url + "/v1/completions"
    direct: list[float] = []
    proxied: list[float] = []
    with httpx.Client(timeout=10) as http:
        for _ in range(5):  # warm both paths (connections, code paths)
            ttfb(http, direct_url, body)
            ttfb(http, proxy_url, body)
        for _ in range(40):
            direct.append(ttfb(http, direct_url, body))
            proxied.append(ttfb(http, proxy_url, body))
    med_direct = statistics.median(direct) * 1000
    med_proxied = statistics.median(proxied) * 1000
    added = med_proxied - med_direct
    print(
        f"\nTTFB median direct to D {med_direct:.2f} ms, through proxy (incl. P hop) "
        f"{med_proxied:.2f} ms, added {added:.2f} ms; "
        f"p90 direct {statistics.quantiles(direct, n=10)[-1] * 1000:.2f} ms, "
        f"p90 proxied {statistics.quantiles(proxied, n=10)[-1] * 1000:.2f} ms"
    )
    assert added < 20
