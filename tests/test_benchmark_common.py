"""Tests for scripts/benchmark_common.py against a real HTTP server.

The server is a tiny aiohttp app defined here, run in a background thread on
127.0.0.1 with an ephemeral port. Its timing is controlled per test (first
content event after X s, then one every Y s, failures, disconnects, stalls,
long lines), and it records what it received and the ``perf_counter`` time of
every content write. Because the server thread shares the process clock with
the in-process client, measured TTFT/ITL/E2EL can be checked against the
server's actual write times, not only against the configured sleeps.

The module under test is a standalone script (not a package), so it is loaded
from its path.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark_common.py"


def _load_module() -> Any:
    spec = importlib.util.spec_from_file_location("benchmark_common", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_common"] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


bc = _load_module()


# --------------------------------------------------------------------------
# Fake OpenAI-compatible streaming server
# --------------------------------------------------------------------------


@dataclass
class FakeConfig:
    """Behaviour of the fake server; indices are the X-Request-Id suffixes."""

    ttft_s: float = 0.02
    itl_s: float = 0.01
    ttft_by_index: dict[int, float] = field(default_factory=dict)
    tokens_per_chunk: int = 1
    send_usage: bool = True
    tail_delay_s: float = 0.0  # pause between last content event and usage
    fail: set[int] = field(default_factory=set)  # HTTP 500
    disconnect: set[int] = field(default_factory=set)  # drop after 1 event
    stall: set[int] = field(default_factory=set)  # sleep stall_s first
    stall_s: float = 1.0
    short: set[int] = field(default_factory=set)  # one token fewer
    long_text_chars: int = 0  # size of the first event's text
    text_chars: int = 0  # size of every other event's text (0: " t<k>")
    chat_prompt_tokens: int = 123  # usage.prompt_tokens reported for chat


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class FakeServer:
    """aiohttp server in its own thread and event loop."""

    def __init__(self) -> None:
        self.cfg = FakeConfig()
        self.records: dict[str, dict[str, Any]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.generation = 0  # bumped by reset(); stale handlers stop counting
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self, **kwargs: Any) -> None:
        with self._lock:
            self.cfg = FakeConfig(**kwargs)
            self.generation += 1
            self.records = {}
            self.in_flight = 0
            self.max_in_flight = 0

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            # vLLM's server has no request-size limit; aiohttp's default
            # 1 MiB must not be what a long-prompt test runs into.
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/v1/completions", self.handle)
            app.router.add_post("/v1/chat/completions", self.handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-vllm", daemon=True)
        self._thread.start()
        assert ready.wait(10), "fake server did not start"

    def stop(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        payload = json.loads(raw)
        rid = request.headers.get("X-Request-Id", "")
        idx = int(rid.rsplit("-", 1)[-1])
        cfg = self.cfg
        rec: dict[str, Any] = {
            "path": request.path,
            "payload": payload,
            "headers": request.headers.copy(),
            "body_bytes": len(raw),
            "arrival": time.perf_counter(),
            "writes": [],
            "end": None,
        }
        with self._lock:
            gen = self.generation
            self.records[rid] = rec
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

        def finish() -> None:
            # Called before the trailing usage/[DONE] bytes, so the server's
            # in-flight count can never exceed what the client really had.
            # A handler still sleeping from an earlier test (stall) must not
            # touch the counters of the current one.
            with self._lock:
                if rec["end"] is None:
                    rec["end"] = time.perf_counter()
                    if gen == self.generation:
                        self.in_flight -= 1

        try:
            if idx in cfg.stall:
                await asyncio.sleep(cfg.stall_s)
            if idx in cfg.fail:
                return web.Response(status=500, text="boom injected")
            chat = request.path.endswith("chat/completions")
            max_tokens = payload["max_completion_tokens" if chat else "max_tokens"]
            n_tokens = max_tokens - 1 if idx in cfg.short else max_tokens
            n_chunks = math.ceil(n_tokens / cfg.tokens_per_chunk)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await asyncio.sleep(cfg.ttft_by_index.get(idx, cfg.ttft_s))
            for k in range(n_chunks):
                if k:
                    await asyncio.sleep(cfg.itl_s)
                if k == 0 and cfg.long_text_chars:
                    text = "x" * cfg.long_text_chars
                else:
                    text = "y" * cfg.text_chars if cfg.text_chars else f" t{k}"
                choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
                # stamped before the write: the client may read the bytes
                # before this coroutine resumes after write()
                rec["writes"].append(time.perf_counter())
                await resp.write(_sse({"id": rid, "choices": [choice]}))
                if idx in cfg.disconnect:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
            finish()
            if cfg.tail_delay_s:
                await asyncio.sleep(cfg.tail_delay_s)
            if cfg.send_usage:
                prompt = cfg.chat_prompt_tokens if chat else len(payload["prompt"])
                usage = {"prompt_tokens": prompt, "completion_tokens": n_tokens}
                await resp.write(_sse({"id": rid, "choices": [], "usage": usage}))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            finish()


@pytest.fixture(scope="module")
def server_instance() -> Any:
    srv = FakeServer()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def server(server_instance: FakeServer) -> FakeServer:
    server_instance.reset()
    return server_instance


@pytest.fixture
def procs() -> Any:
    """Subprocesses started by a test; any still running is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def run_cli(procs: list[subprocess.Popen[str]], args: list[str], timeout: float = 20) -> tuple[int, str, str]:
    p = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(p)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def cli_args(server: FakeServer, result_file: Path, **over: Any) -> list[str]:
    opts: dict[str, Any] = {
        "base-url": server.base_url,
        "endpoint": "/v1/completions",
        "model": "fake-model",
        "prompt-tokens": 32,
        "max-tokens": 4,
        "concurrency": 2,
        "warmup-requests": 0,
        "num-requests": 4,
        "measurement-type": "online",
        "seed": 0,
        "token-id-range": "1000:30000",
        "percentiles": "50,90,95,99",
        "request-timeout": 10,
        "result-file": str(result_file),
    }
    opts.update({k.replace("_", "-"): v for k, v in over.items()})
    args: list[str] = []
    for k, v in opts.items():
        if isinstance(v, list):  # multi-value flag (--goodput)
            args += [f"--{k}", *map(str, v)]
        elif v is not None:
            args += [f"--{k}", str(v)]
    return args


def make_cfg(server: FakeServer, tmp_path: Path, **over: Any) -> Any:
    return bc.parse_args(cli_args(server, tmp_path / "out.json", **over))


def run_inprocess(cfg: Any) -> tuple[Any, dict[str, Any]]:
    run = asyncio.run(bc.execute(cfg))
    return run, bc.build_result(cfg, run)


def outcome(**kw: Any) -> Any:
    base = {"index": 0, "warmup": False, "request_id": "r", "prompt_tokens": 100}
    base.update(kw)
    return bc.RequestOutcome(**base)


# --------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------


