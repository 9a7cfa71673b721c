#!/usr/bin/env python3
"""How faithfully do load-generating clients measure TTFT and ITL?  Ground truth from the stand-in.

What it does
------------
Starts ``scripts/vllm_sim.py`` on 127.0.0.1 (ephemeral port) with a FIXED timing
model (``PROFILE``: every prefill step 10 ms whatever the prompt, every decode
step 10 ms whatever the batch, ``time_scale`` 1, no prefix caching, no batch
cap below 1024), then, against that one server in the same run, at each
concurrency of ``--concurrency`` (default 1, 8, 64, 256), runs a closed loop of
streamed ``/v1/completions`` requests (ISL 128, OSL 16 with ``--quick``, 64
otherwise) with:

* ``rawsock``: ``fidelity_rawclient.py``, a naive raw-socket client (one
  ``selectors`` loop, no HTTP library, no JSON parsing, ``time.monotonic()``
  right before ``sendall`` and right after ``recv``).  It is a reference, not
  a floor: a better client can beat it (ours did at c=8, 64 and 256 in the
  runs of 2026-12-07).  Its absolute stamps also give the request
  leg (server arrival - send) and response leg (receipt - server write);
* ``ours``: ``scripts/benchmark_common.py`` (per-request ``ttft_ms`` and
  ``itl_ms`` under ``"requests"``; it sends ``X-Request-Id: <label>-<index>``);
* ``aiperf`` 0.13.0 and ``guidellm`` 0.8.1, installed by this bench from PyPI
  into their own venvs under ``bench/.venvs/`` (see ``fidelity_peers.py``;
  that folder must be git-ignored), run offline with a local tokenizer.

Each client gets ``warmup = concurrency`` requests first (so every connection is
open before measuring; excluded from the numbers), then N measured ones.  After
each run the bench reads the stand-in's ``GET /sim/trace?clear=1`` and compares
every measured request with what the server did.

Ground truth
------------
The stand-in records, per request, on CLOCK_MONOTONIC: ``arrival`` (the whole
request, headers and body, has been read: the earliest instant the server can
start on it) and the instant each token's bytes are handed to the kernel
(``transport.write``).  The server-side TTFT ``first_token - arrival`` is
exact, but a client can never observe it: its own TTFT also spans the loopback
path (kernel send/receive, aiohttp parsing up to the handler) in both
directions, which no client can avoid.  So

    truth TTFT  = (server first-token write - server arrival) + L

where ``L`` is a loopback constant calibrated at the start of the run with the
raw-socket client at concurrency 1 (keep-alive, TCP_NODELAY, HTTP/1.1 by hand;
``time.monotonic()`` just before ``sendall`` and just after the ``recv`` that
returns the first data event).  Client and server are on one machine and share
CLOCK_MONOTONIC, so the two legs are measured directly: request leg = server
arrival - client send, response leg = client receipt - server write; ``L`` is
the median of their sum over 60 requests (5 more are discarded as warmup).
This was preferred to comparing with each client's own send time because
none of the three clients under test exports a send instant on the server's
clock (ours: offsets from an unrecorded phase start; aiperf and guidellm: wall
clock, and a send stamp is itself one of the things being tested), while the
calibrated constant treats all of them the same way.  ``L`` is measured again
at the end; the change, and the load average at start and end, are printed
as a noise indicator (other work on the machine moves every number here).

Error of a request = client TTFT - truth TTFT (ms); the table gives p50 and p99
of its absolute value, and the signed median.  ITL: the server's per-token
write gaps are the truth; "gap" compares every inter-token gap the client
reports with the server's gap at the same position (ours and aiperf report
every gap; guidellm does not), "mean" compares the per-request mean ITL.

Matching requests
-----------------
* ours and aiperf send a unique ``X-Request-Id`` per request (aiperf's header is
  ``X-Request-ID`` and its ``profile_export.jsonl`` keeps it): exact match.
* guidellm sends no request id.  Its ``benchmarks.json`` keeps each request's
  prompt text, and the trace keeps ``prompt_sha1`` (sha1 of a text prompt):
  exact match by prompt; if a prompt were sent twice, the server record whose
  arrival (wall clock) is closest to guidellm's ``request_start_time`` is taken.

Other choices, stated so the numbers can be read correctly
-----------------------------------------------------------
* CPU pinning (default when the machine has 2+ CPUs, off with ``--no-pin``):
  the stand-in runs on CPU 0, every client and this bench on the others.
  Otherwise a busy server event loop would delay its own ``arrival`` stamp,
  and that server-side lag would be charged to the client.  Each client gets
  the same cores, so multi-process peers (aiperf's ZMQ services, guidellm's
  workers) share one core on a 2-CPU machine.
* The stand-in's prefill steps are serial (FCFS), so at high concurrency the
  server-side TTFT includes queueing; the truth is per request, so that is
  measured, not an error.
* The truth starts at the request's first byte.  A closed-loop client sends
  its next request right after the last token of the previous one, i.e. while
  the stand-in is still writing that decode step's tokens to every other
  stream; the request then waits for the stand-in's event loop, first to read
  its bytes and then to parse it and run the handler.  The stand-in stamps
  ``first_byte_mono`` when its protocol is handed the first bytes (before
  parsing and the handler), and the truth starts there, so the second wait is
  not charged to any client (printed as the stand-in's input lag).  The first
  wait cannot be stamped by the server: the naive ``rawsock`` client measures
  it, with its own send delays on top (its request leg above its c=1 value),
  and the goals print it at each concurrency as an upper bound for the error
  no client can avoid here.
  Column ``-rawsock`` is a client's signed median error minus the naive
  client's at the same concurrency (negative: the client does better).
* Column ``held c`` is the time-weighted mean number of the client's
  measured requests in flight at the stand-in: the concurrency it actually
  held.  A client that does not keep ``c`` requests in flight loads the
  server less (less queueing, less input lag), so a row that held less than
  95% of ``c`` is marked NOT COMPARABLE, and such a peer row counts neither
  in the goals nor in the RESULT line.
* Peers run with their own defaults: guidellm starts up to 10 worker
  processes (``--guidellm-workers N`` sets ``GUIDELLM__MAX_WORKER_PROCESSES``;
  with 1 it kept only about 10 of 64 requests in flight here), aiperf sizes
  its workers from the CPU count (1 here).  Their start-up (imports, worker
  spawn) costs 10-25 s per run on one core; it is outside the measurement.
* guidellm 0.8.1 lists its warmup requests among ``requests.successful`` too,
  and its own warmup cut moves with timing; the bench drops the first
  ``warmup`` requests it sent (by ``request_start_time``), as for the others.
* ``--quick`` (OSL 16, fewer requests) takes about 3 minutes on 2 cores once
  the peers are installed (about 4 when other work loads the machine; the
  peers' start-up is most of it); installing both takes 1-2 minutes more, once.

Output: a table, a few notes, and as the very last line::

    RESULT client_fidelity ttft_err_p50_ms c1=<x> c64=<y> c256=<w> peers_best_c1=<z> naive_lag_c64=<f> naive_lag_c256=<g>

with x, y, w = our client's p50 |TTFT error| at concurrency 1, 64 and 256, z the
smaller p50 of the two peers at concurrency 1 (``nan`` when neither ran), and
f, g the stand-in's lag the naive client saw at 64 and 256 (see above).
Every process the bench starts lives in its own process group and is stopped
at the end, also on Ctrl-C or SIGTERM.  Artifacts (logs, client outputs,
traces, summary.json) go to ``--out`` (default: a temporary folder removed at
the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fidelity_common import Procs, pct, tail, wait_until
from fidelity_peers import (
    PEERS,
    ClientSample,
    PeerStatus,
    aiperf_argv,
    build_tokenizer,
    guidellm_argv,
    offline_env,
    parse_aiperf,
    parse_guidellm,
    parse_ours,
    parse_rawsock,
    start_install,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIM = REPO / "scripts" / "vllm_sim.py"
OURS = REPO / "scripts" / "benchmark_common.py"
HOST = "127.0.0.1"
MODEL = "fake-model"
ISL = 128
PROFILE = {
    "startup_s": 0.0,
    "prefill_tokens_per_s": 1e9,  # prefill = the fixed 10 ms, whatever the prompt length
    "prefill_overhead_ms": 10.0,
    "decode_ms_per_step": 10.0,
    "decode_batch_slowdown": 0.0,
    "time_scale": 1.0,
}
RAW = HERE / "fidelity_rawclient.py"
CLIENTS = ("rawsock", "ours", "aiperf", "guidellm")
PEER_NAMES = ("aiperf", "guidellm")
MATCH = {"rawsock": "x-request-id", "ours": "x-request-id", "aiperf": "x-request-id", "guidellm": "prompt sha1"}
CALIBRATION_REQUESTS, CALIBRATION_WARMUP = 60, 5


@dataclass(frozen=True)
class Mode:
    osl: int
    requests: dict[int, int]
    timeout_s: float
    peer_concurrencies: tuple[int, ...] | None = None
    """Concurrencies at which the peers run (None: all). Their start-up (10-100 s a run) dominates --quick."""

    def n(self, c: int) -> int:
        return self.requests.get(c, max(4 * c, 32))


MODES = {
    "quick": Mode(osl=16, requests={1: 25, 8: 64, 64: 128, 256: 256}, timeout_s=180.0, peer_concurrencies=(1, 64)),
    "full": Mode(osl=64, requests={1: 200, 8: 400, 64: 1024, 256: 2048}, timeout_s=1800.0),
}


@dataclass
class RunStat:
    """One client at one concurrency, compared with the trace."""

    client: str
    concurrency: int
    status: str = "ok"  # ok | failed | unavailable
    reason: str = ""
    match: str = ""
    sent: int = 0
    failed: int = 0
    matched: int = 0
    unmatched: int = 0
    ambiguous: int = 0
    ttft_err_p50: float = math.nan
    ttft_err_p99: float = math.nan
    ttft_signed_p50: float = math.nan
    gap_err_p50: float = math.nan
    gap_err_p99: float = math.nan
    gap_len_mismatch: int = 0
    itl_mean_err_p50: float = math.nan
    itl_mean_err_p99: float = math.nan
    truth_ttft_p50: float = math.nan
    client_ttft_p50: float = math.nan
    server_concurrency: float = math.nan  # time-weighted mean in flight at the server (measured requests)
    wall_s: float = 0.0
    diagnostics: dict[str, float] = field(default_factory=dict)
    server_lag_p50: float = math.nan  # whole request read - first byte: the stand-in's own input lag, not charged
    server_lag_p99: float = math.nan


# --------------------------------------------------------------------------- stand-in


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_json(url: str, timeout_s: float = 60.0) -> Any:
    """GET a JSON document, never through a proxy (loopback only)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def start_sim(procs: Procs, out: Path, cpus: set[int] | None) -> tuple[str, Any]:
    port = free_port()
    argv = [sys.executable, str(SIM), "--profile-json", json.dumps(PROFILE), "--trace-max-requests", "200000"]
    argv += ["serve", MODEL, "--host", HOST, "--port", str(port), "--no-enable-prefix-caching", "--max-num-seqs", "1024"]
    argv += ["--max-model-len", "8192"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "DISAGG_SIM"))}
    proc = procs.start(argv, out / "sim.log", env=env, cpus=cpus)
    url = f"http://{HOST}:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"stand-in exited with {proc.returncode}: {tail(out / 'sim.log')}")
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(url + "/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    if not wait_until(healthy, 30.0):
        raise RuntimeError(f"stand-in not healthy after 30 s: {tail(out / 'sim.log')}")
    return url, proc


def fetch_trace(url: str, clear: bool = True) -> list[dict[str, Any]]:
    body = http_json(url + "/sim/trace" + ("?clear=1" if clear else ""))
    return list(body["requests"])


# --------------------------------------------------------------------------- calibration


def calibrate_loopback(url: str, procs: Procs, out: Path, cpus: set[int] | None) -> dict[str, float]:
    """Median request leg + response leg of the raw-socket client at concurrency 1 (ms), on the shared clock."""
    port = url.rsplit(":", 1)[1]
    out_file = out / "calibration.json"
    argv = [sys.executable, str(RAW), "--port", port, "--model", MODEL, "--concurrency", "1"]
    argv += ["--warmup", str(CALIBRATION_WARMUP), "--num", str(CALIBRATION_REQUESTS), "--prompt-tokens", str(ISL)]
    argv += ["--max-tokens", "2", "--label", "fidelity-cal", "--out", str(out_file)]
    fetch_trace(url)
    code = procs.run(argv, out / "calibration.log", timeout_s=120, cpus=cpus)
    trace = {r["request_id"]: r for r in fetch_trace(url)}
    if code != 0:
        raise RuntimeError(f"calibration client exited {code}: {tail(out / 'calibration.log')}")
    samples, _ = parse_rawsock(out_file)
    req_legs, resp_legs, totals = [], [], []
    for smp in samples:
        rec = trace.get(smp.key)
        if rec is None or rec["first_token_mono"] is None or smp.send_mono is None or smp.first_mono is None:
            continue
        req_leg = (start_of(rec) - smp.send_mono) * 1000
        resp_leg = (smp.first_mono - rec["first_token_mono"]) * 1000
        req_legs.append(req_leg)
        resp_legs.append(resp_leg)
        totals.append(req_leg + resp_leg)
    if len(totals) < CALIBRATION_REQUESTS // 2:
        raise RuntimeError(f"calibration matched only {len(totals)} requests")
    return {
        "L_ms": pct(totals, 50),
        "L_p90_ms": pct(totals, 90),
        "request_leg_p50_ms": pct(req_legs, 50),
        "response_leg_p50_ms": pct(resp_legs, 50),
        "n": float(len(totals)),
    }


# --------------------------------------------------------------------------- comparison


def start_of(rec: dict[str, Any]) -> float:
    """When the server began on a request: its first bytes' arrival where the stand-in stamps it
    (``first_byte_mono``), else the whole request read (``arrival_mono``, older stand-ins)."""
    return rec.get("first_byte_mono") or rec["arrival_mono"]


def compare(client: str, c: int, samples: list[ClientSample], failed: int, trace: list[dict[str, Any]], loopback_ms: float) -> RunStat:
    """Match client samples to server records and compute the error statistics."""
    stat = RunStat(client, c, match=MATCH[client], sent=len(samples) + failed, failed=failed)
    key_field = "prompt_sha1" if MATCH[client] == "prompt sha1" else "request_id"
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in trace:
        if rec.get("stream") and rec.get("status") == "ok" and rec.get("token_mono") and rec.get(key_field):
            by_key[rec[key_field]].append(rec)
    ttft_err, truths, client_ttfts, gap_err, mean_err = [], [], [], [], []
    pairs: list[tuple[ClientSample, dict[str, Any]]] = []
    for s in samples:
        cands = by_key.get(s.key)
        if not cands:
            stat.unmatched += 1
            continue
        if len(cands) > 1:
            stat.ambiguous += 1
            ref = s.start_wall
            idx = min(range(len(cands)), key=lambda i: abs(cands[i]["arrival_wall"] - ref)) if ref is not None else len(cands) - 1
            rec = cands.pop(idx)
        else:
            rec = cands.pop()
        pairs.append((s, rec))
        tokens = np.asarray(rec["token_mono"], dtype=float)
        server_ttft = (rec["first_token_mono"] - start_of(rec)) * 1000
        truth = server_ttft + loopback_ms
        truths.append(truth)
        client_ttfts.append(s.ttft_ms)
        ttft_err.append(s.ttft_ms - truth)
        gaps = np.diff(tokens) * 1000
        if s.gaps_ms is not None:
            if len(s.gaps_ms) == len(gaps):
                gap_err.extend(np.abs(np.asarray(s.gaps_ms) - gaps).tolist())
            else:
                stat.gap_len_mismatch += 1
        if s.itl_mean_ms is not None and len(tokens) > 1:
            mean_err.append(abs(s.itl_mean_ms - float(np.mean(gaps))))
    stat.matched = len(pairs)
    if pairs:
        first = min(r["arrival_mono"] for _, r in pairs)
        last = max(r["end_mono"] or r["arrival_mono"] for _, r in pairs)
        busy = sum((r["end_mono"] or r["arrival_mono"]) - r["arrival_mono"] for _, r in pairs)
        stat.server_concurrency = busy / (last - first) if last > first else math.nan
        lag = [(r["arrival_mono"] - start_of(r)) * 1000 for _, r in pairs]
        stat.server_lag_p50, stat.server_lag_p99 = pct(lag, 50), pct(lag, 99)
    abs_err = [abs(e) for e in ttft_err]
    stat.ttft_err_p50, stat.ttft_err_p99 = pct(abs_err, 50), pct(abs_err, 99)
    stat.ttft_signed_p50 = pct(ttft_err, 50)
    stat.gap_err_p50, stat.gap_err_p99 = pct(gap_err, 50), pct(gap_err, 99)
    stat.itl_mean_err_p50, stat.itl_mean_err_p99 = pct(mean_err, 50), pct(mean_err, 99)
    stat.truth_ttft_p50, stat.client_ttft_p50 = pct(truths, 50), pct(client_ttfts, 50)
    if client == "ours":
        stat.diagnostics = split_legs(pairs)
    elif client == "rawsock":
        req = [(start_of(r) - smp.send_mono) * 1000 for smp, r in pairs if smp.send_mono is not None]
        resp = [(smp.first_mono - r["first_token_mono"]) * 1000 for smp, r in pairs if smp.first_mono is not None]
        stat.diagnostics = {
            "request_leg_p50_ms": pct(req, 50),
            "request_leg_p99_ms": pct(req, 99),
            "response_leg_p50_ms": pct(resp, 50),
            "response_leg_p99_ms": pct(resp, 99),
        }
    return stat


def split_legs(pairs: list[tuple[ClientSample, dict[str, Any]]]) -> dict[str, float]:
    """Where our client's excess (client TTFT - server TTFT) lies: before or after the server.

    Our result file gives each dispatch time as an offset from an unrecorded
    phase start B (CLOCK_MONOTONIC).  ``arrival - offset = B + d`` with d the
    dispatch-to-arrival delay, so ``d - min(d)`` is known exactly per request:
    "request side" below is that spread above its minimum; "rest" is the
    remainder of the excess (response side plus the constant minimum of the
    request side).
    """
    rows = [(s, r) for s, r in pairs if s.start_offset_s is not None]
    if not rows:
        return {}
    base = min(start_of(r) - s.start_offset_s for s, r in rows)
    req_side, rest = [], []
    for s, r in rows:
        excess = s.ttft_ms - (r["first_token_mono"] - start_of(r)) * 1000
        side = (start_of(r) - s.start_offset_s - base) * 1000
        req_side.append(side)
        rest.append(excess - side)
    return {
        "request_side_above_min_p50_ms": pct(req_side, 50),
        "request_side_above_min_p99_ms": pct(req_side, 99),
        "rest_p50_ms": pct(rest, 50),
        "rest_p99_ms": pct(rest, 99),
    }


# --------------------------------------------------------------------------- running clients


def client_argv(client: str, peers: dict[str, PeerStatus], tok: Path | None, url: str, mode: Mode, c: int, n: int, out: Path) -> list[str]:
    if client == "rawsock":
        return [sys.executable, str(RAW), "--port", url.rsplit(":", 1)[1], "--model", MODEL, "--concurrency", str(c)] + [
            "--warmup",
            str(c),
            "--num",
            str(n),
            "--prompt-tokens",
            str(ISL),
            "--max-tokens",
            str(mode.osl),
            "--label",
            f"fid-raw-c{c}",
            "--out",
            str(out / "raw.json"),
        ]
    if client == "ours":
        return [
            sys.executable,
            str(OURS),
            "--base-url",
            url,
            "--model",
            MODEL,
            "--prompt-tokens",
            str(ISL),
            "--max-tokens",
            str(mode.osl),
            "--concurrency",
            str(c),
            "--warmup-requests",
            str(c),
            "--num-requests",
            str(n),
            "--result-file",
            str(out / "result.json"),
            "--label",
            f"fid-ours-c{c}",
        ]
    assert tok is not None
    build = aiperf_argv if client == "aiperf" else guidellm_argv
    return build(peers[client], tok, url, MODEL, ISL, mode.osl, c, n, c, out)


def run_client(
    client: str,
    c: int,
    mode: Mode,
    url: str,
    procs: Procs,
    out_root: Path,
    peers: dict[str, PeerStatus],
    tok: Path | None,
    cpus: set[int] | None,
    loopback_ms: float,
    guidellm_workers: int = 0,
) -> RunStat:
    n = mode.n(c)
    out = out_root / f"{client}-c{c}"
    out.mkdir(parents=True, exist_ok=True)
    argv = client_argv(client, peers, tok, url, mode, c, n, out)
    env = offline_env(tok / "hf-cache" if tok is not None else None)
    if client == "guidellm" and guidellm_workers > 0:
        env["GUIDELLM__MAX_WORKER_PROCESSES"] = str(guidellm_workers)
    fetch_trace(url)  # start from an empty trace
    t0 = time.monotonic()
    code = procs.run(argv, out / "client.log", timeout_s=mode.timeout_s, env=env, cpus=cpus, cwd=out)
    wall = time.monotonic() - t0
    trace = fetch_trace(url)
    (out / "trace.json").write_text(json.dumps(trace))
    if code != 0:
        why = f"timed out after {mode.timeout_s:.0f} s" if code is None else f"exited {code}"
        return RunStat(client, c, status="failed", reason=f"{why}: {tail(out / 'client.log', 3)}", wall_s=wall)
    try:
        if client == "rawsock":
            samples, failed = parse_rawsock(out / "raw.json")
        elif client == "ours":
            samples, failed = parse_ours(out / "result.json")
        elif client == "aiperf":
            samples, failed = parse_aiperf(out)
        else:
            samples, failed = parse_guidellm(out, warmup=c)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return RunStat(client, c, status="failed", reason=f"cannot parse its output: {exc!r}", wall_s=wall)
    stat = compare(client, c, samples, failed, trace, loopback_ms)
    stat.wall_s = wall
    if stat.matched == 0:
        stat.status, stat.reason = "failed", f"no request matched the trace ({len(samples)} reported)"
    return stat


# --------------------------------------------------------------------------- report


def fmt(x: float, nd: int = 2) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:.{nd}f}"


