"""Tests for scripts/vllm_sim.py, the GPU-free stand-in for ``vllm serve``.

Every test drives the real script as a subprocess (in its own process group,
bound to 127.0.0.1 on free ephemeral ports), because that is how the pipeline
uses it: a wrong flag, a missing metric or a hung shutdown only shows up in a
real process.  Servers are shared per module where the tests do not disturb
each other, to keep the whole file well under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from ports import free_port

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vllm_sim.py"
HOST = "127.0.0.1"
MODEL = "sim/test-model"

# Plain (no KV connector) server profile: fast but with known, measurable timings.
PLAIN_PROFILE = {
    "startup_s": 0.6,
    "prefill_tokens_per_s": 20000.0,
    "prefill_overhead_ms": 2.0,
    "decode_ms_per_step": 5.0,
    "decode_batch_slowdown": 0.01,
    "time_scale": 1.0,
}
# P/D profile: transfers are slow enough to be measured (10 kB per token).
PD_PROFILE = {
    "startup_s": 0.1,
    "prefill_tokens_per_s": 50000.0,
    "prefill_overhead_ms": 1.0,
    "decode_ms_per_step": 2.0,
    "kv_bytes_per_token": 10000,
    "bandwidth_gbps": {"tcp": 1.0, "efa": 0.8},
    "transfer_overhead_ms": {"tcp": 5.0, "efa": 50.0},
    # Far longer than any test takes between a prefill and its decode, however loaded the
    # machine: a lease running out mid-test would be a flake. The expiry test uses its own.
    "kv_lease_s": 120.0,
}
SHORT_LEASE_S = 0.6
PRODUCER_FLAGS = ["--kv-transfer-config", json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_producer"})]


@dataclass
class Sim:
    """A running simulator process and what a test needs to talk to it."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    side_port: int | None = None
    started_at: float = 0.0
    refused_before_ready: int = 0
    ready_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL of the HTTP server."""
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")


def spawn(
    tmp: Path,
    name: str,
    profile: dict[str, Any] | None,
    flags: list[str] | None = None,
    env: dict[str, str] | None = None,
    side_port: int | None = None,
    sim_flags: list[str] | None = None,
) -> Sim:
    """Start the script in its own session (process group); output goes to a file.

    ``sim_flags`` are the sim-only flags that go before ``serve``.
    """
    port = free_port()
    argv = [sys.executable, str(SCRIPT)]
    if profile is not None:
        argv += ["--profile-json", json.dumps(profile)]
    argv += [*(sim_flags or []), "serve", MODEL, "--host", HOST, "--port", str(port), *(flags or [])]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "FI_", "DISAGG_SIM"))}
    full_env["PYTHONDONTWRITEBYTECODE"] = "1"
    if side_port is not None:
        full_env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = HOST
        full_env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(side_port)
    full_env.update(env or {})
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
    return Sim(proc, port, log_path, side_port=side_port, started_at=time.monotonic())


def wait_ready(sim: Sim, timeout: float = 20.0) -> Sim:
    """Poll the port until /health answers 200; count refusals seen before that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sim.proc.poll() is not None:
            raise AssertionError(f"sim exited with {sim.proc.returncode}:\n{sim.log()}")
        try:
            with socket.create_connection((HOST, sim.port), timeout=0.5):
                pass
        except OSError:
            sim.refused_before_ready += 1
            time.sleep(0.02)
            continue
        response = httpx.get(sim.url + "/health", timeout=5.0, trust_env=False)
        if response.status_code == 200:
            sim.ready_at = time.monotonic()
            return sim
        time.sleep(0.02)
    raise AssertionError(f"sim not ready after {timeout} s:\n{sim.log()}")