def test_prompts_exact_length_range_unique_first_token() -> None:
    prompts = bc.build_prompts(60, 250, 1000, 1060, seed=7)
    assert len(prompts) == 60
    assert all(len(p) == 250 for p in prompts)
    assert all(1000 <= t < 1060 for p in prompts for t in p)
    firsts = [p[0] for p in prompts]
    assert len(set(firsts)) == 60  # tight range: every id used exactly once
    assert len({tuple(p) for p in prompts}) == 60
    assert bc.build_prompts(60, 250, 1000, 1060, seed=7) == prompts
    assert bc.build_prompts(60, 250, 1000, 1060, seed=8) != prompts
    with pytest.raises(ValueError):
        bc.build_prompts(61, 10, 1000, 1060, seed=0)


def test_specs_indices_and_request_ids(server: FakeServer, tmp_path: Path) -> None:
    cfg = make_cfg(server, tmp_path, warmup_requests=3, num_requests=4, label="runA")
    warm, meas = bc.build_specs(cfg)
    assert [s.index for s in warm] == [0, 1, 2] and all(s.warmup for s in warm)
    assert [s.index for s in meas] == [3, 4, 5, 6] and not any(s.warmup for s in meas)
    assert [s.request_id for s in meas] == ["runA-3", "runA-4", "runA-5", "runA-6"]
    assert len({s.first_token_id for s in warm + meas}) == 7
    assert all(s.prompt_tokens == 32 for s in warm + meas)
    body = json.loads(meas[0].body)
    assert body["prompt"][0] == meas[0].first_token_id


def test_chat_text_starts_with_unique_first_id() -> None:
    text = bc.chat_text_from_ids([4242, 0, 1, 2])
    assert text.split()[0] == "4242"
    assert len(text.split()) == 4


# --------------------------------------------------------------------------
# SSE parser
# --------------------------------------------------------------------------


def test_sse_parser_split_chunks_crlf_comments_and_huge_line() -> None:
    huge = json.dumps({"choices": [{"text": "y" * 200_000}]})
    stream = (
        b": ping\n\n"
        + b"data: "
        + huge.encode()
        + b"\r\n\r\n"
        + b'event: x\ndata: {"a":\ndata: 1}\n\n'
        + b"data: [DONE]"  # unterminated final event
    )
    parser = bc.SSEParser()
    events: list[str] = []
    for i in range(0, len(stream), 997):  # separators straddle chunk borders
        events += parser.feed(stream[i : i + 997])
    events += parser.close()
    assert len(events) == 3
    assert json.loads(events[0])["choices"][0]["text"] == "y" * 200_000
    assert json.loads(events[1]) == {"a": 1}  # multi-line data joined by \n
    assert events[2] == "[DONE]"


def test_sse_parser_keeps_unicode_line_separator_inside_json() -> None:
    payload = json.dumps({"t": "a\u2028b"}, ensure_ascii=False)
    events = bc.SSEParser().feed(f"data: {payload}\n\n".encode())
    assert json.loads(events[0])["t"] == "a\u2028b"


# --------------------------------------------------------------------------
# Pure metrics function
# --------------------------------------------------------------------------


def _hand_outcomes() -> list[Any]:
    # A: 3 tokens, tpot (0.16-0.1)/2 = 0.03; token events at 0.10, 0.12, 0.16
    a = outcome(
        index=0,
        success=True,
        start_time=10.0,
        ttft=0.1,
        itl=[0.02, 0.04],
        latency=0.16,
        output_tokens=3,
    )
    # B: 5 tokens, tpot (0.55-0.3)/4 = 0.0625; events at .8,.85,.9,.96,1.05
    b = outcome(
        index=1,
        success=True,
        start_time=10.5,
        ttft=0.3,
        itl=[0.05, 0.05, 0.06, 0.09],
        latency=0.55,
        output_tokens=5,
    )
    # C: 1 token -> excluded from TPOT; event at 1.4
    c = outcome(
        index=2,
        success=True,
        start_time=11.2,
        ttft=0.2,
        itl=[],
        latency=0.2,
        output_tokens=1,
        prompt_tokens_reported=90,
    )
    # D: failed -> excluded from everything but "failed"
    d = outcome(
        index=3,
        success=False,
        start_time=10.1,
        ttft=5.0,
        itl=[9.0],
        latency=9.0,
        output_tokens=50,
        error="HTTP 500",
    )
    return [a, b, c, d]


def test_calculate_metrics_against_hand_computed_values() -> None:
    m = bc.calculate_metrics(_hand_outcomes(), 2.0, [50, 90, 99.9])
    approx = pytest.approx
    assert m["completed"] == 3 and m["failed"] == 1
    assert m["total_input_tokens"] == 100 + 100 + 90  # C reports 90
    assert m["total_output_tokens"] == 9
    assert m["request_throughput"] == approx(1.5)
    assert m["output_throughput"] == approx(4.5)
    assert m["total_token_throughput"] == approx(149.5)
    assert m["request_goodput"] is None
    assert m["duration"] == 2.0
    # TTFT [100, 300, 200] ms
    assert m["mean_ttft_ms"] == approx(200.0)
    assert m["median_ttft_ms"] == approx(200.0)
    assert m["std_ttft_ms"] == approx(81.649658, rel=1e-6)  # sqrt(20000/3)
    assert m["min_ttft_ms"] == approx(100.0) and m["max_ttft_ms"] == approx(300.0)
    assert m["p50_ttft_ms"] == approx(200.0)
    assert m["p90_ttft_ms"] == approx(280.0)  # 200 + 0.8 * 100
    assert m["p99.9_ttft_ms"] == approx(299.8)  # 200 + 0.998 * 100
    # TPOT [30, 62.5] ms (C excluded: 1 output token)
    assert m["mean_tpot_ms"] == approx(46.25)
    assert m["median_tpot_ms"] == approx(46.25)
    assert m["std_tpot_ms"] == approx(16.25)
    assert m["p90_tpot_ms"] == approx(59.25)  # 30 + 0.9 * 32.5
    assert m["min_tpot_ms"] == approx(30.0) and m["max_tpot_ms"] == approx(62.5)
    # ITL pooled [20, 40, 50, 50, 60, 90] ms
    assert m["mean_itl_ms"] == approx(310 / 6)
    assert m["median_itl_ms"] == approx(50.0)
    assert m["std_itl_ms"] == approx(math.sqrt(2683.3333333 / 6), rel=1e-6)
    assert m["p90_itl_ms"] == approx(75.0)  # 60 + 0.5 * 30
    # E2EL [160, 550, 200] ms
    assert m["mean_e2el_ms"] == approx(910 / 3)
    assert m["median_e2el_ms"] == approx(200.0)
    assert m["p90_e2el_ms"] == approx(480.0)  # 200 + 0.8 * 350
    assert m["max_e2el_ms"] == approx(550.0)
    # Per-second buckets from t0 = 10.0: events [3 + 4, 1 + 1, 0] -> 7;
    # requests active per bucket: A{0}, B{0,1}, C{1} -> [2, 2, 0] -> 2
    assert m["max_output_tokens_per_s"] == 7.0
    assert m["max_concurrent_requests"] == 2


