#!/usr/bin/env python3
"""What does the P/D proxy add? A reproducible benchmark of scripts/disagg_proxy_server.py.

Everything runs on 127.0.0.1 with ephemeral ports, each process in its own process group:

* a fake prefill server P and a fake decode server D (bench/proxy_fakes.py, aiohttp): P answers
  at once with ``kv_transfer_params``; D streams N SSE chunks, the first right away, the rest a
  fixed gap apart (the gap travels in the request as ``bench_gap_ms``);
* our proxy (scripts/disagg_proxy_server.py, default flags, log to a file as on a node);
* a reference proxy built the way vLLM's toy proxy is (bench/proxy_reference.py: FastAPI +
  httpx + StreamingResponse, uvicorn defaults);
* one load generator (bench/proxy_loadgen.py, aiohttp, its own process) that stamps the time when
  the first body bytes arrive.

Paths: ``direct-D`` (client to D; the baseline), ``ours`` and ``reference`` (client to proxy,
which calls P then relays D), and ``direct-P`` (client to P: the round trip every proxy must
make before D starts, measured so the proxy's own cost can be told apart from it).

Per round, each path in a rotating order (so machine noise hits all paths alike):

1. TTFT at concurrency 1: ``--c1-requests`` streamed requests of ``--c1-chunks`` chunks.
2. TTFT at concurrency 64: ``--c64-requests`` streamed requests of ``--c64-chunks`` chunks.
3. Request rate at concurrency 64, closed loop, one-chunk streams, for ``--rate-seconds``.
4. Request rate at concurrency 1, the same, for ``--rate-c1-seconds``.

Added TTFT = TTFT through a proxy minus TTFT direct to D, at the same percentile, over all
rounds pooled; the spread of the per-round p50 difference is shown too. It includes the P round
trip; ``direct-P`` shows how much of it that is. The CPU seconds each process used during the
rate runs give the CPU cost per request of each proxy, which is what limits the rate on a small
machine.

The last line is ``RESULT proxy_overhead added_ttft_p50_ms_c1=<x> rps_ratio_vs_reference_c64=<y>``.
Exit status 1 if any request failed (the numbers are then not to be trusted), else 0.

    .venv/bin/python bench/proxy_overhead.py --quick     # < 3 min on 2 cores
    .venv/bin/python bench/proxy_overhead.py             # full: more rounds, longer runs
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import random
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import proxy_goals
from proxy_fakes import prefill_answer

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PROXY = ROOT / "scripts" / "disagg_proxy_server.py"
OUR_LISTENING = re.compile(r"proxy listening on http://127\.0\.0\.1:(\d+)")
OUR_LOOP = re.compile(r"event loop: (\S+)")
PATHS = ("direct-D", "ours", "floor", "floor+json", "reference")
PROXIES = ("ours", "floor", "floor+json", "reference", "baseline")
CLK_TCK = os.sysconf("SC_CLK_TCK")

QUICK = {"rounds": 3, "c1_requests": 80, "c64_requests": 192, "rate_seconds": 2.0, "rate_c1_seconds": 1.0, "warmup": 200}
FULL = {"rounds": 8, "c1_requests": 250, "c64_requests": 640, "rate_seconds": 5.0, "rate_c1_seconds": 2.0, "warmup": 500}


class Interrupted(Exception):
    """SIGTERM/SIGHUP reached the benchmark; unwinds through the cleanup like Ctrl-C."""


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    log: Path


class Children:
    """Every process the benchmark starts, each in its own process group; stop_all() ends them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], *, pipes: bool = False) -> Child:
        log = self.workdir / f"{name}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else err,
                stderr=err,
                text=True,
                start_new_session=True,
                cwd=ROOT,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        live = [c for c in self.children if c.proc.poll() is None]
        for child in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(0.1, deadline - time.monotonic()))
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)  # the group, even if its leader is gone
            if child.proc.poll() is None:
                child.proc.wait(5)
            for stream in (child.proc.stdin, child.proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def read_line(stream: IO[str], timeout: float, what: str) -> str:
    """One line from a child's stdout, or a clear error (no hang on a dead or stuck child)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise RuntimeError(f"{what}: no answer within {timeout:g} s")
    line = stream.readline()
    if not line:
        raise RuntimeError(f"{what}: process ended")
    return line


def listening_port(child: Child, timeout: float = 20) -> int:
    """The port a bench/proxy_* child printed (``LISTENING <port>``)."""
    assert child.proc.stdout is not None
    line = read_line(child.proc.stdout, timeout, f"{child.name} start-up (log {child.log})")
    match = re.match(r"LISTENING (\d+)", line)
    if not match:
        raise RuntimeError(f"{child.name}: unexpected first line {line!r}")
    # From here on its stdout (uvicorn's access log, for the reference) goes to its log file:
    # a pipe nobody reads fills up and blocks the process.
    threading.Thread(target=_copy_lines, args=(child.proc.stdout, child.log), daemon=True).start()
    return int(match.group(1))


def _copy_lines(stream: IO[str], path: Path) -> None:
    with contextlib.suppress(OSError, ValueError), open(path, "a") as out:
        for line in stream:
            out.write(line)


def wait_for_log(child: Child, pattern: re.Pattern[str], timeout: float = 20) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = pattern.search(child.log.read_text())
        if match:
            return match
        if child.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} did not start; log {child.log}:\n{child.log.read_text()[-2000:]}")


def wait_http_ok(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{url} not healthy within {timeout:g} s ({last})")


class LoadGen:
    """Talks to bench/proxy_loadgen.py: one JSON command line out, one JSON answer line back."""

    def __init__(self, child: Child) -> None:
        self.child = child

    def __call__(self, timeout: float = 300, **cmd: Any) -> dict[str, Any]:
        stdin, stdout = self.child.proc.stdin, self.child.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(cmd) + "\n")
        stdin.flush()
        return json.loads(read_line(stdout, timeout, "load generator"))


# --------------------------------------------------------------------------- workload


def prompt_ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1000, 30000) for _ in range(n)]


def stream_body(prompt: list[int], chunks: int, gap_ms: float) -> dict[str, Any]:
    """What `vllm bench serve` sends (token ids, ignore_eos, usage), plus the fake D's gap."""
    return {
        "model": "bench-model",
        "prompt": prompt,
        "max_tokens": chunks,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "bench_gap_ms": gap_ms,
    }


def prefill_body(body: dict[str, Any]) -> dict[str, Any]:
    """The request a proxy sends P for `body` (to measure the P round trip directly)."""
    p = {k: v for k, v in body.items() if k != "stream_options"}
    p.update(stream=False, max_tokens=1, kv_transfer_params={"do_remote_decode": True, "do_remote_prefill": False})
    return p


@dataclass
class Samples:
    ttft_c1: list[float] = field(default_factory=list)
    ttft_c64: list[float] = field(default_factory=list)
    ttft_b2b: list[float] = field(default_factory=list)  # c1, back to back (the c1 rate run)
    proxy_prefill_c1: list[float] = field(default_factory=list)  # the proxy's X-Proxy-Prefill-Ms
    round_p50_c1: list[float] = field(default_factory=list)
    rate_c64: list[tuple[int, float]] = field(default_factory=list)  # (completed, seconds)
    rate_c1: list[tuple[int, float]] = field(default_factory=list)
    cpu_c64: list[float] = field(default_factory=list)  # proxy CPU seconds per request during rate c64
    cpu_c64_stream: list[float] = field(default_factory=list)  # the same with --chunk-stream chunks per request
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def add_failures(self, answer: dict[str, Any]) -> None:
        self.failed += int(answer["failed"])
        self.errors.extend(answer["errors"][: max(0, 5 - len(self.errors))])


def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation (q in 0..100); NaN when empty."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def rate(runs: list[tuple[int, float]]) -> float:
    seconds = sum(s for _, s in runs)
    return sum(n for n, _ in runs) / seconds if seconds else float("nan")


# --------------------------------------------------------------------------- the run


def start_all(children: Children, args: argparse.Namespace) -> dict[str, Any]:
    py = sys.executable
    fake_p = children.start("fake-prefill", [py, str(BENCH / "proxy_fakes.py"), "--role", "prefill"], pipes=True)
    fake_d = children.start("fake-decode", [py, str(BENCH / "proxy_fakes.py"), "--role", "decode"], pipes=True)
    p_port, d_port = listening_port(fake_p), listening_port(fake_d)
    backends = ["--prefiller-hosts", "127.0.0.1", "--prefiller-ports", str(p_port)]
    backends += ["--decoder-hosts", "127.0.0.1", "--decoder-ports", str(d_port)]
    ours = children.start("ours", [py, str(args.proxy), "--host", "127.0.0.1", "--port", "0", *backends])
    ref = children.start("reference", [py, str(BENCH / "proxy_reference.py"), "--port", "0", *backends], pipes=True)
    floor = children.start("floor", [py, str(BENCH / "proxy_floor.py"), "--host", "127.0.0.1", "--port", "0", *backends])
    ours_port = int(wait_for_log(ours, OUR_LISTENING).group(1))
    floor_json = children.start("floor+json", [py, str(BENCH / "proxy_floor.py"), "--check-json", "--host", "127.0.0.1", "--port", "0", *backends])
    floor_port = int(wait_for_log(floor, OUR_LISTENING).group(1))
    floor_json_port = int(wait_for_log(floor_json, OUR_LISTENING).group(1))
    extra_urls, extra_pids = {}, {}
    if args.baseline_proxy:
        base = children.start("baseline", [py, str(args.baseline_proxy), "--host", "127.0.0.1", "--port", "0", *backends])
        base_port = int(wait_for_log(base, OUR_LISTENING).group(1))
        wait_http_ok(f"http://127.0.0.1:{base_port}/health")
        extra_urls["baseline"] = f"http://127.0.0.1:{base_port}/v1/completions"
        extra_pids["baseline"] = base.proc.pid
    ref_port = listening_port(ref)
    loop = OUR_LOOP.search(ours.log.read_text())
    for url in (f"http://127.0.0.1:{p_port}/health", f"http://127.0.0.1:{d_port}/health", f"http://127.0.0.1:{ours_port}/health"):
        wait_http_ok(url)
    wait_http_ok(f"http://127.0.0.1:{ref_port}/healthcheck")
    loadgen = children.start("loadgen", [py, str(BENCH / "proxy_loadgen.py")], pipes=True)
    return {
        "urls": {
            "direct-D": f"http://127.0.0.1:{d_port}/v1/completions",
            "direct-P": f"http://127.0.0.1:{p_port}/v1/completions",
            "ours": f"http://127.0.0.1:{ours_port}/v1/completions",
            "reference": f"http://127.0.0.1:{ref_port}/v1/completions",
            "floor": f"http://127.0.0.1:{floor_port}/v1/completions",
            "floor+json": f"http://127.0.0.1:{floor_json_port}/v1/completions",
            **extra_urls,
        },
        "pids": {
            "ours": ours.proc.pid,
            "reference": ref.proc.pid,
            "floor": floor.proc.pid,
            "floor+json": floor_json.proc.pid,
            "fake-P": fake_p.proc.pid,
            "fake-D": fake_d.proc.pid,
            "loadgen": loadgen.proc.pid,
            **extra_pids,
        },
        "loadgen": LoadGen(loadgen),
        "our_loop": loop.group(1) if loop else "?",
        "paths": PATHS + (("baseline",) if args.baseline_proxy else ()),
    }


def measure(env: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Samples], dict[str, list[float]]]:
    gen: LoadGen = env["loadgen"]
    urls: dict[str, str] = env["urls"]
    prompt = prompt_ids(args.prompt_tokens, args.seed)
    body_c1 = stream_body(prompt, args.c1_chunks, args.gap_ms)
    body_c64 = stream_body(prompt, args.c64_chunks, args.c64_gap_ms)
    body_rate = stream_body(prompt, 1, 0.0)
    body_chunks = stream_body(prompt, args.chunk_stream, args.chunk_gap_ms)
    body_p = prefill_body(body_c1)
    sse_end, json_end = "data: [DONE]", "}"
    paths: tuple[str, ...] = env["paths"]
    samples = {name: Samples() for name in (*paths, "direct-P")}
    cpu_by_proc: dict[str, list[float]] = {name: [] for name in env["pids"]}

    log(f"warm-up: {args.warmup} requests per path at concurrency 64")
    for name in paths:
        gen(op="ttft", url=urls[name], body=body_rate, tail=sse_end, concurrency=64, requests=args.warmup)
    gen(op="ttft", url=urls["direct-P"], body=body_p, tail=json_end, concurrency=64, requests=args.warmup)

    for rnd in range(args.rounds):
        order = list(paths[rnd % len(paths) :] + paths[: rnd % len(paths)])
        log(f"round {rnd + 1}/{args.rounds}: {' '.join(order)} (+ direct-P)")
        p = samples["direct-P"]
        answer = gen(op="ttft", url=urls["direct-P"], body=body_p, tail=json_end, concurrency=1, requests=args.c1_requests)
        p.ttft_b2b += answer["ttft"]
        p.add_failures(answer)
        for name in order:
            s = samples[name]
            answer = gen(op="ttft", url=urls[name], body=body_c1, tail=sse_end, concurrency=1, requests=args.c1_requests)
            s.ttft_c1 += answer["ttft"]
            s.proxy_prefill_c1 += answer["proxy_prefill"]
            s.round_p50_c1.append(pct(answer["ttft"], 50))
            s.add_failures(answer)
            answer = gen(op="ttft", url=urls[name], body=body_c64, tail=sse_end, concurrency=64, requests=args.c64_requests)
            s.ttft_c64 += answer["ttft"]
            s.add_failures(answer)
            before = {proc: cpu_seconds(pid) for proc, pid in env["pids"].items()}
            answer = gen(op="rate", url=urls[name], body=body_rate, tail=sse_end, concurrency=64, duration=args.rate_seconds)
            used = {proc: cpu_seconds(pid) - before[proc] for proc, pid in env["pids"].items()}
            s.rate_c64.append((answer["completed"], answer["elapsed"]))
            s.add_failures(answer)
            if name in PROXIES:
                s.cpu_c64.append(used[name] / max(1, answer["completed"]))
            if name == "ours":
                for proc, secs in used.items():
                    cpu_by_proc[proc].append(secs / answer["elapsed"])
            if name in PROXIES:
                before = {proc: cpu_seconds(pid) for proc, pid in env["pids"].items()}
                answer = gen(op="rate", url=urls[name], body=body_chunks, tail=sse_end, concurrency=64, duration=args.rate_seconds)
                s.cpu_c64_stream.append((cpu_seconds(env["pids"][name]) - before[name]) / max(1, answer["completed"]))
                s.add_failures(answer)
            answer = gen(op="rate", url=urls[name], body=body_rate, tail=sse_end, concurrency=1, duration=args.rate_c1_seconds)
            s.rate_c1.append((answer["completed"], answer["elapsed"]))
            s.ttft_b2b += answer["ttft"]
            s.add_failures(answer)
    return samples, cpu_by_proc