HELD_SHARE = 0.95
"""A row that held less than this share of the requested concurrency loaded the server less: not comparable."""


def comparable(s: RunStat) -> bool:
    return not math.isnan(s.server_concurrency) and s.server_concurrency >= HELD_SHARE * s.concurrency


def table(stats: list[RunStat]) -> str:
    naive = {s.concurrency: s.ttft_signed_p50 for s in stats if s.client == "rawsock" and s.status == "ok"}
    head = (
        f"{'client':<9}{'c':>4}  {'match':<13}{'ok/sent':>10}  {'TTFT|err| p50':>13}{'p99':>9}{'signed p50':>11}{'-rawsock':>9}"
        f"  {'ITL gap|err| p50':>16}{'p99':>8}  {'ITL mean|err| p50':>17}{'p99':>8}  {'truth TTFT p50':>14}{'client p50':>11}{'held c':>8}"
        f"{'wall s':>8}  comparable"
    )
    lines = [head, "-" * len(head)]
    for s in stats:
        if s.status != "ok":
            lines.append(f"{s.client:<9}{s.concurrency:>4}  {s.status.upper()}: {s.reason}")
            continue
        gap = (fmt(s.gap_err_p50, 3), fmt(s.gap_err_p99, 3)) if not math.isnan(s.gap_err_p50) else ("n/a", "n/a")
        over = fmt(s.ttft_signed_p50 - naive.get(s.concurrency, math.nan), 3) if s.client != "rawsock" else "-"
        verdict = "yes" if comparable(s) else f"NOT COMPARABLE (held {fmt(s.server_concurrency, 1)} of {s.concurrency})"
        lines.append(
            f"{s.client:<9}{s.concurrency:>4}  {s.match:<13}{f'{s.matched}/{s.sent}':>10}  {fmt(s.ttft_err_p50, 3):>13}"
            f"{fmt(s.ttft_err_p99):>9}{fmt(s.ttft_signed_p50, 3):>11}{over:>9}  {gap[0]:>16}{gap[1]:>8}  {fmt(s.itl_mean_err_p50, 3):>17}"
            f"{fmt(s.itl_mean_err_p99, 3):>8}  {fmt(s.truth_ttft_p50):>14}{fmt(s.client_ttft_p50):>11}{fmt(s.server_concurrency, 1):>8}{s.wall_s:>8.1f}"
            f"  {verdict}"
        )
    return "\n".join(lines)