def test_calculate_metrics_empty_is_zero_like_vllm() -> None:
    failed = [outcome(index=i, success=False, error="x") for i in range(3)]
    m = bc.calculate_metrics(failed, 1.0, [50, 99])
    assert m["completed"] == 0 and m["failed"] == 3
    for key in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "min", "max", "p50", "p99"):
            assert m[f"{stat}_{key}_ms"] == 0.0
    assert m["max_output_tokens_per_s"] == 0.0 and m["max_concurrent_requests"] == 0
    assert m["request_throughput"] == 0.0
    assert bc.calculate_metrics(failed, 0.0, [50])["output_throughput"] == 0.0


def test_percentile_key_naming() -> None:
    assert bc.percentile_key(99.0) == "99"
    assert bc.percentile_key(99.9) == "99.9"
    assert bc.percentile_key(50) == "50"


# --------------------------------------------------------------------------
# Arrival schedule (pure)
# --------------------------------------------------------------------------


def _gaps(times: Any) -> Any:
    return np.diff(np.concatenate([[0.0], times]))


def _cv(gaps: Any) -> float:
    return float(np.std(gaps) / np.mean(gaps))


@pytest.mark.parametrize("seed", [0, 1])
def test_poisson_schedule_rate_and_cv(seed: int) -> None:
    n, rate = 2000, 20.0
    raw = bc.arrival_schedule(n, rate, 1.0, seed, rescale=False)
    # the gamma(1, 1/R) draws themselves: a Poisson process at rate R
    assert n / raw[-1] == pytest.approx(rate, rel=0.05)
    assert _cv(_gaps(raw)) == pytest.approx(1.0, rel=0.10)
    assert np.all(np.diff(raw) >= 0)
    # what the benchmark uses: the same times, one factor, last due at N/R
    times = bc.arrival_schedule(n, rate, 1.0, seed)
    assert times[-1] == pytest.approx(n / rate, rel=1e-12)
    assert np.mean(_gaps(times)) == pytest.approx(1 / rate, rel=1e-12)
    np.testing.assert_allclose(times / raw, (n / rate) / raw[-1])
    assert _cv(_gaps(times)) == pytest.approx(_cv(_gaps(raw)), rel=1e-9)
    assert times[0] > 0  # the first request also waits for its arrival, as vLLM
    # fixed schedule for a seed, a different one for another seed
    np.testing.assert_array_equal(bc.arrival_schedule(n, rate, 1.0, seed), times)
    assert not np.array_equal(bc.arrival_schedule(n, rate, 1.0, seed + 7), times)


@pytest.mark.parametrize(("burstiness", "cv"), [(0.5, math.sqrt(2.0)), (2.0, math.sqrt(0.5)), (4.0, 0.5)])
def test_gamma_schedule_cv_follows_burstiness(burstiness: float, cv: float) -> None:
    times = bc.arrival_schedule(4000, 5.0, burstiness, seed=3)
    assert _cv(_gaps(times)) == pytest.approx(cv, rel=0.10)
    assert times[-1] == pytest.approx(4000 / 5.0)
    raw = bc.arrival_schedule(4000, 5.0, burstiness, seed=3, rescale=False)
    assert 4000 / raw[-1] == pytest.approx(5.0, rel=0.05)


def test_fixed_gap_schedule_for_infinite_burstiness() -> None:
    times = bc.arrival_schedule(5, 4.0, math.inf, seed=0)
    np.testing.assert_allclose(times, [0.25, 0.5, 0.75, 1.0, 1.25])


def test_schedule_rejects_bad_parameters() -> None:
    assert len(bc.arrival_schedule(0, 1.0, 1.0, 0)) == 0
    for rate, burst in ((0.0, 1.0), (-1.0, 1.0), (math.inf, 1.0), (1.0, 0.0), (1.0, -0.5)):
        with pytest.raises(ValueError):
            bc.arrival_schedule(10, rate, burst, 0)


# --------------------------------------------------------------------------
# Goodput and achieved load (pure)
# --------------------------------------------------------------------------


# Hand values of _hand_outcomes(): TTFT/TPOT/E2EL in ms, TPOT of C (1 token)
# counts as 0 for goodput; D failed and is never judged.
#   A: 100, 30,   160
#   B: 300, 62.5, 550
#   C: 200, 0,    200
@pytest.mark.parametrize(
    ("slo", "met"),
    [
        ({"ttft": 200}, [True, False, True]),  # C exactly at the threshold: good
        ({"ttft": 199.9}, [True, False, False]),
        ({"tpot": 50}, [True, False, True]),
        ({"tpot": 0}, [False, False, True]),  # only the 1-token request
        ({"e2el": 550}, [True, True, True]),
        ({"ttft": 250, "tpot": 50, "e2el": 180}, [True, False, False]),
        ({"ttft": 1, "e2el": 10_000}, [False, False, False]),
    ],
)
def test_goodput_against_hand_computed_values(slo: dict[str, float], met: list[bool]) -> None:
    outcomes = _hand_outcomes()
    m = bc.calculate_metrics(outcomes, 2.0, [50], goodput_slo_ms=slo)
    good = sum(met)
    assert m["good_requests"] == good
    assert m["request_goodput"] == pytest.approx(good / 2.0)  # per second of duration
    assert m["slo_attainment_pct"] == pytest.approx(100.0 * good / 3)  # of 3 completed
    assert m["goodput_slo_ms"] == slo
    assert [bc.slo_met(o, slo) for o in outcomes] == [*met, None]  # D failed: not judged
    records = [bc.request_record(o, 10.0, 3, slo) for o in outcomes]
    assert [r["slo_met"] for r in records] == [*met, None]
    # goodput never changes the other metrics
    plain = bc.calculate_metrics(outcomes, 2.0, [50])
    for key in ("completed", "request_throughput", "mean_ttft_ms", "p50_e2el_ms"):
        assert m[key] == plain[key]


def test_goodput_null_without_slo_or_completions() -> None:
    m = bc.calculate_metrics(_hand_outcomes(), 2.0, [50])
    assert m["request_goodput"] is None and m["slo_attainment_pct"] is None
    assert m["goodput_slo_ms"] is None and m["good_requests"] is None
    assert bc.slo_met(_hand_outcomes()[0], None) is None
    failed = [outcome(index=i, success=False, error="x") for i in range(2)]
    m = bc.calculate_metrics(failed, 1.0, [50], goodput_slo_ms={"ttft": 100})
    assert m["request_goodput"] == 0.0 and m["good_requests"] == 0
    assert m["slo_attainment_pct"] is None  # nothing completed to judge