def stop(sim: Sim) -> None:
    """Kill the whole process group; never leave a process behind."""
    if sim.proc.poll() is None:
        try:
            os.killpg(sim.proc.pid, signal.SIGTERM)
            sim.proc.wait(timeout=3)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(sim.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    sim.proc.wait(timeout=5)


def client() -> httpx.Client:
    """A sync client that ignores proxy settings from the environment (loopback only)."""
    return httpx.Client(timeout=30.0, trust_env=False)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of one metric name whose labels include ``labels``."""
    total = 0.0
    found = False
    pattern = re.compile(r"^" + re.escape(name) + r"(\{[^}]*\})? (\S+)$", re.M)
    for match in pattern.finditer(text):
        label_text = match.group(1) or ""
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(match.group(2))
            found = True
    assert found, f"metric {name} {labels} not found"
    return total


def metrics(sim: Sim) -> str:
    """The server's /metrics text."""
    response = httpx.get(sim.url + "/metrics", timeout=10.0, trust_env=False)
    assert response.status_code == 200
    return response.text


def stream_completion(
    sim: Sim, payload: dict[str, Any], path: str = "/v1/completions", headers: dict[str, str] | None = None
) -> tuple[list[str], list[float], float, httpx.Headers]:
    """POST a streaming request; return SSE data payloads, their arrival times, t0."""
    events: list[str] = []
    times: list[float] = []
    with client() as http:
        t0 = time.monotonic()
        with http.stream("POST", sim.url + path, json=payload, headers=headers) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: ") :])
                    times.append(time.monotonic())
            headers = response.headers
    return events, times, t0, headers


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder per module for the servers' log files."""
    return tmp_path_factory.mktemp("vllm_sim")


@pytest.fixture(scope="module")
def plain(workdir: Path) -> Iterator[Sim]:
    """A unified server without KV connector (startup_s 0.6 s, real time)."""
    sim = spawn(
        workdir,
        "plain",
        PLAIN_PROFILE,
        ["--max-model-len", "8192", "--enforce-eager", "--dtype", "bfloat16"],
    )
    try:
        yield wait_ready(sim)
    finally:
        stop(sim)


@pytest.fixture(scope="module")
def pd(workdir: Path) -> Iterator[dict[str, Sim]]:
    """One producer and two consumers (policies fail / recompute), started together."""
    kv_d = {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_consumer",
        "kv_connector_extra_config": {"backends": ["LIBFABRIC"]},
    }
    sims: dict[str, Sim] = {}
    try:
        sims["P"] = spawn(
            workdir,
            "producer",
            PD_PROFILE,
            PRODUCER_FLAGS,
            side_port=free_port(),
        )
        sims["D"] = spawn(
            workdir,
            "consumer",
            PD_PROFILE,
            ["--kv-transfer-config", json.dumps(kv_d)],
            env={"FI_PROVIDER": "efa"},
            side_port=free_port(),
        )
        # The recompute consumer uses vLLM's dotted --kv-transfer-config form.
        sims["R"] = spawn(
            workdir,
            "consumer-recompute",
            PD_PROFILE,
            [
                "--kv-transfer-config.kv_connector",
                "NixlConnector",
                "--kv-transfer-config.kv_role",
                "kv_consumer",
                "--kv-transfer-config.kv_load_failure_policy",
                "recompute",
            ],
            side_port=free_port(),
        )
        for sim in sims.values():
            wait_ready(sim)
        yield sims
    finally:
        for sim in sims.values():
            stop(sim)


def prefill_on_p(p: Sim, prompt: list[int]) -> dict[str, Any]:
    """What the proxy does first: a one-token, non-streaming do_remote_decode request."""
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 1,
        "stream": False,
        "kv_transfer_params": {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        },
    }
    with client() as http:
        response = http.post(p.url + "/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def decode_body(prompt: list[int], params: dict[str, Any] | None, **kw: Any) -> dict:
    """What the proxy sends D: the client's request plus P's kv_transfer_params."""
    body: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": 4, **kw}
    if params is not None:
        body["kv_transfer_params"] = params
    return body


# --------------------------------------------------------------------------- plain server


def test_startup_delay_then_ready_and_models(plain: Sim) -> None:
    # The port must refuse connections during the simulated engine start-up...
    assert plain.refused_before_ready > 0
    assert plain.ready_at - plain.started_at >= PLAIN_PROFILE["startup_s"]
    # ...and then serve vLLM's endpoints.
    with client() as http:
        health = http.get(plain.url + "/health")
        models = http.get(plain.url + "/v1/models").json()
        version = http.get(plain.url + "/version").json()
    assert health.status_code == 200 and health.content == b""
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == MODEL and card["object"] == "model"
    assert card["owned_by"] == "vllm" and card["max_model_len"] == 8192
    assert version["version"] == "sim" and version["simulated"] is True
    assert version["kv_transport"] is None
    log = plain.log()
    assert "Ignoring flags not simulated: --enforce-eager --dtype bfloat16" in log
    assert f"Starting vLLM API server on http://{HOST}:{plain.port}" in log
    profile_line = next(x for x in log.splitlines() if "timing profile:" in x)
    assert json.loads(profile_line.split("timing profile: ", 1)[1])["decode_ms_per_step"] == 5.0


def test_streaming_chunks_usage_and_done(plain: Sim) -> None:
    payload = {
        "model": MODEL,
        "prompt": "one two three four five",
        "max_tokens": 7,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "temperature": 0.0,
    }
    events, _, _, headers = stream_completion(plain, payload)
    assert headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    tokens, usage = chunks[:-1], chunks[-1]
    assert len(tokens) == 7
    for i, chunk in enumerate(tokens):
        assert re.fullmatch(r"cmpl-[0-9a-f]+", chunk["id"])
        assert chunk["object"] == "text_completion"
        assert chunk["model"] == MODEL and isinstance(chunk["created"], int)
        (choice,) = chunk["choices"]
        assert choice["index"] == 0 and choice["text"]
        assert choice["logprobs"] is None and choice["stop_reason"] is None
        assert choice["finish_reason"] == ("length" if i == 6 else None)
    assert len({c["id"] for c in chunks}) == 1
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "total_tokens": 12,
    }