def lookup(stats: list[RunStat], client: str, c: int) -> RunStat | None:
    return next((s for s in stats if s.client == client and s.concurrency == c and s.status == "ok"), None)


def result_line(stats: list[RunStat], cal: dict[str, float]) -> str:
    ours1, ours64, ours256 = lookup(stats, "ours", 1), lookup(stats, "ours", 64), lookup(stats, "ours", 256)
    peers1 = [s.ttft_err_p50 for s in stats if s.client in PEER_NAMES and s.concurrency == 1 and s.status == "ok" and comparable(s)]
    best = min(peers1) if peers1 else math.nan

    def v(s: RunStat | None) -> str:
        return fmt(s.ttft_err_p50 if s is not None else math.nan, 3)

    floors = f"naive_lag_c64={fmt(naive_lag_ms(stats, 64, cal), 3)} naive_lag_c256={fmt(naive_lag_ms(stats, 256, cal), 3)}"
    return f"RESULT client_fidelity ttft_err_p50_ms c1={v(ours1)} c64={v(ours64)} c256={v(ours256)} peers_best_c1={fmt(best, 3)} {floors}"


GOALS = ((1, 0.5), (64, 2.0), (256, 10.0))
"""(concurrency, our p50 |TTFT error| limit in ms): issue 14, item 5."""