def test_achieved_load_closed_loop_hand_values() -> None:
    # In flight [0, 1], [0, 2], [1, 3] (the third starts when the first ends:
    # a handed-over slot is not two requests), [2.5, 3.5] failed but sent.
    spans = [(0.0, 1.0), (0.0, 2.0), (1.0, 3.0), (2.5, 3.5)]
    outcomes = [
        outcome(index=i, success=i < 3, start_time=100.0 + a, end_time=100.0 + b, ttft=0.1, latency=b - a - 0.01, output_tokens=2)
        for i, (a, b) in enumerate(spans)
    ]
    m = bc.calculate_metrics(outcomes, 4.0, [50], phase_start=100.0)
    assert m["achieved_concurrency_max"] == 2
    assert m["achieved_concurrency_mean"] == pytest.approx((1 + 2 + 2 + 1) / 4.0)
    # no schedule: the window is the whole phase, all 4 sent requests count
    assert m["dispatch_window_s"] == 4.0 and m["achieved_request_rate"] == pytest.approx(1.0)
    # queue time is 0 by definition without a schedule
    assert m["max_client_queue_time_ms"] == 0.0
    assert m["mean_e2el_including_client_queue_ms"] == pytest.approx(m["mean_e2el_ms"])
    assert m["mean_ttft_including_client_queue_ms"] == pytest.approx(m["mean_ttft_ms"])


def test_achieved_load_and_queue_time_open_loop_hand_values() -> None:
    # Due at 0.5, 1.0, 1.5, 2.0 (R = 2/s); sent at 0.5, 1.0, 2.0, 3.0.
    due = [0.5, 1.0, 1.5, 2.0]
    sent = [0.5, 1.0, 2.0, 3.0]
    ttfts = [0.1, 0.2, 0.3, 0.4]
    lat = [0.5, 1.5, 1.0, 0.5]  # in flight [.5, 1], [1, 2.5], [2, 3], [3, 3.5]
    outcomes = [
        outcome(
            index=i,
            success=True,
            scheduled_time=50.0 + due[i],
            start_time=50.0 + sent[i],
            end_time=50.0 + sent[i] + lat[i],
            ttft=ttfts[i],
            latency=lat[i],
            output_tokens=3,
        )
        for i in range(4)
    ]
    m = bc.calculate_metrics(outcomes, 3.5, [50, 100], phase_start=50.0)
    # 4 dispatches in 3.0 s from the origin (would be 2.0 s, i.e. R, on time)
    assert m["dispatch_window_s"] == pytest.approx(3.0)
    assert m["achieved_request_rate"] == pytest.approx(4 / 3.0)
    assert m["achieved_concurrency_max"] == 2  # only [1, 2.5] and [2, 3] overlap
    assert m["achieved_concurrency_mean"] == pytest.approx(3.5 / 3.5)
    # queue [0, 0, 500, 1000] ms
    assert m["mean_client_queue_time_ms"] == pytest.approx(375.0)
    assert m["median_client_queue_time_ms"] == pytest.approx(250.0)
    assert m["max_client_queue_time_ms"] == pytest.approx(1000.0)
    assert m["p100_client_queue_time_ms"] == pytest.approx(1000.0)
    # e2el incl. queue [500, 1500, 1500, 1500]; ttft incl. queue [100, 200, 800, 1400]
    assert m["mean_e2el_including_client_queue_ms"] == pytest.approx(1250.0)
    assert m["mean_e2el_ms"] == pytest.approx(875.0)
    assert m["max_ttft_including_client_queue_ms"] == pytest.approx(1400.0)
    assert m["median_ttft_including_client_queue_ms"] == pytest.approx(500.0)
    rec = bc.request_record(outcomes[3], 50.0, 3)
    assert rec["scheduled_offset_s"] == 2.0 and rec["dispatch_offset_s"] == 3.0 == rec["start_offset_s"]
    assert rec["end_offset_s"] == 3.5
    assert rec["client_queue_time_ms"] == 1000.0
    assert rec["e2el_including_client_queue_ms"] == 1500.0 and rec["ttft_including_client_queue_ms"] == 1400.0
    assert rec["slo_met"] is None


# --------------------------------------------------------------------------
# Measurement against the server's timing
# --------------------------------------------------------------------------


def test_ttft_itl_e2el_tpot_match_server_timing(server: FakeServer, tmp_path: Path) -> None:
    ttft, itl, n = 0.08, 0.03, 5
    # tail_delay: usage + [DONE] arrive 150 ms after the last token; E2EL
    # must end at the last content event, not at [DONE].
    server.reset(ttft_s=ttft, itl_s=itl, tail_delay_s=0.15)
    cfg = make_cfg(server, tmp_path, concurrency=1, num_requests=3, max_tokens=n)
    run, result = run_inprocess(cfg)
    # Client receipt vs server write, same process clock. On a loaded host
    # (2 cores shared with other suites) a block can be read a few ms late,
    # which also shortens the next measured gap, hence 25 ms, not less.
    tol = 0.025
    for o in run.measured:
        assert o.success, o.error
        writes = server.records[o.request_id]["writes"]
        assert len(writes) == n
        # TTFT and E2EL start when the request bytes reach the socket (after the dispatch)
        assert o.sent_time is not None and o.start_time <= o.sent_time < o.start_time + 0.05
        server_ttft = writes[0] - o.sent_time
        assert 0.0 <= o.ttft - server_ttft < tol
        assert ttft <= o.ttft < ttft + 0.04
        assert len(o.itl) == n - 1
        for k, gap in enumerate(o.itl):
            assert gap == pytest.approx(writes[k + 1] - writes[k], abs=tol)
            assert itl - tol <= gap < itl + 0.03 + tol
        assert 0.0 <= o.latency - (writes[-1] - o.sent_time) < tol
        assert o.latency < ttft + (n - 1) * itl + 0.1  # excludes the 150 ms tail
        assert o.output_tokens == n and o.output_tokens_from_usage
        assert o.tpot == pytest.approx((o.latency - o.ttft) / (n - 1))
    for rec, o in zip(result["requests"], run.measured):
        assert rec["ttft_ms"] == pytest.approx(o.ttft * 1000, abs=0.001)
        assert rec["e2el_ms"] == pytest.approx(o.latency * 1000, abs=0.001)
        assert rec["tpot_ms"] == pytest.approx(o.tpot * 1000, abs=0.001)
        assert len(rec["itl_ms"]) == n - 1
    assert result["mean_ttft_ms"] == pytest.approx(ttft * 1000, abs=30)
    assert result["mean_tpot_ms"] == pytest.approx(itl * 1000, abs=15)
    assert result["completed"] == 3 and result["failed"] == 0


def test_online_closed_loop_bounded_at_concurrency(server: FakeServer, tmp_path: Path) -> None:
    server.reset(ttft_s=0.03, itl_s=0.01)
    cfg = make_cfg(server, tmp_path, concurrency=3, num_requests=12, max_tokens=3)
    run, result = run_inprocess(cfg)
    assert result["completed"] == 12
    assert server.max_in_flight == 3  # really 3 at once, never more
    assert result["max_concurrency"] == 3 and result["concurrency"] == 3
    assert sorted(o.index for o in run.measured) == list(range(12))