def test_chat_stream_and_non_streaming_shapes(plain: Sim) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello there sim"}]},
    ]
    events, _, _, _ = stream_completion(
        plain,
        {
            "model": MODEL,
            "messages": messages,
            "max_completion_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        path="/v1/chat/completions",
    )
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) == 3
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["prompt_tokens"] == 5  # 2 + 3 words
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    with client() as http:
        chat = http.post(
            plain.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": messages, "max_tokens": 4},
        ).json()
        comp = http.post(
            plain.url + "/v1/completions",
            json={"model": MODEL, "prompt": list(range(100, 140)), "max_tokens": 9},
        ).json()
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["completion_tokens"] == 4
    assert comp["object"] == "text_completion" and comp["id"].startswith("cmpl-")
    assert comp["choices"][0]["finish_reason"] == "length"
    assert comp["usage"] == {
        "prompt_tokens": 40,
        "completion_tokens": 9,
        "total_tokens": 49,
        "prompt_tokens_details": None,
    }
    assert comp["kv_transfer_params"] is None  # no connector configured


def test_max_model_len_rejection_and_bad_requests(plain: Sim) -> None:
    with client() as http:
        too_long = http.post(
            plain.url + "/v1/completions",
            json={"model": MODEL, "prompt": [5] * 8000, "max_tokens": 200},
        )
        fits = http.post(
            plain.url + "/v1/completions",
            json={"model": MODEL, "prompt": [5] * 8190, "max_tokens": 2},
        )
        wrong_model = http.post(plain.url + "/v1/completions", json={"model": "other", "prompt": "x"})
        zero = http.post(
            plain.url + "/v1/completions",
            json={"model": MODEL, "prompt": "x", "max_tokens": 0},
        )
    assert too_long.status_code == 400
    error = too_long.json()["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400
    assert error["param"] is None
    assert "maximum context length is 8192 tokens" in error["message"]
    assert "you requested 8200 tokens (8000 in the messages, 200 in the completion)" in (error["message"])
    assert fits.status_code == 200
    assert wrong_model.status_code == 404
    assert zero.status_code == 400


def test_timing_model_and_prefix_cache(plain: Sim) -> None:
    """TTFT = prefill time; token gaps = decode step; a repeated prompt hits the cache."""
    prompt = list(range(1000, 5000))  # 4000 tokens, 250 full blocks
    payload = {"model": MODEL, "prompt": prompt, "max_tokens": 41, "stream": True}
    events, times, t0, _ = stream_completion(plain, payload)
    assert len(events) == 42  # 41 tokens + [DONE]
    predicted_prefill = 0.002 + 4000 / 20000.0  # 0.202 s
    ttft = times[0] - t0
    assert predicted_prefill * 0.97 <= ttft <= predicted_prefill + 0.12
    # The sim schedules steps on absolute deadlines, so a token the client reads late is followed
    # by ones that catch up: the last token can never arrive before prefill + 40 steps, while the
    # span from a late-read first token may be shorter than 40 steps.
    assert times[40] - t0 >= predicted_prefill + 40 * 0.005
    decode_span = times[40] - times[0]  # 40 decode steps of 5 ms, batch of one
    assert 40 * 0.005 * 0.5 <= decode_span <= 40 * 0.005 + 0.15

    # Same prompt again: all but the last token come from the prefix cache.
    events2, times2, t02, _ = stream_completion(plain, {**payload, "max_tokens": 1})
    assert len(events2) == 2
    assert times2[0] - t02 < predicted_prefill / 2
    text = metrics(plain)
    assert metric(text, "vllm:prefix_cache_hits_total") >= 3999
    assert metric(text, "vllm:prompt_tokens_by_source_total", source="local_cache_hit") >= 3999


def get_trace(sim: Sim, **query: str) -> dict[str, Any]:
    """GET /sim/trace with the given query parameters."""
    response = httpx.get(sim.url + "/sim/trace", params=query, timeout=10.0, trust_env=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def _raw_completion(sock: socket.socket, rid: str, body: bytes, pause_after: int = 0, pause_s: float = 0.0) -> bytes:
    """POST by hand on a kept-alive socket: the first ``pause_after`` bytes, a pause, the rest;
    returns the whole (non-streamed, Content-Length) answer."""
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-Request-Id: {rid}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    data = head + body
    if pause_after:
        sock.sendall(data[:pause_after])
        time.sleep(pause_s)  # the point of the test: the request arrives in two parts
        data = data[pause_after:]
    sock.sendall(data)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head_end = answer.index(b"\r\n\r\n") + 4
    length = int(re.search(rb"(?i)content-length: *(\d+)", answer[:head_end]).group(1))
    while len(answer) < head_end + length:
        answer += sock.recv(65536)
    return answer


def test_trace_first_byte_is_when_the_request_began_to_arrive(plain: Sim) -> None:
    """first_byte_mono: the first bytes of each request on a kept-alive connection, not the
    moment the handler had it all (what a client cannot be blamed for under load)."""
    tag = f"fb-{os.getpid()}-{time.monotonic_ns()}"
    body = json.dumps({"model": MODEL, "prompt": "first byte", "max_tokens": 2}).encode()
    with socket.create_connection(("127.0.0.1", plain.port), timeout=10) as sock:
        sent_first_part = time.monotonic()
        assert b" 200 " in _raw_completion(sock, f"{tag}-1", body, pause_after=40, pause_s=1.0).split(b"\r\n", 1)[0]
        between = time.monotonic()
        assert b" 200 " in _raw_completion(sock, f"{tag}-2", body).split(b"\r\n", 1)[0]
    (one,) = get_trace(plain, request_id=f"{tag}-1")["requests"]
    (two,) = get_trace(plain, request_id=f"{tag}-2")["requests"]
    # Request 1's head was cut after 40 bytes and the rest sent a second later: its first byte
    # is stamped before the rest was even sent, its arrival (whole request read) after.
    assert sent_first_part <= one["first_byte_mono"] < sent_first_part + 1.0 <= one["arrival_mono"]
    assert one["first_byte_mono"] <= one["headers_mono"] <= one["arrival_mono"]
    # Request 2 on the same connection gets its own stamp (cleared when request 1 was answered).
    assert one["end_mono"] <= between <= two["first_byte_mono"] <= two["arrival_mono"]
    assert abs((two["first_byte_wall"] - two["first_byte_mono"]) - (two["arrival_wall"] - two["arrival_mono"])) < 0.002


def test_trace_is_ground_truth_for_a_streamed_request(plain: Sim) -> None:
    """/sim/trace: one record, max_tokens write times, first token = timing model, client agrees."""
    rid = f"trace-{os.getpid()}-{time.monotonic_ns()}"
    n_prompt, n_out = 400, 12
    prompt = list(range(60000, 60000 + n_prompt))  # never sent before: no prefix-cache hit
    payload = {"model": MODEL, "prompt": prompt, "max_tokens": n_out, "stream": True}
    events, times, t0, _ = stream_completion(plain, payload, headers={"X-Request-Id": rid})
    assert len(events) == n_out + 1  # tokens + [DONE]
    body = get_trace(plain, request_id=rid)
    assert body["object"] == "sim.trace" and body["enabled"] is True
    assert body["max_requests"] == 100000
    (rec,) = body["requests"]
    assert rec["request_id"] == rid and rec["endpoint"] == "completions"
    assert rec["stream"] is True and rec["status"] == "ok" and rec["kv"] == "local"
    assert (rec["prompt_tokens"], rec["max_tokens"], rec["completion_tokens"]) == (n_prompt, n_out, n_out)
    mono, wall = rec["token_mono"], rec["token_wall"]
    assert len(mono) == len(wall) == n_out
    assert mono == sorted(mono) and rec["first_token_mono"] == mono[0] and rec["first_token_wall"] == wall[0]
    # Both clocks were read together: their offset is the same at arrival and at every token.
    offset = rec["arrival_wall"] - rec["arrival_mono"]
    assert all(abs((w - m) - offset) < 0.002 for m, w in zip(mono, wall))
    assert abs(rec["arrival_wall"] - time.time()) < 60 and abs(rec["first_token_mono"] - time.monotonic()) < 60

    # The engine's prefill step lasted exactly the timing model's prefill time...
    prefill = (PLAIN_PROFILE["prefill_overhead_ms"] / 1000 + n_prompt / PLAIN_PROFILE["prefill_tokens_per_s"]) * PLAIN_PROFILE["time_scale"]
    assert rec["engine_first_token_mono"] - rec["scheduled_mono"] == pytest.approx(prefill, abs=1e-6)
    assert rec["headers_mono"] <= rec["arrival_mono"] <= rec["scheduled_mono"]  # the server was idle
    assert rec["prompt_sha1"] is None  # token ids, not text
    # ...the first token was written no earlier than the model allows, and soon after it.
    ttft = rec["first_token_mono"] - rec["arrival_mono"]
    assert rec["ttft_ms"] == pytest.approx(ttft * 1000, abs=1e-3)
    assert prefill - 1e-6 <= ttft <= prefill + 0.15, (ttft, prefill)
    assert rec["first_token_mono"] >= rec["engine_first_token_mono"]
    # Decode steps run on absolute deadlines, so the last write cannot precede 11 steps of 5 ms.
    step = PLAIN_PROFILE["decode_ms_per_step"] / 1000
    assert mono[-1] - rec["engine_first_token_mono"] >= (n_out - 1) * step - 1e-6
    assert mono[-1] - mono[0] <= (n_out - 1) * step + 0.2
    assert rec["end_mono"] >= mono[-1]

    # Client and server share CLOCK_MONOTONIC: send <= arrival, and every token is
    # received after it was written; so the client's TTFT brackets the server's.
    assert t0 <= rec["arrival_mono"]
    assert all(times[i] >= mono[i] for i in range(n_out))
    client_ttft = times[0] - t0
    assert ttft <= client_ttft <= ttft + 0.1, (client_ttft, ttft)


def test_trace_query_clear_and_bound(workdir: Path) -> None:
    """?request_id filters, ?clear=1 removes what was returned, the store keeps the newest N."""
    sim = spawn(workdir, "trace-bound", {**PLAIN_PROFILE, "startup_s": 0.0}, sim_flags=["--trace-max-requests", "3"])
    try:
        wait_ready(sim)
        with client() as http:
            for i in range(5):
                r = http.post(
                    sim.url + "/v1/completions",
                    json={"model": MODEL, "prompt": [i + 1, 2, 3], "max_tokens": 3},
                    headers={"X-Request-Id": f"t-{i}"},
                )
                assert r.status_code == 200
            anonymous = http.post(sim.url + "/v1/completions", json={"model": MODEL, "prompt": "a b", "max_tokens": 2})
            bad = http.post(sim.url + "/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 0})
        assert anonymous.status_code == 200 and bad.status_code == 400  # rejected: not traced
        body = get_trace(sim)
        ids = [r["request_id"] for r in body["requests"]]
        assert body["max_requests"] == 3 and body["stored"] == 3 and body["dropped"] == 3
        assert ids[:2] == ["t-3", "t-4"] and re.fullmatch(r"[0-9a-f]{32}", ids[2])
        assert body["requests"][2]["prompt_sha1"] == hashlib.sha1(b"a b").hexdigest()
        assert [r["seq"] for r in body["requests"]] == [4, 5, 6]
        t4 = body["requests"][1]
        assert t4["stream"] is False and t4["completion_tokens"] == 3
        assert t4["token_mono"] == [] and t4["first_token_mono"] == t4["end_mono"] > t4["arrival_mono"]
        assert body["now_mono"] >= t4["end_mono"]

        assert get_trace(sim, request_id="t-0")["requests"] == []  # evicted
        assert [r["request_id"] for r in get_trace(sim, request_id="t-3", clear="1")["requests"]] == ["t-3"]
        after = get_trace(sim, clear="1")
        assert after["stored"] == 2 and [r["request_id"] for r in after["requests"]][0] == "t-4"
        assert get_trace(sim)["stored"] == 0
    finally:
        stop(sim)


def test_metrics_exposition_format(plain: Sim) -> None:
    text = metrics(plain)
    assert "# TYPE vllm:num_requests_running gauge" in text
    assert "# TYPE vllm:prompt_tokens_total counter" in text
    assert "# TYPE vllm:request_success_created gauge" in text
    line = re.search(r"^vllm:num_requests_running(\{.*\}) ", text, re.M)
    assert line is not None
    assert line.group(1) == f'{{engine="0",model_name="{MODEL}"}}'
    assert metric(text, "vllm:generation_tokens_total") > 0
    assert metric(text, "vllm:request_success_total", finished_reason="length") >= 1
    assert metric(text, "vllm:num_requests_waiting") == 0
    # NIXL families exist only when a connector is configured (as in vLLM).
    assert "vllm:nixl_" not in text


def test_concurrent_streams_cost_little_cpu(plain: Sim) -> None:
    """64 concurrent streams at 5 ms/step: every token arrives and server CPU stays low."""
    n_streams, n_tokens = 64, 60

    def cpu_seconds(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def one(session: aiohttp.ClientSession, i: int) -> int:
        payload = {
            "model": MODEL,
            "prompt": [7, i, 9, 11],
            "max_tokens": n_tokens,
            "stream": True,
        }
        count = 0
        async with session.post(plain.url + "/v1/completions", json=payload) as resp:
            async for raw in resp.content:
                if raw.startswith(b"data: {"):
                    count += 1
        return count

    async def run() -> list[int]:
        connector = aiohttp.TCPConnector(limit=n_streams)
        async with aiohttp.ClientSession(connector=connector) as session:
            return await asyncio.gather(*(one(session, i) for i in range(n_streams)))

    cpu0 = cpu_seconds(plain.proc.pid)
    t0 = time.monotonic()
    counts = asyncio.run(run())
    wall = time.monotonic() - t0
    cpu = cpu_seconds(plain.proc.pid) - cpu0
    assert counts == [n_tokens] * n_streams
    step = 0.005 * (1 + 0.01 * (n_streams - 1))
    predicted = n_streams * (0.002 + 4 / 20000) + (n_tokens - 1) * step
    assert wall < predicted * 2.5 + 0.5, (wall, predicted)
    per_token_us = cpu / (n_streams * n_tokens) * 1e6
    assert per_token_us < 150, f"{per_token_us:.0f} us of server CPU per streamed token"


# --------------------------------------------------------------------------- P/D


def test_producer_consumer_round_trip(pd: dict[str, Sim]) -> None:
    p, d = pd["P"], pd["D"]
    with client() as http:
        version_p = http.get(p.url + "/version").json()
        version_d = http.get(d.url + "/version").json()
    assert version_p["kv_transport"] == "tcp"
    assert version_d["kv_transport"] == "efa"  # LIBFABRIC + FI_PROVIDER=efa
    before = metrics(d)
    prompt = list(range(3000, 4000))  # 1000 tokens -> 63 blocks of 16
    answer = prefill_on_p(p, prompt)
    params = answer["kv_transfer_params"]
    assert answer["usage"]["completion_tokens"] == 1
    assert params["do_remote_prefill"] is True
    assert params["do_remote_decode"] is False
    block_ids = params["remote_block_ids"]
    assert len(block_ids) == 63 and len(set(block_ids)) == 63  # ceil(1000 / 16)
    assert all(isinstance(b, int) for b in block_ids)
    assert params["remote_engine_id"] == version_p["engine_id"]
    assert isinstance(params["remote_request_id"], str) and params["remote_request_id"]
    assert params["remote_host"] == HOST and params["remote_port"] == p.side_port
    assert params["tp_size"] == 1

    payload = decode_body(prompt, params, stream=True, stream_options={"include_usage": True})
    events, times, t0, _ = stream_completion(d, payload)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 4
    # efa transfer: 50 ms overhead + 1000*10000*8 bit / 0.8 Gbit/s = 0.15 s
    predicted_xfer = 0.05 + 1000 * 10000 * 8 / 0.8e9
    assert times[0] - t0 >= predicted_xfer
    after = metrics(d)
    count = "vllm:nixl_xfer_time_seconds_count"
    assert metric(after, count) - metric(before, count) == 1
    xfer_sum = metric(after, "vllm:nixl_xfer_time_seconds_sum") - metric(before, "vllm:nixl_xfer_time_seconds_sum")
    assert math.isclose(xfer_sum, predicted_xfer, rel_tol=0.05)
    bytes_sum = metric(after, "vllm:nixl_bytes_transferred_sum") - metric(before, "vllm:nixl_bytes_transferred_sum")
    assert bytes_sum == 1000 * 10000
    assert metric(after, "vllm:nixl_num_failed_transfers_total") == 0
    ext = "vllm:prompt_tokens_by_source_total"
    assert metric(after, ext, source="external_kv_transfer") - metric(before, ext, source="external_kv_transfer") == 1000
    assert metric(after, "vllm:nixl_xfer_time_seconds_bucket", le="+Inf") >= 1

    # The lease was consumed: reusing the same params is an error answer -> 500.
    with client() as http:
        again = http.post(d.url + "/v1/completions", json=decode_body(prompt, params))
    assert again.status_code == 500
    assert again.json()["error"]["code"] == 500
    assert "unknown_request" in again.json()["error"]["message"]
    assert metric(metrics(d), "vllm:nixl_num_failed_transfers_total") == 1


def test_wrong_side_channel_port_fails_with_policy_fail(pd: dict[str, Sim]) -> None:
    p, d = pd["P"], pd["D"]
    prompt = list(range(20, 120))
    params = prefill_on_p(p, prompt)["kv_transfer_params"]
    failed0 = metric(metrics(d), "vllm:nixl_num_failed_transfers_total")
    xfers0 = metric(metrics(d), "vllm:nixl_xfer_time_seconds_count")
    bad = {**params, "remote_port": free_port()}  # nothing listens there
    with client() as http:
        response = http.post(d.url + "/v1/completions", json=decode_body(prompt, bad))
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "InternalServerError"
    # Streaming: the SSE headers are already out, so the error is an SSE event.
    events, _, _, _ = stream_completion(d, decode_body(prompt, bad, stream=True))
    assert json.loads(events[0])["error"]["code"] == 500 and events[-1] == "[DONE]"
    # A wrong engine id is refused by P's side channel.
    wrong_engine = {**params, "remote_engine_id": "not-the-producer"}
    with client() as http:
        mismatch = http.post(d.url + "/v1/completions", json=decode_body(prompt, wrong_engine))
    assert mismatch.status_code == 500
    assert "engine ID mismatch" in mismatch.json()["error"]["message"]
    text = metrics(d)
    assert metric(text, "vllm:nixl_num_failed_transfers_total") == failed0 + 3
    assert metric(text, "vllm:nixl_xfer_time_seconds_count") == xfers0
    # Failed fetches did not free P's blocks: the right params still work.
    with client() as http:
        good = http.post(d.url + "/v1/completions", json=decode_body(prompt, params))
    assert good.status_code == 200
    assert metric(metrics(d), "vllm:nixl_xfer_time_seconds_count") == xfers0 + 1


def test_recompute_policy_prefills_locally(pd: dict[str, Sim]) -> None:
    r = pd["R"]
    prompt = list(range(500, 600))
    bad = {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": [1, 2],
        "remote_engine_id": "gone",
        "remote_request_id": "gone-0",
        "remote_host": HOST,
        "remote_port": free_port(),
        "tp_size": 1,
    }
    with client() as http:
        response = http.post(r.url + "/v1/completions", json=decode_body(prompt, bad))
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 4
    text = metrics(r)
    assert metric(text, "vllm:nixl_num_failed_transfers_total") == 1
    assert metric(text, "vllm:nixl_xfer_time_seconds_count") == 0
    assert metric(text, "vllm:prompt_tokens_by_source_total", source="local_compute") == 100


def test_request_without_params_counts_no_transfer(pd: dict[str, Sim]) -> None:
    d = pd["D"]
    before = metrics(d)
    with client() as http:
        response = http.post(d.url + "/v1/completions", json=decode_body(list(range(9000, 9050)), None))
    assert response.status_code == 200
    after = metrics(d)
    for name in (
        "vllm:nixl_xfer_time_seconds_count",
        "vllm:nixl_num_failed_transfers_total",
    ):
        assert metric(after, name) == metric(before, name)
    local = "vllm:prompt_tokens_by_source_total"
    assert metric(after, local, source="local_compute") - metric(before, local, source="local_compute") == 50


def test_unread_kv_expires_on_producer(pd: dict[str, Sim], workdir: Path) -> None:
    d = pd["D"]
    p = spawn(workdir, "producer-short-lease", {**PD_PROFILE, "kv_lease_s": SHORT_LEASE_S}, PRODUCER_FLAGS, side_port=free_port())
    try:
        wait_ready(p)
        prompt = list(range(7000, 7032))
        expired0 = metric(metrics(p), "vllm:nixl_num_kv_expired_reqs_total")
        params = prefill_on_p(p, prompt)["kv_transfer_params"]
        time.sleep(SHORT_LEASE_S + 0.5)  # lease is wall-clock, not scaled; waiting longer cannot pass by chance
        with client() as http:
            response = http.post(d.url + "/v1/completions", json=decode_body(prompt, params))
        assert response.status_code == 500
        assert "expired" in response.json()["error"]["message"]
        text = metrics(p)
        assert metric(text, "vllm:nixl_num_kv_expired_reqs_total") == expired0 + 1
        assert metric(text, "vllm:nixl_num_notifications_after_expiry_total") >= 1
    finally:
        stop(p)


# --------------------------------------------------------------------------- process behaviour


def test_fault_crash_after_kills_process_mid_stream(workdir: Path) -> None:
    sim = spawn(
        workdir,
        "crash",
        {**PLAIN_PROFILE, "startup_s": 0.0},
        env={"DISAGG_SIM_FAULT": "crash_after=1"},
    )
    try:
        wait_ready(sim)
        payload = {"model": MODEL, "prompt": "a b c", "max_tokens": 20, "stream": True}
        events, _, _, _ = stream_completion(sim, payload)
        assert events[-1] == "[DONE]" and len(events) == 21  # request 1 is fine
        received: list[str] = []
        with pytest.raises(httpx.HTTPError):
            with client() as http:
                with http.stream("POST", sim.url + "/v1/completions", json=payload) as resp:
                    for line in resp.iter_lines():
                        if line.startswith("data: "):
                            received.append(line)
        assert len(received) == 1  # exactly the first token got out
        assert sim.proc.wait(timeout=5) == 70
    finally:
        stop(sim)


def test_sigterm_exits_zero_quickly_even_mid_stream(workdir: Path) -> None:
    sim = spawn(workdir, "sigterm", {**PLAIN_PROFILE, "startup_s": 0.0, "decode_ms_per_step": 50})
    try:
        wait_ready(sim)

        async def hold_stream() -> None:
            payload = {"model": MODEL, "prompt": "x y", "max_tokens": 500, "stream": True}
            async with aiohttp.ClientSession() as session:
                async with session.post(sim.url + "/v1/completions", json=payload) as resp:
                    await resp.content.readline()  # a token arrived: request in flight
                    os.killpg(sim.proc.pid, signal.SIGTERM)
                    t0 = time.monotonic()
                    await asyncio.get_running_loop().run_in_executor(None, sim.proc.wait, 5)
                    assert time.monotonic() - t0 < 1.5

        asyncio.run(hold_stream())
        assert sim.proc.returncode == 0
    finally:
        stop(sim)


@pytest.mark.parametrize(
    ("profile", "flags", "env", "expected"),
    [
        ('{"decode_ms_per_stepp": 5}', [], {}, "decode_ms_per_stepp"),
        ('{"bandwidth_gbps": {"ib": 5}}', [], {}, "ib"),
        (None, ["--kv-transfer-config", "{not json"], {}, "--kv-transfer-config"),
        (
            None,
            ["--kv-transfer-config", '{"kv_connector": "NixlConnector"}'],
            {},
            "kv_role",
        ),
        (None, [], {"DISAGG_SIM_FAULT": "explode"}, "explode"),
        (None, ["--trace-max-requests", "5"], {}, "--trace-max-requests must come before 'serve'"),
    ],
)
def test_bad_configuration_exits_2(
    workdir: Path,
    profile: str | None,
    flags: list[str],
    env: dict[str, str],
    expected: str,
) -> None:
    argv = [sys.executable, str(SCRIPT)]
    if profile is not None:
        argv += ["--profile-json", profile]
    argv += ["serve", MODEL, "--host", HOST, "--port", str(free_port()), *flags]
    base_env = {k: v for k, v in os.environ.items() if k != "DISAGG_SIM_FAULT"}
    proc = subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        timeout=20,
        env={**base_env, **env},
        start_new_session=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