def naive_lag_ms(stats: list[RunStat], c: int, cal: dict[str, float]) -> float:
    """The naive client's request leg (send -> the stand-in's first-byte stamp) above its value
    at c=1: the wait for the stand-in's event loop to read a request, which no client can avoid,
    plus the naive client's own send delays. An upper bound for the stand-in's floor at c (a
    client that spreads its sends better, as ours does, sees less of it)."""
    raw = lookup(stats, "rawsock", c)
    if raw is None or not raw.diagnostics:
        return math.nan
    return max(0.0, raw.diagnostics["request_leg_p50_ms"] - cal["request_leg_p50_ms"])


def goals(stats: list[RunStat], cal: dict[str, float]) -> list[str]:
    out = []
    for c, limit in GOALS:
        s = lookup(stats, "ours", c)
        if s is None:
            out.append(f"goal ours c={c} TTFT |err| p50 <= {limit} ms: NOT MEASURED")
            continue
        lag = naive_lag_ms(stats, c, cal)
        verdict = "met" if s.ttft_err_p50 <= limit else "MISSED"
        out.append(
            f"goal ours c={c} TTFT |err| p50 <= {limit} ms: {verdict} ({fmt(s.ttft_err_p50, 3)} ms; "
            f"stand-in lag seen by the naive client {fmt(lag, 3)} ms, an upper bound for the floor)"
        )
    for c in sorted({s.concurrency for s in stats}):
        ours = lookup(stats, "ours", c)
        peers = [s for s in stats if s.client in PEER_NAMES and s.concurrency == c and s.status == "ok" and comparable(s)]
        if ours is None or not peers:
            continue
        beaten = [p.client for p in peers if p.ttft_err_p50 <= ours.ttft_err_p50]
        verdict = "met" if not beaten else f"MISSED (not lower than {', '.join(beaten)})"
        out.append(f"goal ours c={c} lower TTFT |err| p50 than every comparable peer: {verdict}")
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="fewer requests, OSL 16, peers at c=1 and c=64 only (under 3 min on 2 cores once the peers are installed)")
    p.add_argument("--concurrency", default="1,8,64,256", help="comma-separated concurrencies (default: %(default)s)")
    p.add_argument("--clients", default=",".join(CLIENTS), help="subset of ours,aiperf,guidellm (default: all)")
    p.add_argument("--out", type=Path, default=None, help="keep artifacts here (default: temporary, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary artifact folder")
    p.add_argument("--no-pin", action="store_true", help="do not pin the stand-in and the clients to separate CPUs")
    p.add_argument("--reinstall-peers", action="store_true", help="rebuild the peer venvs under bench/.venvs/")
    p.add_argument(
        "--guidellm-workers",
        type=int,
        default=0,
        help="guidellm worker processes (GUIDELLM__MAX_WORKER_PROCESSES; default: guidellm's own, 10)",
    )
    a = p.parse_args(argv)
    a.concurrencies = [int(x) for x in a.concurrency.split(",") if x.strip()]
    a.client_list = [x.strip() for x in a.clients.split(",") if x.strip()]
    bad = [x for x in a.client_list if x not in CLIENTS]
    if bad or not a.client_list or any(c < 1 for c in a.concurrencies):
        p.error(f"bad --clients {bad} or --concurrency")
    return a


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Explicit handlers: a shell starts background jobs with SIGINT ignored, and
    # Python would then never raise KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    out = args.out or Path(tempfile.mkdtemp(prefix="client-fidelity-"))
    out.mkdir(parents=True, exist_ok=True)
    procs = Procs()
    try:
        return run(args, out, procs)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process this bench started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.out is None and not args.keep:
            shutil.rmtree(out, ignore_errors=True)