def test_offline_sends_all_at_once(server: FakeServer, tmp_path: Path) -> None:
    server.reset(ttft_s=0.15, itl_s=0.01)
    cfg = make_cfg(
        server,
        tmp_path,
        concurrency=2,
        num_requests=8,
        max_tokens=2,
        measurement_type="offline",
    )
    _, result = run_inprocess(cfg)
    assert result["completed"] == 8
    assert server.max_in_flight == 8
    arrivals = [r["arrival"] for r in server.records.values()]
    assert max(arrivals) - min(arrivals) < 0.1
    assert all(r["start_offset_s"] < 0.1 for r in result["requests"])
    assert result["max_concurrency"] is None and result["concurrency"] == 2
    assert result["measurement_type"] == "offline"


def test_warmup_excluded_and_prompts_on_the_wire(server: FakeServer, tmp_path: Path) -> None:
    # Warmup requests are slow; if any leaked into the metrics, max TTFT shows it.
    server.reset(ttft_s=0.02, ttft_by_index={0: 0.3, 1: 0.3, 2: 0.3, 3: 0.3})
    cfg = make_cfg(
        server,
        tmp_path,
        concurrency=2,
        warmup_requests=4,
        num_requests=5,
        prompt_tokens=40,
        max_tokens=3,
    )
    _, result = run_inprocess(cfg)
    assert len(server.records) == 9
    assert result["warmup_requests"] == 4 and result["warmup_failed"] == 0
    assert result["completed"] == 5 and len(result["requests"]) == 5
    assert [r["index"] for r in result["requests"]] == [4, 5, 6, 7, 8]
    assert not any(r["warmup"] for r in result["requests"])
    assert result["max_ttft_ms"] < 150
    # warmup fully finished before the first measured request arrived
    warm_end = max(server.records[f"bench-{i}"]["end"] for i in range(4))
    meas_start = min(server.records[f"bench-{i}"]["arrival"] for i in range(4, 9))
    assert warm_end <= meas_start
    # exact prompt lengths, unique first token (warmup included), vLLM payload
    payloads = [rec["payload"] for rec in server.records.values()]
    assert all(len(p["prompt"]) == 40 for p in payloads)
    assert len({p["prompt"][0] for p in payloads}) == 9
    p = payloads[0]
    assert p["model"] == "fake-model" and p["max_tokens"] == 3
    assert p["temperature"] == 0.0 and p["stream"] is True and p["ignore_eos"] is True
    assert p["stream_options"] == {"include_usage": True}
    assert {rid for rid in server.records} == {f"bench-{i}" for i in range(9)}
    assert all(rec["headers"]["X-Request-Id"] == rid for rid, rec in server.records.items())
    assert result["total_input_tokens"] == 5 * 40
    assert result["prompt_tokens_exact"] is True


def test_failed_requests_counted_with_error_text(server: FakeServer, tmp_path: Path) -> None:
    server.reset(fail={1, 4}, disconnect={2}, stall={5}, stall_s=1.0)
    cfg = make_cfg(
        server,
        tmp_path,
        concurrency=2,
        num_requests=7,
        max_tokens=3,
        request_timeout=0.5,
    )
    _, result = run_inprocess(cfg)
    assert result["completed"] == 3 and result["failed"] == 4
    by_index = {r["index"]: r for r in result["requests"]}
    for i in (1, 4):
        assert not by_index[i]["success"]
        assert "HTTP 500" in by_index[i]["error"] and "boom injected" in by_index[i]["error"]
        assert by_index[i]["http_status"] == 500 and by_index[i]["ttft_ms"] is None
    assert not by_index[2]["success"] and by_index[2]["error"]  # payload error
    assert not by_index[5]["success"] and "TimeoutError" in by_index[5]["error"]
    errors = {e["error"]: e["count"] for e in result["errors"]}
    assert sum(errors.values()) == 4
    assert [c for t, c in errors.items() if "boom injected" in t] == [2]
    # failed requests contribute nothing to totals
    assert result["total_output_tokens"] == 3 * 3
    assert result["total_input_tokens"] == 3 * 32


def test_output_tokens_from_usage_and_fallback(server: FakeServer, tmp_path: Path) -> None:
    # 2 tokens per event: 3 events for 6 tokens; usage says 6.
    server.reset(tokens_per_chunk=2, itl_s=0.02)
    cfg = make_cfg(server, tmp_path, concurrency=2, num_requests=2, max_tokens=6)
    run, result = run_inprocess(cfg)
    for o, rec in zip(run.measured, result["requests"]):
        assert o.content_chunks == 3 and len(o.itl) == 2
        assert rec["output_tokens"] == 6 and rec["output_tokens_from_usage"]
        assert rec["tpot_ms"] == pytest.approx((rec["e2el_ms"] - rec["ttft_ms"]) / 5, abs=0.01)
    assert result["total_output_tokens"] == 12 and result["output_tokens_mismatch"] == 0
    assert result["output_tokens_fallback"] == 0
    # Without usage: count of content events, flagged, and a mismatch.
    server.reset(tokens_per_chunk=2, send_usage=False)
    _, result = run_inprocess(cfg)
    assert [r["output_tokens"] for r in result["requests"]] == [3, 3]
    assert not any(r["output_tokens_from_usage"] for r in result["requests"])
    assert result["output_tokens_fallback"] == 2
    assert result["output_tokens_mismatch"] == 2


def test_output_tokens_mismatch_counted(server: FakeServer, tmp_path: Path) -> None:
    server.reset(short={2})
    cfg = make_cfg(server, tmp_path, concurrency=2, num_requests=4, max_tokens=4)
    _, result = run_inprocess(cfg)
    assert result["output_tokens_mismatch"] == 1
    mism = [r["index"] for r in result["requests"] if r["output_tokens_mismatch"]]
    assert mism == [2]


def test_long_sse_line_over_64k(server: FakeServer, tmp_path: Path) -> None:
    server.reset(long_text_chars=300_000)
    cfg = make_cfg(server, tmp_path, concurrency=1, num_requests=2, max_tokens=3)
    run, result = run_inprocess(cfg)
    assert result["completed"] == 2, result["errors"]
    for o in run.measured:
        assert o.content_chunks == 3 and o.generated_chars >= 300_000
        assert o.output_tokens == 3


def test_chat_endpoint(server: FakeServer, tmp_path: Path) -> None:
    server.reset(chat_prompt_tokens=123)
    cfg = make_cfg(
        server,
        tmp_path,
        endpoint="/v1/chat/completions",
        concurrency=2,
        num_requests=3,
        max_tokens=4,
        prompt_tokens=50,
    )
    _, result = run_inprocess(cfg)
    assert result["endpoint_type"] == "openai-chat"
    assert result["prompt_tokens_exact"] is False
    assert result["completed"] == 3 and result["total_output_tokens"] == 12
    assert result["total_input_tokens"] == 3 * 123  # server-reported
    payloads = [rec["payload"] for rec in server.records.values()]
    firsts = set()
    for p in payloads:
        assert p["max_completion_tokens"] == 4 and p["ignore_eos"] is True
        text = p["messages"][0]["content"][0]["text"]
        assert len(text.split()) == 50
        firsts.add(text.split()[0])
    assert len(firsts) == 3


# --------------------------------------------------------------------------
# Load modes, client queue time, achieved load, goodput, long prompts
# --------------------------------------------------------------------------


