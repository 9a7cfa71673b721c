"""The stand-in's test-only faults (DISAGG_SIM_FAULT), driven directly against real processes.

The pipeline-level consequences of each fault (failure record, no process left, retry) are
in tests/test_faults.py; here each fault's own behaviour on the wire is pinned down, cheaply.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_vllm_sim import HOST, MODEL, SCRIPT, Sim, client, free_port, prefill_on_p, spawn, stop, wait_ready

FAST = {"startup_s": 0.0, "prefill_tokens_per_s": 50000.0, "prefill_overhead_ms": 1.0, "decode_ms_per_step": 2.0, "time_scale": 1.0}
KV_P = {"kv_connector": "NixlConnector", "kv_role": "kv_producer"}


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Sim]]:
    """One server per fault, started together (start-up overlaps)."""
    work = tmp_path_factory.mktemp("sim_faults")
    faults = {"http_500": "http_500=2", "malformed": "malformed_sse=1", "hang": "hang_mid_stream=1", "never": "never_healthy"}
    started: dict[str, Sim] = {}
    try:
        for name, fault in faults.items():
            started[name] = spawn(work, name, FAST, env={"DISAGG_SIM_FAULT": fault})
        started["nokv"] = spawn(work, "nokv", FAST, ["--kv-transfer-config", json.dumps(KV_P)],
                                env={"DISAGG_SIM_FAULT": "no_kv_params"}, side_port=free_port())
        started["slow"] = spawn(work, "slow", FAST, env={"DISAGG_SIM_FAULT": "slow_start=1.5"})
        yield started
    finally:
        for sim in started.values():
            stop(sim)


def _ready_any_status(sim: Sim, timeout: float = 20.0) -> None:
    """Wait until the port answers at all (a never-healthy server never gives 200)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert sim.proc.poll() is None, sim.log()
        try:
            httpx.get(sim.url + "/v1/models", timeout=1.0, trust_env=False)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"no answer after {timeout} s:\n{sim.log()}")


def _stream_lines(sim: Sim, max_tokens: int = 5) -> tuple[int, list[str]]:
    payload = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": max_tokens, "stream": True}
    with client() as http, http.stream("POST", sim.url + "/v1/completions", json=payload) as resp:
        return resp.status_code, [line for line in resp.iter_lines() if line.startswith("data: ")]


def test_http_500_from_the_nth_request_on(sims: dict[str, Sim]) -> None:
    sim = wait_ready(sims["http_500"])
    code, lines = _stream_lines(sim)
    assert code == 200 and lines[-1] == "data: [DONE]"
    for _ in (2, 3):
        with client() as http:
            resp = http.post(sim.url + "/v1/completions", json={"model": MODEL, "prompt": [1, 2], "max_tokens": 3, "stream": True})
        assert resp.status_code == 500
        err = resp.json()["error"]  # vLLM's error shape
        assert err["code"] == 500 and err["type"] == "InternalServerError" and "http_500" in err["message"]
    assert "answering request #3 with HTTP 500" in sim.log()


def test_malformed_sse_breaks_a_data_line_after_the_first_token(sims: dict[str, Sim]) -> None:
    sim = wait_ready(sims["malformed"])
    code, lines = _stream_lines(sim)
    assert code == 200
    payloads = [line[len("data: "):] for line in lines if line != "data: [DONE]"]
    broken = []
    for p in payloads:
        try:
            json.loads(p)
        except json.JSONDecodeError:
            broken.append(p)
    assert len(broken) == 1 and payloads.index(broken[0]) == 1, payloads  # right after the first token
    json.loads(payloads[0])


def test_hang_mid_stream_holds_the_connection_and_others_are_served(sims: dict[str, Sim]) -> None:
    sim = wait_ready(sims["hang"])
    payload = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 50, "stream": True}
    got: list[str] = []
    t0 = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(30.0, read=1.0), trust_env=False) as http:
        with pytest.raises(httpx.ReadTimeout), http.stream("POST", sim.url + "/v1/completions", json=payload) as resp:
            got.extend(line for line in resp.iter_lines() if line.startswith("data: "))
    assert len(got) == 1 and time.monotonic() - t0 >= 1.0, got  # the first token, then silence
    code, lines = _stream_lines(sim)  # request 2 is served normally, the process lives on
    assert code == 200 and lines[-1] == "data: [DONE]" and sim.proc.poll() is None


def test_never_healthy_serves_but_health_stays_503(sims: dict[str, Sim]) -> None:
    sim = sims["never"]
    _ready_any_status(sim)
    for _ in range(3):
        resp = httpx.get(sim.url + "/health", timeout=5.0, trust_env=False)
        assert resp.status_code == 503 and "never_healthy" in resp.json()["error"]["message"]
        time.sleep(0.1)
    assert httpx.get(sim.url + "/v1/models", timeout=5.0, trust_env=False).status_code == 200


def test_slow_start_binds_only_after_the_given_seconds(sims: dict[str, Sim]) -> None:
    sim = wait_ready(sims["slow"])
    assert sim.ready_at - sim.started_at >= 1.5
    # the port stayed closed until then, as vLLM's before its engine is up (profile startup_s is 0)
    took = re.search(r"init engine .* took ([0-9.]+) seconds", sim.log())
    assert took and float(took.group(1)) >= 1.5, sim.log()


def test_no_kv_params_producer_answers_without_a_kv_lease(sims: dict[str, Sim]) -> None:
    sim = wait_ready(sims["nokv"])
    answer = prefill_on_p(sim, list(range(100, 164)))
    assert "kv_transfer_params" in answer and answer["kv_transfer_params"] is None
    assert answer["choices"][0]["text"] == " tok"


@pytest.mark.parametrize("value", ["http_500=0", "hang_mid_stream", "malformed_sse=x", "slow_start=-1", "slow_start=abc",
                                   "never_healthy=1", "no_kv_params=yes", "crash_after=1,http_500=2"])
def test_bad_fault_value_exits_2_naming_the_supported_faults(tmp_path: Path, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISAGG")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "serve", MODEL, "--host", HOST, "--port", str(free_port())],
                          env={**env, "DISAGG_SIM_FAULT": value}, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert repr(value) in proc.stderr and "hang_mid_stream=N" in proc.stderr and "no_kv_params" in proc.stderr