def run(args: argparse.Namespace, out: Path, procs: Procs) -> int:
    t_start = time.monotonic()
    load_before = os.getloadavg()[0]  # before the peers' install adds its own load
    mode = MODES["quick" if args.quick else "full"]
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    server_cpus = {cpus[0]} if pin else None
    client_cpus = set(cpus[1:]) if pin else None
    guidellm_workers = args.guidellm_workers or 0

    # Peers: install (in parallel, on every CPU) or reuse, then the local tokenizer.
    peers: dict[str, PeerStatus] = {}
    pending = []
    for name in (x for x in args.client_list if x in PEER_NAMES):
        status, finish = start_install(PEERS[name], procs, args.reinstall_peers)
        peers[name] = status
        if finish is not None:
            print(f"installing {name} into {status.venv} (log: {status.venv}-install.log) ...", flush=True)
            pending.append(finish)
    for finish in pending:
        finish()
    tok, tok_note = (None, "")
    if any(p.available for p in peers.values()):
        tok, tok_note = build_tokenizer(peers, procs)
        if tok is None:
            for p in peers.values():
                if p.available:
                    p.available, p.reason = False, tok_note
    install_s = time.monotonic() - t_start

    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # the calibration client runs where the clients run
    url, _ = start_sim(procs, out, server_cpus)
    load_start = os.getloadavg()[0]
    cal = calibrate_loopback(url, procs, out, client_cpus)
    loopback = cal["L_ms"]

    print(f"stand-in {url}: profile {json.dumps(PROFILE)}; ISL {ISL}, OSL {mode.osl}, mode {'quick' if args.quick else 'full'}")
    pin_text = f"stand-in on CPU {sorted(server_cpus)}, clients on CPUs {sorted(client_cpus)}" if pin else "no CPU pinning"
    print(f"{pin_text}; warmup = concurrency requests per client (excluded)")
    print(f"guidellm worker processes: {guidellm_workers or 'its default (10)'}; aiperf workers: its default")
    print(
        f"loopback constant L = {loopback:.3f} ms (raw-socket client, n={int(cal['n'])}: request leg p50 "
        f"{cal['request_leg_p50_ms']:.3f} ms + response leg p50 {cal['response_leg_p50_ms']:.3f} ms; sum p90 {cal['L_p90_ms']:.3f} ms)"
    )
    for name, p in peers.items():
        state = "reused" if p.reused else (f"installed in {p.install_s:.0f} s" if p.available else "UNAVAILABLE")
        print(f"peer {name} {p.spec.version}: {state}{'' if p.available else ': ' + p.reason}")
    if tok is not None:
        print(f"tokenizer for peers: {tok / 'tok-bpe'} (trained on {tok_note})")
    print(flush=True)

    stats: list[RunStat] = []
    for c in args.concurrencies:
        for client in args.client_list:
            if client in PEER_NAMES and not peers[client].available:
                stats.append(RunStat(client, c, status="unavailable", reason=peers[client].reason))
                continue
            if client in PEER_NAMES and mode.peer_concurrencies is not None and c not in mode.peer_concurrencies:
                stats.append(RunStat(client, c, status="skipped", reason="--quick runs the peers at c=1 and c=64 only"))
                continue
            stat = run_client(client, c, mode, url, procs, out, peers, tok, client_cpus, loopback, guidellm_workers)
            stats.append(stat)
            print(
                f"  {client:<9} c={c:<4} {stat.status:<7} TTFT |err| p50 {fmt(stat.ttft_err_p50, 3)} ms "
                f"p99 {fmt(stat.ttft_err_p99)} ms ({stat.matched} matched, {stat.wall_s:.1f} s){' ' + stat.reason if stat.reason else ''}",
                flush=True,
            )

    cal_end = calibrate_loopback(url, procs, out, client_cpus)
    print()
    print(
        f"noise: load average {load_before:.2f} before the peers' install, {load_start:.2f} when the runs started, "
        f"{os.getloadavg()[0]:.2f} at the end; "
        f"L re-measured at the end {cal_end['L_ms']:.3f} ms (start {loopback:.3f} ms)"
    )
    print("Error = client value - truth (ms); truth TTFT = server (first-token write - arrival) + L; ITL truth = server write gaps.")
    print("held c = mean requests in flight at the stand-in while the measured requests ran; below 95% of c the row is not comparable.")
    print(f"-rawsock = signed p50 error minus the naive raw-socket client's at the same c (a reference, not a floor). {pin_text}.")
    print(table(stats))
    print()
    for s in stats:
        if s.status == "ok" and (s.unmatched or s.ambiguous or s.gap_len_mismatch or s.failed):
            print(
                f"note: {s.client} c={s.concurrency}: {s.failed} failed, {s.unmatched} unmatched, {s.ambiguous} ambiguous, "
                f"{s.gap_len_mismatch} with a different number of gaps than the server wrote"
            )
    for s in stats:
        if s.client == "rawsock" and s.diagnostics:
            d = s.diagnostics
            print(
                f"rawsock c={s.concurrency}: request leg (server arrival - send) p50/p99 {fmt(d['request_leg_p50_ms'], 3)}/"
                f"{fmt(d['request_leg_p99_ms'])} ms, response leg (receipt - server write) p50/p99 "
                f"{fmt(d['response_leg_p50_ms'], 3)}/{fmt(d['response_leg_p99_ms'])} ms"
            )
    for s in stats:
        if s.client == "ours" and s.diagnostics:
            d = s.diagnostics
            print(
                f"ours c={s.concurrency}: excess over server TTFT, request side above its minimum p50/p99 "
                f"{fmt(d['request_side_above_min_p50_ms'], 3)}/{fmt(d['request_side_above_min_p99_ms'])} ms, "
                f"rest p50/p99 {fmt(d['rest_p50_ms'], 3)}/{fmt(d['rest_p99_ms'])} ms"
            )
    for s in stats:
        if s.status == "ok" and s.client in ("ours", "rawsock") and s.concurrency > 1:
            print(
                f"stand-in input lag, {s.client} c={s.concurrency} (whole request read - first byte; not charged to the client): "
                f"p50/p99 {fmt(s.server_lag_p50, 3)}/{fmt(s.server_lag_p99)} ms"
            )
    for line in goals(stats, cal):
        print(line)
    total = time.monotonic() - t_start
    print(f"bench wall time {total:.0f} s (peer install/check and tokenizer {install_s:.0f} s); artifacts: {out}")
    summary = {
        "profile": PROFILE,
        "isl": ISL,
        "osl": mode.osl,
        "quick": bool(args.quick),
        "pinned": pin,
        "pinning": pin_text,
        "load_average": {"before_install": load_before, "runs_start": load_start},
        "calibration": cal,
        "calibration_end": cal_end,
        "peers": {k: {"available": v.available, "reason": v.reason, "version": v.spec.version} for k, v in peers.items()},
        "runs": [asdict(s) for s in stats],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(result_line(stats, cal), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
