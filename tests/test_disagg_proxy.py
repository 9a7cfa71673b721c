"""End-to-end tests of scripts/disagg_proxy_server.py.

The proxy runs as a real subprocess (exactly as on a node) in front of fake prefill (P) and
decode (D) servers. The fakes are small aiohttp apps on a background event loop in this
process; they record every request so the tests can assert the exact bodies and headers the
proxy sent. Everything binds 127.0.0.1 on ephemeral ports (the proxy with ``--port 0``).

Prompt markers steer the fakes: ``NOKV`` (P returns no kv_transfer_params), ``SLOW`` (D sends
SSE chunks 100 ms apart), ``HANG`` (D pauses 2 s between chunks), ``DIE`` (D drops the
connection after the first chunk), ``GATE:<id>`` (D sends the first chunk, then holds the
stream open until the test calls ``release(<id>)``), ``BIG:<id>`` (D sends BIG_EVENTS events of
BIG_PAD bytes as fast as it may, counting them in ``big[<id>]``).

No assertion depends on how fast this machine is: waits for something to happen are bounded
polls, and the few time limits are far from what the behaviour under test would take.
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
from ports import free_port

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
    loop: asyncio.AbstractEventLoop | None = None
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)  # gate ids whose stream D completed
    big: dict[str, int] = field(default_factory=dict)  # BIG:<id> -> events written so far

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

    def gate(self, gate_id: str) -> asyncio.Event:
        return self.gates.setdefault(gate_id, asyncio.Event())

    def release(self, gate_id: str) -> None:
        """Let a ``GATE:<id>`` stream go on (called from the test's thread)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(lambda: self.gate(gate_id).set())

    async def stream(self, request: web.Request, marker: str) -> web.StreamResponse:
        delay = 2.0 if "HANG" in marker else 0.1 if "SLOW" in marker else 0.0
        gate = re.search(r"GATE:([\w-]+)", marker)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        big = re.search(r"BIG:([\w-]+)", marker)
        if big:
            return await self.big_stream(resp, big.group(1))
        try:
            for i in range(5):
                if i == 1 and gate:
                    await self.gate(gate.group(1)).wait()
                if i:
                    await asyncio.sleep(delay)
                event = f'data: {{"i": {i}, "served_by": "{self.name}"}}\n\n'
                await resp.write(event.encode())
                if "DIE" in marker:
                    await asyncio.sleep(0.05)
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
            if gate:  # before the last bytes leave: a client that has them can rely on it
                self.finished.append(gate.group(1))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the proxy hung up on us (client gone or proxy shutting down)
        return resp


    async def big_stream(self, resp: web.StreamResponse, big_id: str) -> web.StreamResponse:
        """Many large events written as fast as the reader takes them (resp.write waits for the
        socket to drain): how far it got shows whether anything upstream held bytes back."""
        self.big[big_id] = 0
        pad = "x" * BIG_PAD
        try:
            for i in range(BIG_EVENTS):
                await resp.write(f'data: {{"i": {i}, "pad": "{pad}"}}\n\n'.encode())
                self.big[big_id] = i + 1
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp


BIG_EVENTS, BIG_PAD = 4096, 16 * 1024  # 64 MiB: more than every buffer between D and the client


class FakeCluster:
    """Runs fake backends on one event loop in a background thread."""

    current: FakeCluster | None = None

    @classmethod
    def of(cls, backends: dict[str, FakeBackend]) -> FakeCluster:
        """The cluster serving these backends (the module fixture's)."""
        assert cls.current is not None and {b.name for b in cls.current.backends} == set(backends)
        return cls.current

    def __init__(self, backends: list[FakeBackend]) -> None:
        self.backends = backends
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runners: dict[str, web.AppRunner] = {}

    def start(self) -> None:
        self.thread.start()
        for backend in self.backends:
            self.start_backend(backend)

    def start_backend(self, backend: FakeBackend) -> None:
        """Serve (again: on the same port) one backend."""
        asyncio.run_coroutine_threadsafe(self._serve(backend), self.loop).result(10)

    def stop_backend(self, backend: FakeBackend) -> None:
        """Close one backend's listener and connections: it is down until start_backend()."""
        runner = self.runners.pop(backend.name)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(10)

    async def _serve(self, backend: FakeBackend) -> None:
        backend.loop = asyncio.get_running_loop()
        runner = web.AppRunner(backend.app(), access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", backend.port).start()
        backend.port = runner.addresses[0][1]
        self.runners[backend.name] = runner

    def stop(self) -> None:
        for runner in self.runners.values():
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
    """A port nothing listens on (connection refused), claimed so that no parallel test binds it."""
    return free_port()


# --------------------------------------------------------------------------- proxy process


class ProxyProcess:
    """The proxy script as a subprocess; collects its stderr lines."""

    def __init__(self, prefill: list[int], decode: list[int], read_timeout: float = 10, extra: tuple[str, ...] = (),
                 unified: list[int] | None = None) -> None:
        argv = [sys.executable, str(SCRIPT), "--host", "127.0.0.1", "--port", "0"]
        roles = [("unified", unified)] if unified else [("prefiller", prefill), ("decoder", decode)]
        for role, ports in roles:
            argv += [f"--{role}-hosts", *["127.0.0.1"] * len(ports), f"--{role}-ports", *map(str, ports)]
        # Every request's line (DEBUG): tests find a request's line by its id; test_request_lines_are_sampled checks INFO.
        argv += ["--connect-timeout", "2", "--read-timeout", str(read_timeout), "--log-level", "debug", *extra]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        self.reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.reader.start()
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

    def wait(self, timeout: float) -> int:
        """Exit status, once the process has ended and all its log lines are read."""
        rc = self.proc.wait(timeout)
        self.reader.join(5)
        return rc

    def log_for(self, request_id: str) -> list[str]:
        time.sleep(0.05)  # the line is written right after the response ends
        return [line for line in self.lines if request_id in line]

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line with {text!r} within {timeout:g}s:\n" + "".join(self.lines[-20:]))

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        r = httpx.get(self.url + "/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
        return parse_metrics(r.text)

    def wait_for_metric(self, name: str, labels: dict[str, str], value: float, timeout: float = 15) -> None:
        key = (name, frozenset(labels.items()))
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.metrics().get(key)
            if seen == value:
                return
            time.sleep(0.05)
        raise AssertionError(f"{name}{labels} stayed {seen}, expected {value}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def refuses_connections(port: int, timeout: float = 10) -> bool:
    """True once nothing accepts connections on the port (a listener closes asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format -> {(name, labels): value}; every sample line must parse."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        assert match, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster():
    backends = [
        FakeBackend("prefill", "P0"),
        FakeBackend("prefill", "P1"),
        FakeBackend("decode", "D0"),
        FakeBackend("decode", "D1"),
        FakeBackend("prefill", "P500", fail_status=500),
        FakeBackend("decode", "DE0"),  # for the ejection test only: it stops and restarts DE1
        FakeBackend("decode", "DE1"),
    ]
    fakes = FakeCluster(backends)
    fakes.start()
    FakeCluster.current = fakes
    yield {b.name: b for b in backends}
    FakeCluster.current = None
    fakes.stop()


@pytest.fixture(scope="module")
def proxies(cluster, silent_port):
    """Proxy processes for every topology the tests need, started once. Those in front of a
    broken backend probe health only at start-up, so that what a request meets is the
    request-path failure (the background checks are tested on their own)."""
    p0, p1, d0, d1 = (cluster[n].port for n in ("P0", "P1", "D0", "D1"))
    rarely = ("--health-interval", "3600")
    started: dict[str, ProxyProcess] = {}
    try:
        started["main"] = ProxyProcess([p0, p1], [d0, d1])
        started["1p1d"] = ProxyProcess([p0], [d0])
        started["p_down"] = ProxyProcess([closed_port()], [d0], extra=rarely)
        started["d_down"] = ProxyProcess([p0], [closed_port()], extra=rarely)
        started["p_500"] = ProxyProcess([cluster["P500"].port], [d0], extra=rarely)
        started["p_silent"] = ProxyProcess([silent_port], [d0], read_timeout=0.5, extra=rarely)
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


def test_request_lines_are_sampled_at_info(cluster):
    """At INFO (the node's level) a 200k-request run must not write a line per request: the first
    10, every --log-every-th and every failure only."""
    proxy = ProxyProcess([cluster["P0"].port], [cluster["D0"].port], extra=("--log-level", "info", "--log-every", "5"))
    try:
        ids = [f"s{i}-{uuid.uuid4()}" for i in range(1, 18)]
        with httpx.Client(timeout=10) as http:
            for rid in ids:
                r = http.post(proxy.url + "/v1/completions", json=completion_body(stream=False), headers={"X-Request-Id": rid})
                assert r.status_code == 200
        proxy.proc.terminate()
        assert proxy.wait(10) == 0
        logged = [i for i, rid in enumerate(ids, 1) if any(rid in line for line in proxy.lines)]
        assert logged == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15], logged
        assert any("then every 5th" in line for line in proxy.lines)
    finally:
        proxy.stop()


def test_a_failed_request_is_logged_at_info(cluster):
    proxy = ProxyProcess([cluster["P500"].port], [cluster["D0"].port], extra=("--log-level", "info", "--health-interval", "3600"))
    try:
        with httpx.Client(timeout=10) as http:
            for i in range(12):  # past the first 10, which are logged anyway
                rid = f"fail{i}-{uuid.uuid4()}"
                r = http.post(proxy.url + "/v1/completions", json=completion_body(stream=False), headers={"X-Request-Id": rid})
                assert r.status_code == 502
        line = proxy.wait_for_log(f"request_id={rid}")
        assert "status=502" in line and "error=" in line
    finally:
        proxy.stop()


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


def test_unified_replicas_get_the_client_body_round_robin_without_a_p_leg(cluster, client):
    """`--unified-hosts`: data-parallel replicas of a unified server behind one address."""
    proxy = ProxyProcess([], [], unified=[cluster["D0"].port, cluster["D1"].port])
    try:
        health = client.get(proxy.url + "/health").json()
        assert health["status"] == "ok" and health["unified_instances"] == 2 and "prefill_instances" not in health
        assert {b["role"] for b in health["backends"]} == {"unified"}
        chosen = []
        for _ in range(4):
            rid = f"uni-{uuid.uuid4()}"
            body = completion_body(stream=False)
            r = client.post(proxy.url + "/v1/completions", json=body, headers={"X-Request-Id": rid})
            assert r.status_code == 200 and "x-proxy-prefill-backend" not in r.headers
            assert received_by(cluster, "prefill", rid) == []
            backend, rec = one(cluster, "decode", rid)
            assert rec.body == body  # relayed as the client sent it: no kv_transfer_params, no P step
            chosen.append(backend.name)
        assert sorted(chosen) == ["D0", "D0", "D1", "D1"] and chosen[0] != chosen[1] == chosen[3]
        line = proxy.wait_for_log(f"request_id={rid}")
        assert " prefill=- " in line and f"decode={cluster[chosen[-1]].url}" in line
    finally:
        proxy.stop()


def test_unified_flags_replace_the_p_d_flags():
    for args, message in ((["--unified-hosts", "a", "--unified-ports", "1", "--decoder-ports", "2"], "give one or the other"),
                          (["--unified-hosts", "a"], "go together"),
                          (["--unified-hosts", "a", "b", "--unified-ports", "1"], "one port per host")):
        done = subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True, timeout=10)
        assert done.returncode == 2 and message in done.stderr, done.stderr


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


def test_sigterm_past_the_grace_exits_zero_even_mid_stream(cluster):
    """A stream that outlives --shutdown-grace is cut; the proxy still exits 0, long before
    the stream (5 chunks, 2 s apart) would have ended."""
    proxy = ProxyProcess([cluster["P0"].port], [cluster["D0"].port], extra=("--shutdown-grace", "0.5"))
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
        rc = proxy.wait(10)
        elapsed = time.perf_counter() - start
    finally:
        proxy.stop()
    print(f"\nproxy exit after SIGTERM, grace 0.5 s, a stream in flight: {elapsed * 1000:.0f} ms, rc={rc}")
    assert rc == 0
    assert elapsed < 5  # the stream needed 8 s more
    assert any("closing 1 request(s) still in flight" in line for line in proxy.lines), proxy.lines[-5:]


def test_sigterm_when_idle_exits_without_waiting_for_the_grace(cluster):
    """Nothing in flight: exit at once, not after --shutdown-grace (the node runner SIGKILLs after 5 s)."""
    proxy = ProxyProcess([cluster["P0"].port], [cluster["D0"].port], extra=("--shutdown-grace", "30"))
    try:
        r = httpx.post(proxy.url + "/v1/completions", json=completion_body(stream=False), timeout=10)
        assert r.status_code == 200
        start = time.perf_counter()
        proxy.proc.send_signal(signal.SIGTERM)
        rc = proxy.wait(20)
        elapsed = time.perf_counter() - start
    finally:
        proxy.stop()
    assert rc == 0
    assert elapsed < 10  # far below the 30 s grace


def test_graceful_shutdown_lets_an_in_flight_stream_finish(cluster):
    """SIGTERM mid-stream: no new connections, the stream runs to [DONE], then exit 0."""
    d0 = cluster["D0"]
    proxy = ProxyProcess([cluster["P0"].port], [d0.port])
    gate = f"drain-{uuid.uuid4()}"
    try:
        with (
            httpx.Client(timeout=10) as http,
            http.stream("POST", proxy.url + "/v1/completions", json=completion_body(prompt=f"GATE:{gate}")) as r,
        ):
            chunks = r.iter_raw()
            assert next(chunks).startswith(b'data: {"i": 0')
            proxy.proc.send_signal(signal.SIGTERM)
            proxy.wait_for_log("signal received, shutting down")
            assert "1 request(s) in flight" in proxy.wait_for_log("signal received")
            assert refuses_connections(proxy.port)
            assert proxy.proc.poll() is None  # still serving the stream
            d0.release(gate)
            rest = b"".join(chunks)
        assert rest.rstrip().endswith(b"data: [DONE]")
        assert rest.count(b"data: ") == 5  # events 1..4 and [DONE]
        assert proxy.wait(10) == 0
    finally:
        d0.release(gate)
        proxy.stop()
    assert gate in d0.finished
    assert not any("still in flight" in line for line in proxy.lines)


# --------------------------------------------------------------------------- relay, health, metrics


def test_chunks_reach_the_client_before_the_backend_finishes(cluster, proxies):
    """The first event arrives while D still holds the stream open: no buffering."""
    d0 = cluster["D0"]
    gate = f"relay-{uuid.uuid4()}"
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=5)) as http,
            http.stream("POST", proxies["1p1d"].url + "/v1/completions", json=completion_body(prompt=f"GATE:{gate}")) as r,
        ):
            assert r.status_code == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            chunks = r.iter_raw()
            first = next(chunks)  # a buffering proxy would time out here (read timeout 5 s)
            assert first.startswith(b'data: {"i": 0')
            assert gate not in d0.finished
            d0.release(gate)
            rest = b"".join(chunks)
    finally:
        d0.release(gate)
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert gate in d0.finished


def test_request_id_reaches_backends_headers_and_log(cluster, proxies, client):
    rid = f"trace-{uuid.uuid4()}"
    r = client.post(proxies["1p1d"].url + "/v1/completions", json=completion_body(), headers={"X-Request-Id": rid})
    assert r.status_code == 200 and r.headers["X-Request-Id"] == rid
    assert one(cluster, "prefill", rid)[1].headers["x-request-id"] == rid
    assert one(cluster, "decode", rid)[1].headers["x-request-id"] == rid
    assert len(proxies["1p1d"].log_for(rid)) == 1


def test_invalid_token_list_is_a_400_and_never_reaches_decode(cluster, proxies, client):
    """Long token-id prompts are validated while P works; a bad one is still a 400."""
    rid = f"badids-{uuid.uuid4()}"
    prompt = "[" + ",".join(["17"] * 400) + ",,18]"
    raw = '{"model": "fake-model", "max_tokens": 4, "stream": true, "prompt": ' + prompt + "}"
    r = client.post(
        proxies["1p1d"].url + "/v1/completions",
        content=raw.encode(),
        headers={"Content-Type": "application/json", "X-Request-Id": rid},
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "not valid JSON" in err["message"]
    assert received_by(cluster, "decode", rid) == []

    rid = f"goodids-{uuid.uuid4()}"
    ids = list(range(1000, 1400))
    r = client.post(proxies["1p1d"].url + "/v1/completions", json=completion_body(prompt=ids), headers={"X-Request-Id": rid})
    assert r.status_code == 200
    assert one(cluster, "prefill", rid)[1].body["prompt"] == ids
    assert one(cluster, "decode", rid)[1].body["prompt"] == ids


def test_metrics_count_requests_errors_and_latencies(proxies, client):
    proxy = proxies["main"]
    before = proxy.metrics()
    for _ in range(2):
        assert client.post(proxy.url + "/v1/completions", json=completion_body()).status_code == 200
    r = client.post(proxy.url + "/v1/completions", content=b"{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    after = proxy.metrics()

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("disagg_proxy_requests_total", route="/v1/completions", status="200") == 2
    assert delta("disagg_proxy_requests_total", route="/v1/completions", status="400") == 1
    assert delta("disagg_proxy_errors_total", role="client", kind="bad_request") == 1
    for histogram in ("disagg_proxy_prefill_seconds", "disagg_proxy_decode_first_byte_seconds", "disagg_proxy_request_seconds"):
        assert delta(f"{histogram}_count") == 2
        assert delta(f"{histogram}_sum") > 0
        assert delta(f"{histogram}_bucket", le="+Inf") == 2
        assert metric(after, f"{histogram}_bucket", le="300") == metric(after, f"{histogram}_count")
    assert metric(after, "disagg_proxy_in_flight_requests") == 0
    healthy = {dict(labels)["backend"]: v for (name, labels), v in after.items() if name == "disagg_proxy_backend_healthy"}
    assert len(healthy) == 4 and set(healthy.values()) == {1.0}

    p500 = proxies["p_500"]
    before = p500.metrics()
    assert client.post(p500.url + "/v1/completions", json=completion_body()).status_code == 502
    after = p500.metrics()
    assert delta("disagg_proxy_errors_total", role="prefill", kind="http_status") == 1
    assert delta("disagg_proxy_requests_total", route="/v1/completions", status="502") == 1


def test_dead_backend_is_ejected_and_returns(cluster):
    """Background checks take a dead decoder out of the round robin and bring it back."""
    fakes = FakeCluster.of(cluster)
    de0, de1 = cluster["DE0"], cluster["DE1"]
    proxy = ProxyProcess(
        [cluster["P0"].port],
        [de0.port, de1.port],
        # A dead port refuses at once; the long timeout keeps a slow machine from ejecting live ones.
        extra=("--health-interval", "0.2", "--health-timeout", "5", "--eject-after", "2"),
    )
    gauge = "disagg_proxy_backend_healthy"
    try:
        proxy.wait_for_metric(gauge, {"role": "decode", "backend": de1.url}, 1)
        fakes.stop_backend(de1)
        proxy.wait_for_metric(gauge, {"role": "decode", "backend": de1.url}, 0)
        assert "failed health checks in a row" in proxy.wait_for_log(f"backend ejected: decode {de1.url}")
        served = []
        with httpx.Client(timeout=10) as http:
            for _ in range(4):
                r = http.post(proxy.url + "/v1/completions", json=completion_body(stream=False))
                assert r.status_code == 200, r.text
                served.append(r.headers["X-Proxy-Decode-Backend"])
            assert served == [de0.url] * 4
            assert metric(proxy.metrics(), gauge, role="decode", backend=de0.url) == 1
            assert metric(proxy.metrics(), "disagg_proxy_backend_ejections_total", role="decode", backend=de1.url) == 1

            fakes.start_backend(de1)
            proxy.wait_for_metric(gauge, {"role": "decode", "backend": de1.url}, 1)
            proxy.wait_for_log(f"backend returned: decode {de1.url}")
            served = []
            for _ in range(4):
                r = http.post(proxy.url + "/v1/completions", json=completion_body(stream=False))
                assert r.status_code == 200, r.text
                served.append(r.headers["X-Proxy-Decode-Backend"])
        assert sorted(served) == sorted([de0.url, de1.url] * 2)
    finally:
        if de1.name not in fakes.runners:
            fakes.start_backend(de1)
        proxy.stop()


def test_connection_error_on_the_request_path_ejects_at_once(cluster):
    dead = closed_port()
    proxy = ProxyProcess([dead, cluster["P0"].port], [cluster["D0"].port], extra=("--health-interval", "3600"))
    dead_url = f"http://127.0.0.1:{dead}"
    try:
        with httpx.Client(timeout=10) as http:
            r = http.post(proxy.url + "/v1/completions", json=completion_body(stream=False))
            err = assert_bad_gateway(r, "prefill", dead_url)
            assert "cannot connect" in err["message"]
            for _ in range(3):  # the round robin skips the dead one from now on
                r = http.post(proxy.url + "/v1/completions", json=completion_body(stream=False))
                assert r.status_code == 200 and r.headers["X-Proxy-Prefill-Backend"] == cluster["P0"].url
        samples = proxy.metrics()
        assert metric(samples, "disagg_proxy_backend_healthy", role="prefill", backend=dead_url) == 0
        assert metric(samples, "disagg_proxy_errors_total", role="prefill", kind="connect") == 1
        assert "connection error on the request path" in proxy.wait_for_log(f"backend ejected: prefill {dead_url}")
    finally:
        proxy.stop()


def test_no_healthy_backend_gives_json_503_without_trying(cluster):
    """No P left: 503 naming each P and why; D is not contacted. Same for no D left."""
    dead = closed_port()
    proxy = ProxyProcess([dead], [cluster["D0"].port], extra=("--health-interval", "3600"))
    try:
        with httpx.Client(timeout=10) as http:
            assert http.post(proxy.url + "/v1/completions", json=completion_body()).status_code == 502  # ejects P
            rid = f"none-{uuid.uuid4()}"
            r = http.post(proxy.url + "/v1/completions", json=completion_body(), headers={"X-Request-Id": rid})
        assert r.status_code == 503, r.text
        assert r.headers["X-Request-Id"] == rid
        err = r.json()["error"]
        assert err["type"] == "service_unavailable" and err["role"] == "prefill"
        assert err["message"].startswith(f"no healthy prefill backend: http://127.0.0.1:{dead} (")
        assert "Connection refused" in err["message"]
        assert received_by(cluster, "decode", rid) == []
        assert metric(proxy.metrics(), "disagg_proxy_errors_total", role="prefill", kind="no_healthy_backend") == 1
    finally:
        proxy.stop()

    dead = closed_port()
    proxy = ProxyProcess([cluster["P0"].port], [dead], extra=("--health-interval", "0.2"))
    try:
        proxy.wait_for_metric("disagg_proxy_backend_healthy", {"role": "decode", "backend": f"http://127.0.0.1:{dead}"}, 0)
        rid = f"none-{uuid.uuid4()}"
        r = httpx.post(proxy.url + "/v1/completions", json=completion_body(), headers={"X-Request-Id": rid}, timeout=10)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["role"] == "decode"
        assert r.json()["error"]["message"].startswith(f"no healthy decode backend: http://127.0.0.1:{dead} (")
        assert received_by(cluster, "prefill", rid) == []  # P was not asked for a KV it cannot hand on
    finally:
        proxy.stop()


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