# --------------------------------------------------------------------------- report


def ms(x: float) -> str:
    return f"{x * 1000:.3f}"


def versions() -> str:
    found = []
    for dist in ("aiohttp", "uvloop", "fastapi", "starlette", "httpx", "httpcore", "uvicorn", "httptools"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{dist} -")
    return f"Python {sys.version.split()[0]}, " + ", ".join(found)


def report(
    samples: dict[str, Samples], cpu_by_proc: dict[str, list[float]], env: dict[str, Any], args: argparse.Namespace
) -> tuple[float, float, str]:
    d, ours, ref, p = samples["direct-D"], samples["ours"], samples["reference"], samples["direct-P"]
    lines = [
        "",
        f"proxy overhead, 127.0.0.1, {os.cpu_count()} cores, {args.rounds} rounds ({'quick' if args.quick else 'full'}); "
        f"prompt {args.prompt_tokens} token ids; ours on {env['our_loop']}",
        f"  {versions()}",
        f"  c1: streams of {args.c1_chunks} chunks {args.gap_ms:g} ms apart, {args.c1_requests} per path per round; "
        f"c1 back-to-back: 1-chunk streams with no pause (the c1 rate run)",
        f"  c64: streams of {args.c64_chunks} chunks {args.c64_gap_ms:g} ms apart, {args.c64_requests} per path per round; "
        f"rate: closed loop, 1-chunk streams, {args.rate_seconds:g} s at c64 and {args.rate_c1_seconds:g} s at c1 per round",
        "",
        "TTFT, ms (request sent to first body bytes received); + = minus direct-D at the same percentile",
    ]
    header = (
        f"{'path':<10} {'c1 p50':>7} {'c1 p99':>7} {'+p50':>7} {'+p99':>7} {'+p50 by round':>15} "
        f"{'b2b p50':>7} {'+p50':>7} {'c64 p50':>8} {'c64 p99':>8} {'+p50':>8} {'+p99':>8}"
    )
    lines += [header, "-" * len(header)]
    for name in (*env["paths"], "direct-P"):
        s = samples[name]
        proxy = name in PROXIES

        def cell(values: list[float], q: float, width: int) -> str:
            return f"{ms(pct(values, q)) if values else '':>{width}}"

        def added(mine: list[float], base: list[float], q: float, width: int, proxy: bool = proxy) -> str:
            return f"{ms(pct(mine, q) - pct(base, q)) if proxy and mine else '':>{width}}"

        by_round = ""
        if proxy:
            diffs = [a - b for a, b in zip(s.round_p50_c1, d.round_p50_c1)]
            by_round = f"{ms(min(diffs))}..{ms(max(diffs))}"
        lines.append(
            f"{name:<10} {cell(s.ttft_c1, 50, 7)} {cell(s.ttft_c1, 99, 7)} {added(s.ttft_c1, d.ttft_c1, 50, 7)} "
            f"{added(s.ttft_c1, d.ttft_c1, 99, 7)} {by_round:>15} {cell(s.ttft_b2b, 50, 7)} {added(s.ttft_b2b, d.ttft_b2b, 50, 7)} "
            f"{cell(s.ttft_c64, 50, 8)} {cell(s.ttft_c64, 99, 8)} {added(s.ttft_c64, d.ttft_c64, 50, 8)} {added(s.ttft_c64, d.ttft_c64, 99, 8)}"
        )
    lines += ["", "Request rate (closed loop, 1-chunk streams); CPU = the proxy process's CPU time per request at c64"]
    header = f"{'path':<10} {'rps c1':>8} {'rps c64':>8} {'vs ref':>7} {'CPU/req':>9} {'failed':>7}"
    lines += [header, "-" * len(header)]
    for name in env["paths"]:
        s = samples[name]
        cpu = f"{statistics.median(s.cpu_c64) * 1e6:.0f} us" if s.cpu_c64 else ""
        lines.append(
            f"{name:<10} {rate(s.rate_c1):>8.0f} {rate(s.rate_c64):>8.0f} {rate(s.rate_c64) / rate(ref.rate_c64):>7.2f} {cpu:>9} {s.failed:>7}"
        )
    added_p50 = pct(ours.ttft_c1, 50) - pct(d.ttft_c1, 50)
    added_b2b = pct(ours.ttft_b2b, 50) - pct(d.ttft_b2b, 50)
    ours_p = pct(ours.proxy_prefill_c1, 50)
    ratio = rate(ours.rate_c64) / rate(ref.rate_c64)
    shares = ", ".join(f"{proc} {statistics.median(v):.2f}" for proc, v in cpu_by_proc.items() if v)
    lines += [
        "",
        "Where the added c1 TTFT of ours goes (p50):",
        f"  P round trip as ours sees it (its X-Proxy-Prefill-Ms, c1): {ms(ours_p)} ms; "
        f"direct-P back to back from the load generator: {ms(pct(p.ttft_b2b, 50))} ms",
        f"  ours adds {ms(added_p50)} ms at c1 ({ms(added_b2b)} back to back): {ms(ours_p)} ms P round trip + "
        f"{ms(added_p50 - ours_p)} ms for the proxy itself (its work plus one more hop each way)",
        f"  reference adds {ms(pct(ref.ttft_c1, 50) - pct(d.ttft_c1, 50))} ms at c1 ({ms(pct(ref.ttft_b2b, 50) - pct(d.ttft_b2b, 50))} back to back)",
        f"CPU in use while ours ran at c64 (CPU s per s, median over rounds): {shares}",
    ]
    figures = {name: goal_figures(samples[name], d, args.chunk_stream) for name in ("ours", "floor", "floor+json")}
    json_us = proxy_goals.json_work_us(stream_body(prompt_ids(args.prompt_tokens, args.seed), 1, 0.0), prefill_answer())
    lines += [
        "",
        f"JSON work of ours per request, in-process (check the client's {args.prompt_tokens}-token body, splice P's and D's): "
        f"{json_us:.1f} us",
        *proxy_goals.table(figures),
    ]
    for name, s in samples.items():
        if s.failed:
            lines.append(f"FAILED requests on {name}: {s.failed}, e.g. {s.errors}")
    print("\n".join(lines), flush=True)
    return added_p50, ratio, proxy_goals.result_fields(figures) + f" json_us_per_request={json_us:.1f}"


def goal_figures(s: Samples, direct_d: Samples, chunks: int) -> dict[str, float]:
    """The figures item 6 sets goals for, for one proxy path (medians over rounds, pooled percentiles)."""
    per_request = statistics.median(s.cpu_c64)
    return {
        "cpu_us_per_request": per_request * 1e6,
        "cpu_us_per_chunk": (statistics.median(s.cpu_c64_stream) - per_request) / (chunks - 1) * 1e6,
        "added_ttft_p50_ms_c64": (pct(s.ttft_c64, 50) - pct(direct_d.ttft_c64, 50)) * 1000,
        "own_ms_c1": (pct(s.ttft_c1, 50) - pct(direct_d.ttft_c1, 50) - pct(s.proxy_prefill_c1, 50)) * 1000,
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter runs (< 3 minutes on 2 cores)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--c1-requests", type=int, help="streamed requests per path per round at concurrency 1")
    parser.add_argument("--c64-requests", type=int, help="streamed requests per path per round at concurrency 64")
    parser.add_argument("--rate-seconds", type=float, help="closed-loop rate run at c64, per path per round")
    parser.add_argument("--rate-c1-seconds", type=float, help="closed-loop rate run at c1, per path per round")
    parser.add_argument("--warmup", type=int, help="requests per path before the first round")
    parser.add_argument("--prompt-tokens", type=int, default=1024, help="token ids in each prompt (JSON the proxies must handle)")
    parser.add_argument("--c1-chunks", type=int, default=4)
    parser.add_argument("--gap-ms", type=float, default=5.0, help="gap between D's chunks at c1")
    parser.add_argument("--c64-chunks", type=int, default=16)
    parser.add_argument("--c64-gap-ms", type=float, default=20.0, help="gap between D's chunks at c64")
    parser.add_argument("--chunk-stream", type=int, default=32, help="chunks per stream in the c64 run that prices a relayed chunk")
    parser.add_argument("--chunk-gap-ms", type=float, default=5.0, help="gap between D's chunks in that run (each chunk its own read)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proxy", type=Path, default=PROXY, help="the proxy script measured as 'ours' (same CLI; default: %(default)s)")
    parser.add_argument(
        "--baseline-proxy",
        type=Path,
        help="another version of our proxy (same CLI), measured in the same rounds as path 'baseline' "
        "(e.g. git worktree add /tmp/old HEAD~3, then /tmp/old/scripts/disagg_proxy_server.py: the entry needs its proxy/ folder)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (path printed)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="proxy_overhead."))
    children = Children(workdir)
    started = time.monotonic()
    try:
        env = start_all(children, args)
        samples, cpu_by_proc = measure(env, args)
        added, ratio, goals = report(samples, cpu_by_proc, env, args)
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"interrupted ({str(exc) or 'SIGINT'}); stopping every process")
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        children.stop_all()
        if args.keep_logs:
            log(f"logs in {workdir}")
        else:
            for path in workdir.iterdir():
                path.unlink()
            workdir.rmdir()
    log(f"done in {time.monotonic() - started:.0f} s")
    print(f"RESULT proxy_overhead {goals} added_ttft_p50_ms_c1={added * 1000:.3f} rps_ratio_vs_reference_c64={ratio:.2f}", flush=True)
    return 1 if any(s.failed for s in samples.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