def _check_record_arithmetic(result: dict[str, Any]) -> None:
    """Per-request queue fields agree with the offsets and latencies."""
    for r in result["requests"]:
        assert r["client_queue_time_ms"] >= 0.0  # never sent early
        assert r["client_queue_time_ms"] == pytest.approx((r["dispatch_offset_s"] - r["scheduled_offset_s"]) * 1000, abs=0.01)
        assert r["dispatch_offset_s"] == r["start_offset_s"]
        assert r["end_offset_s"] >= r["dispatch_offset_s"]
        if r["success"]:
            wait = r["client_queue_time_ms"] + r["client_send_delay_ms"]
            assert r["e2el_including_client_queue_ms"] == pytest.approx(wait + r["e2el_ms"], abs=0.003)
            assert r["ttft_including_client_queue_ms"] == pytest.approx(wait + r["ttft_ms"], abs=0.003)


def test_open_loop_capped_shows_client_queue(server: FakeServer, tmp_path: Path) -> None:
    # 8 requests due within 8/50 = 0.16 s, each taking >= 0.21 s, at most 2 in
    # flight: request k cannot start before (k // 2) * 0.21 s, so it waits.
    ttft, itl, n, rate = 0.2, 0.01, 8, 50.0
    server.reset(ttft_s=ttft, itl_s=itl)
    cfg = make_cfg(server, tmp_path, request_rate=rate, concurrency=2, num_requests=n, max_tokens=2, seed=5)
    assert cfg.load_mode == "open_loop"
    run, result = run_inprocess(cfg)
    assert result["completed"] == n, result["errors"]
    assert server.max_in_flight == 2
    assert result["achieved_concurrency_max"] == 2
    assert result["load_mode"] == "open_loop" and result["measurement_type"] == "online"
    assert result["request_rate"] == rate and result["burstiness"] == 1.0
    assert result["max_concurrency"] == 2 and result["requested_concurrency"] == 2
    recs = result["requests"]
    # the schedule is the pure one for the seed, relative to the phase start
    due = bc.arrival_schedule(n, rate, 1.0, 5)
    assert [r["scheduled_offset_s"] for r in recs] == pytest.approx(list(due), abs=2e-6)
    assert due[-1] == pytest.approx(n / rate)
    # dispatched in schedule order, never before due, held back by the cap
    dispatch = [r["dispatch_offset_s"] for r in recs]
    assert dispatch == sorted(dispatch)
    for k, r in enumerate(recs):
        assert r["dispatch_offset_s"] >= (k // 2) * (ttft + itl) - 0.002
        if k >= 2:
            assert r["client_queue_time_ms"] > 0.0
        if k >= 4:
            assert r["client_queue_time_ms"] >= 1000 * (2 * (ttft + itl) - n / rate) - 2
    _check_record_arithmetic(result)
    assert result["mean_client_queue_time_ms"] > 100
    assert result["mean_e2el_including_client_queue_ms"] > result["mean_e2el_ms"] + 100
    assert result["p99_e2el_including_client_queue_ms"] > result["p99_e2el_ms"]
    assert result["mean_ttft_including_client_queue_ms"] > result["mean_ttft_ms"] + 100
    # requested 50/s, achieved at most 8 / (3 * 0.21 s)
    assert result["achieved_request_rate"] < 8 / (3 * (ttft + itl)) + 0.1
    assert result["achieved_request_rate"] == pytest.approx(n / result["dispatch_window_s"])
    assert 1.0 <= result["achieved_concurrency_mean"] <= 2.0
    # server side agrees: each request arrived after its due time
    for o in run.measured:
        assert server.records[o.request_id]["arrival"] >= o.scheduled_time


def test_open_loop_uncapped_sends_on_schedule(server: FakeServer, tmp_path: Path) -> None:
    # 6 requests due within 6/40 = 0.15 s, each taking >= 0.5 s: all overlap.
    n, rate = 6, 40.0
    server.reset(ttft_s=0.5, itl_s=0.01)
    cfg = make_cfg(server, tmp_path, request_rate=rate, concurrency=0, num_requests=n, max_tokens=2, warmup_requests=1)
    _, result = run_inprocess(cfg)
    assert result["completed"] == n, result["errors"]
    assert result["max_concurrency"] is None and result["requested_concurrency"] is None
    assert result["warmup_concurrency"] == 1 and result["warmup_requests"] == 1
    assert server.max_in_flight == n and result["achieved_concurrency_max"] == n
    # never late by design only when no request is early: rate <= R exactly
    assert result["achieved_request_rate"] <= rate * (1 + 1e-9)
    assert result["achieved_request_rate"] > rate / 4  # generous: loaded machine
    assert result["dispatch_window_s"] >= n / rate
    assert result["median_client_queue_time_ms"] < 250  # no cap: only timer/loop lag
    assert 1.0 < result["achieved_concurrency_mean"] <= n
    _check_record_arithmetic(result)


def test_closed_loop_and_offline_have_zero_queue_time(server: FakeServer, tmp_path: Path) -> None:
    for mtype, conc, peak in (("online", 4, 4), ("offline", 1, 4)):
        cfg = make_cfg(server, tmp_path, measurement_type=mtype, concurrency=conc, num_requests=4, max_tokens=3)
        server.reset(ttft_s=0.15, itl_s=0.01)  # long enough for all 4 to overlap
        _, result = run_inprocess(cfg)
        assert result["completed"] == 4
        assert result["load_mode"] == ("closed_loop" if mtype == "online" else "offline")
        assert result["arrival_schedule"] is None
        for r in result["requests"]:
            assert r["client_queue_time_ms"] == 0.0
            assert r["scheduled_offset_s"] == r["dispatch_offset_s"]
            # no schedule, so no queue: only the client's own send delay is added
            assert 0.0 <= r["client_send_delay_ms"] < 50.0
            assert r["e2el_including_client_queue_ms"] == pytest.approx(r["e2el_ms"] + r["client_send_delay_ms"], abs=0.003)
            assert r["ttft_including_client_queue_ms"] == pytest.approx(r["ttft_ms"] + r["client_send_delay_ms"], abs=0.003)
        for stat in ("mean", "max", "p99"):
            assert result[f"{stat}_client_queue_time_ms"] == 0.0
        assert result["mean_e2el_including_client_queue_ms"] == pytest.approx(result["mean_e2el_ms"] + result["mean_client_send_delay_ms"], abs=0.01)
        assert result["achieved_concurrency_max"] == peak == server.max_in_flight
        assert 1.0 < result["achieved_concurrency_mean"] <= peak
        # without a schedule the rate is over the whole phase
        assert result["dispatch_window_s"] == result["duration"]
        assert result["achieved_request_rate"] == pytest.approx(4 / result["duration"])
        assert result["requested_concurrency"] == 4
    # closed loop with fewer workers than requests: peak = the concurrency
    server.reset(ttft_s=0.03, itl_s=0.01)
    _, result = run_inprocess(make_cfg(server, tmp_path, concurrency=2, num_requests=6, max_tokens=2))
    assert result["achieved_concurrency_max"] == 2 == server.max_in_flight
    assert 1.0 < result["achieved_concurrency_mean"] <= 2.0


def test_goodput_end_to_end(server: FakeServer, tmp_path: Path) -> None:
    # Request 2 has a TTFT of >= 0.8 s; the others about 20 ms (SLO 500 ms
    # leaves them almost half a second of scheduling slack on a busy host).
    server.reset(ttft_s=0.02, itl_s=0.01, ttft_by_index={2: 0.8}, fail={3})
    cfg = make_cfg(server, tmp_path, concurrency=2, num_requests=5, max_tokens=3, goodput=["ttft:500", "tpot:5000"])
    assert cfg.goodput_slo_ms == {"ttft": 500.0, "tpot": 5000.0}
    _, result = run_inprocess(cfg)
    assert result["completed"] == 4 and result["failed"] == 1
    met = {r["index"]: r["slo_met"] for r in result["requests"]}
    assert met[2] is False and met[3] is None
    assert [met[i] for i in (0, 1, 4)] == [True, True, True]
    assert result["good_requests"] == 3
    assert result["slo_attainment_pct"] == pytest.approx(75.0)
    assert result["request_goodput"] == pytest.approx(3 / result["duration"])
    assert result["goodput_slo_ms"] == {"ttft": 500.0, "tpot": 5000.0}
    assert "Request goodput" in bc.format_summary(result)


def test_long_prompt_50k_tokens_and_long_stream(server: FakeServer, tmp_path: Path) -> None:
    # 50,000 token ids (~350 KB of JSON) in; 20 events of 10 KB text plus a
    # first event of 100 KB out (each SSE line far over aiohttp's 64 KiB).
    n_prompt, n_out = 50_000, 20
    server.reset(ttft_s=0.02, itl_s=0.002, text_chars=10_000, long_text_chars=100_000)
    cfg = make_cfg(
        server,
        tmp_path,
        prompt_tokens=n_prompt,
        max_tokens=n_out,
        token_id_range="1000:150000",
        concurrency=2,
        num_requests=2,
        request_rate=20,
        goodput=["e2el:60000"],
    )
    run, result = run_inprocess(cfg)
    assert result["completed"] == 2, result["errors"]
    for o in run.measured:
        rec = server.records[o.request_id]
        assert len(rec["payload"]["prompt"]) == n_prompt
        assert rec["body_bytes"] > 300_000
        assert o.prompt_tokens_reported == n_prompt  # usage echoed by the server
        assert o.content_chunks == n_out and len(o.itl) == n_out - 1
        assert o.generated_chars == 100_000 + (n_out - 1) * 10_000
        assert o.output_tokens == n_out and o.output_tokens_from_usage
    assert result["total_input_tokens"] == 2 * n_prompt
    assert result["output_tokens_mismatch"] == 0
    assert result["good_requests"] == 2
    assert len({tuple(r["payload"]["prompt"][:1]) for r in server.records.values()}) == 2
    out = tmp_path / "long.json"
    bc.write_json_atomic(str(out), result)
    assert json.loads(out.read_text())["requests"][0]["prompt_tokens"] == n_prompt


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_cli_open_loop_writes_strict_json(server: FakeServer, tmp_path: Path, procs: list[Any]) -> None:
    out = tmp_path / "open.json"
    args = cli_args(server, out, num_requests=5, request_rate=100, burstiness="inf", concurrency=3, warmup_requests=1)
    args += ["--goodput", "ttft:10000", "e2el:20000"]
    rc, stdout, stderr = run_cli(procs, args)
    assert rc == 0, stderr
    assert "Client Queue Time" in stdout and "Request goodput" in stdout
    res = _strict_json(out.read_text())  # "inf" must be a string, never Infinity
    assert res["burstiness"] == "inf" and res["request_rate"] == 100.0
    assert res["arrival_schedule"] == {"distribution": "fixed", "rescaled_to_n_over_rate": True}
    assert res["load_mode"] == "open_loop" and res["max_concurrency"] == 3
    assert [r["scheduled_offset_s"] for r in res["requests"]] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05], abs=2e-6)
    assert res["goodput_slo_ms"] == {"ttft": 10000.0, "e2el": 20000.0}
    assert res["completed"] == 5 and res["good_requests"] == 5 and res["slo_attainment_pct"] == 100.0
    assert all(RECORD_KEYS <= set(r) for r in res["requests"])


# --------------------------------------------------------------------------
# Output file and command line
# --------------------------------------------------------------------------


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "r.json"
    bc.write_json_atomic(str(target), {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    # Serialisation fails half-way: old content intact, no temp file left.
    with pytest.raises(TypeError):
        bc.write_json_atomic(str(target), {"a": 2, "b": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    fresh = tmp_path / "sub" / "new.json"
    with pytest.raises(TypeError):
        bc.write_json_atomic(str(fresh), {"b": object()})
    assert not fresh.exists()
    assert sorted(os.listdir(target.parent)) == ["r.json"]


VLLM_KEYS = {
    "date",
    "endpoint_type",
    "backend",
    "label",
    "model_id",
    "num_prompts",
    "request_rate",
    "burstiness",
    "max_concurrency",
    "duration",
    "completed",
    "failed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
}
OUR_KEYS = {
    "measurement_type",
    "concurrency",
    "prompt_tokens",
    "max_tokens",
    "warmup_requests",
    "seed",
    "errors",
    "output_tokens_mismatch",
    "requests",
    "client",
    "prompt_tokens_exact",
    "load_mode",
    "requested_concurrency",
    "achieved_request_rate",
    "achieved_concurrency_mean",
    "achieved_concurrency_max",
    "dispatch_window_s",
    "slo_attainment_pct",
    "goodput_slo_ms",
    "good_requests",
}
RECORD_KEYS = {
    "index",
    "warmup",
    "prompt_tokens",
    "output_tokens",
    "ttft_ms",
    "itl_ms",
    "e2el_ms",
    "tpot_ms",
    "start_offset_s",
    "success",
    "error",
    "x_request_id",
    "output_tokens_mismatch",
    "scheduled_offset_s",
    "dispatch_offset_s",
    "end_offset_s",
    "client_queue_time_ms",
    "ttft_including_client_queue_ms",
    "e2el_including_client_queue_ms",
    "slo_met",
}
QUEUE_METRICS = ("client_queue_time", "ttft_including_client_queue", "e2el_including_client_queue")


def test_cli_end_to_end_writes_result(server: FakeServer, tmp_path: Path, procs: list[Any]) -> None:
    out = tmp_path / "res" / "out.json"
    args = cli_args(
        server,
        out,
        warmup_requests=2,
        num_requests=4,
        percentiles="50,99.9",
        label="cli",
    )
    rc, stdout, stderr = run_cli(procs, args)
    assert rc == 0, stderr
    assert "Serving Benchmark Result" in stdout
    res = json.loads(out.read_text())
    assert VLLM_KEYS | OUR_KEYS <= set(res)
    for metric in ("ttft", "tpot", "itl", "e2el", *QUEUE_METRICS):
        for stat in ("mean", "median", "std", "min", "max", "p50", "p99.9"):
            assert f"{stat}_{metric}_ms" in res
    assert res["endpoint_type"] == "openai" and res["backend"] == "vllm"
    assert res["request_rate"] == "inf" and res["burstiness"] == 1.0
    assert res["load_mode"] == "closed_loop" and res["max_concurrency"] == 2 and res["requested_concurrency"] == 2
    assert res["request_goodput"] is None and res["slo_attainment_pct"] is None and res["goodput_slo_ms"] is None
    assert all(r["slo_met"] is None and r["client_queue_time_ms"] == 0.0 for r in res["requests"])
    assert res["label"] == "cli" and res["model_id"] == "fake-model"
    assert res["num_prompts"] == 4 and res["completed"] == 4 and res["warmup_requests"] == 2
    assert res["client"]["name"] == "benchmark_common"
    assert {"python", "aiohttp"} <= set(res["client"])
    assert all(RECORD_KEYS <= set(r) for r in res["requests"])
    assert [r["x_request_id"] for r in res["requests"]] == [f"cli-{i}" for i in range(2, 6)]
    assert res["duration"] > 0 and res["request_throughput"] > 0
    assert [p.name for p in out.parent.iterdir()] == ["out.json"]


def test_cli_failed_requests_still_exit_zero(server: FakeServer, tmp_path: Path, procs: list[Any]) -> None:
    server.reset(fail={0, 1, 2})
    out = tmp_path / "out.json"
    rc, _, stderr = run_cli(procs, cli_args(server, out, num_requests=3))
    assert rc == 0, stderr
    res = json.loads(out.read_text())
    assert res["failed"] == 3 and res["completed"] == 0 and res["mean_ttft_ms"] == 0.0


def test_cli_unreachable_server_exit_1(tmp_path: Path, procs: list[Any]) -> None:
    out = tmp_path / "out.json"
    args = [
        "--base-url",
        f"http://127.0.0.1:{free_port()}",
        "--model",
        "m",
        "--prompt-tokens",
        "8",
        "--max-tokens",
        "2",
        "--num-requests",
        "1",
        "--result-file",
        str(out),
    ]
    rc, _, stderr = run_cli(procs, args)
    assert rc == 1
    assert "unreachable" in stderr
    assert not out.exists()


def test_cli_bad_args_exit_2(tmp_path: Path, procs: list[Any]) -> None:
    rc, _, stderr = run_cli(
        procs,
        [
            "--model",
            "m",
            "--prompt-tokens",
            "8",
            "--max-tokens",
            "2",
            "--num-requests",
            "1",
            "--concurrency",
            "0",
            "--result-file",
            str(tmp_path / "o.json"),
        ],
    )
    assert rc == 2 and "--concurrency" in stderr
    assert not (tmp_path / "o.json").exists()


BASE = [
    "--model",
    "m",
    "--prompt-tokens",
    "8",
    "--max-tokens",
    "2",
    "--num-requests",
    "5",
    "--result-file",
    "x.json",
]


@pytest.mark.parametrize(
    "extra",
    [
        ["--measurement-type", "burst"],
        ["--token-id-range", "5:5"],
        ["--token-id-range", "a:b"],
        ["--token-id-range", "0:4"],  # fewer ids than requests
        ["--warmup-requests", "-1"],
        ["--percentiles", "abc"],
        ["--percentiles", "101"],
        ["--base-url", "ftp://host:1"],
        ["--base-url", "http://host:notaport"],
        ["--endpoint", "/v1/embeddings"],
        ["--request-timeout", "0"],
        ["--prompt-tokens", "0"],
        ["--max-tokens", "x"],
        ["--request-rate", "0"],
        ["--request-rate", "-2"],
        ["--request-rate", "abc"],
        ["--request-rate", "nan"],
        ["--request-rate", ""],
        ["--request-rate", "5", "--measurement-type", "offline"],
        ["--request-rate", "5", "--concurrency", "-1"],
        ["--request-rate", "inf", "--concurrency", "0"],  # uncapped only for an open loop
        ["--burstiness", "0"],
        ["--burstiness", "-1"],
        ["--burstiness", "nan"],
        ["--burstiness", "x"],
        ["--goodput"],
        ["--goodput", "ttft"],
        ["--goodput", "ttft:"],
        ["--goodput", "itl:50"],
        ["--goodput", "ttft:abc"],
        ["--goodput", "ttft:-1"],
        ["--goodput", "ttft:inf"],
        ["--goodput", "ttft:nan"],
        ["--goodput", "ttft:100", "ttft:200"],
        ["--goodput", "ttft=100"],
    ],
)
def test_bad_args_exit_2(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bc.main([*BASE, *extra])
    assert exc.value.code == 2
    flag = next(a for a in extra if a.startswith("--"))
    if flag in ("--request-rate", "--burstiness", "--goodput"):
        assert flag in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--goodput", "ttft:fast"], "--goodput"),
        (["--request-rate", "-1"], "--request-rate"),
        (["--burstiness", "0"], "--burstiness"),
    ],
)
def test_cli_bad_load_args_exit_2(extra: list[str], flag: str, tmp_path: Path, procs: list[Any]) -> None:
    out = tmp_path / "o.json"
    rc, _, stderr = run_cli(procs, [*BASE[:-1], str(out), *extra])
    assert rc == 2 and flag in stderr
    assert not out.exists()


def test_load_args_parse() -> None:
    cfg = bc.parse_args(BASE)
    assert cfg.request_rate == math.inf and cfg.burstiness == 1.0 and cfg.goodput_slo_ms is None
    assert cfg.load_mode == "closed_loop" and cfg.max_concurrency == 1 and cfg.requested_concurrency == 1
    cfg = bc.parse_args([*BASE, "--request-rate", "2.5", "--burstiness", "0.5", "--concurrency", "0"])
    assert cfg.load_mode == "open_loop" and cfg.request_rate == 2.5 and cfg.burstiness == 0.5
    assert cfg.max_concurrency is None and cfg.requested_concurrency is None and cfg.warmup_concurrency == 1
    cfg = bc.parse_args([*BASE, "--request-rate", "inf", "--concurrency", "3", "--measurement-type", "offline"])
    assert cfg.load_mode == "offline" and cfg.max_concurrency is None and cfg.requested_concurrency == 5
    cfg = bc.parse_args([*BASE, "--burstiness", "inf", "--request-rate", "1", "--goodput", "TTFT:500", "tpot:12.5", "e2el:0"])
    assert cfg.burstiness == math.inf
    assert cfg.goodput_slo_ms == {"ttft": 500.0, "tpot": 12.5, "e2el": 0.0}


def test_missing_required_arg_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bc.parse_args(
            [
                "--prompt-tokens",
                "8",
                "--max-tokens",
                "2",
                "--num-requests",
                "1",
                "--result-file",
                "x.json",
            ]
        )
    assert exc.value.code == 2


def test_every_option_has_help() -> None:
    for action in bc.build_parser()._actions:
        assert action.help, action.dest
