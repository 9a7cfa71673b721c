"""The timing model behind the estimate: what one trial of a pattern costs, component by component.

Why a model of its own: the stand-in (scripts/vllm_sim.py) is node-side code and is never
imported here, but its timing model is documented and small, so this module replays it as a
discrete-event simulation: one engine (unified) or two (producer, consumer) that schedule
prefill steps first-come first-served and batch decode steps exactly as the stand-in does,
KV transfers queued FIFO on one link, and a client that sends warm-up and measured requests
in the benchmark's load shapes (closed loop, offline, open loop with evenly spaced arrivals).
Anything outside the engine (HTTP, the proxy hop, the client) is one per-request delay
`request_s`, which calibration fits from finished results.

For real vLLM the same simulation runs on a roofline *prior* (GPU TFLOPS and memory
bandwidth per instance type, model size from the name or a table): rough, labelled as such,
and scaled by calibration once results of that engine, executor and instance type exist.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from disagglab.plan.config import sim_profile
from disagglab.plan.model import DISAGGREGATED

MAX_NUM_SEQS = 256  # vLLM's default --max-num-seqs; the templates do not set it
PARAMS_IN_NAME = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)[Bb](?![A-Za-z0-9])")


@dataclass(frozen=True)
class Timing:
    """Engine timings in wall-clock seconds (the stand-in's time_scale already applied)."""

    startup_s: float
    prefill_tokens_per_s: float
    prefill_overhead_s: float
    decode_step_s: float
    decode_batch_slowdown: float
    kv_bytes_per_token: float
    bandwidth_gbps: dict[str, float]
    transfer_overhead_s: dict[str, float]
    source: str
    """Where the numbers come from: the stand-in's profile, or the vLLM roofline prior."""

    def prefill(self, tokens: int) -> float:
        return self.prefill_overhead_s + tokens / self.prefill_tokens_per_s

    def decode(self, running: int) -> float:
        return self.decode_step_s * (1.0 + self.decode_batch_slowdown * max(running - 1, 0))

    def scaled(self, k: float) -> Timing:
        """Every engine duration times k (calibration of a prior that is too fast or too slow)."""
        if k == 1.0:
            return self
        return Timing(self.startup_s * k, self.prefill_tokens_per_s / k, self.prefill_overhead_s * k, self.decode_step_s * k,
                      self.decode_batch_slowdown, self.kv_bytes_per_token, {b: g / k for b, g in self.bandwidth_gbps.items()},
                      {b: s * k for b, s in self.transfer_overhead_s.items()}, self.source)


def sim_timing(profile: dict[str, Any]) -> Timing:
    """The stand-in's own timing (a --profile-json dict: missing keys take the stand-in's defaults)."""
    ts = float(profile.get("time_scale", 1.0))
    bw = {"tcp": 10.0, "efa": 100.0, **profile.get("bandwidth_gbps", {})}
    ov = {"tcp": 2.0, "efa": 0.3, **profile.get("transfer_overhead_ms", {})}
    return Timing(
        startup_s=float(profile.get("startup_s", 3.0)) * ts,
        prefill_tokens_per_s=float(profile.get("prefill_tokens_per_s", 8000.0)) / ts,
        prefill_overhead_s=float(profile.get("prefill_overhead_ms", 15.0)) / 1000.0 * ts,
        decode_step_s=float(profile.get("decode_ms_per_step", 25.0)) / 1000.0 * ts,
        decode_batch_slowdown=float(profile.get("decode_batch_slowdown", 0.04)),
        kv_bytes_per_token=float(profile.get("kv_bytes_per_token", 57344)),
        bandwidth_gbps={k: float(v) / ts for k, v in bw.items()},
        transfer_overhead_s={k: float(v) / 1000.0 * ts for k, v in ov.items()},
        source=f"stand-in profile (time_scale {ts:g})",
    )


def model_params_b(model: str, prior: dict[str, Any]) -> float | None:
    """Billions of parameters: the prior's table first, else a "-14B-" in the name."""
    table = prior.get("model_params_b", {})
    if model in table:
        return float(table[model])
    m = PARAMS_IN_NAME.search(model.rsplit("/", 1)[-1])
    return float(m.group(1)) if m else None


def vllm_timing(cfg: dict[str, Any], infra: dict[str, Any]) -> Timing:
    """Roofline prior for real vLLM on the plan's instance type (rough; calibration corrects it).

    prefill tokens/s = efficiency x TFLOPS x tp / (2 x parameters); one decode step reads all
    weights once: weight bytes / (efficiency x memory bandwidth x tp); start-up = a fixed part
    plus weight loading. KV bytes per token and link rates come from the model's stand-in
    profile (they describe the model and the fabric, not the engine).
    """
    base = sim_timing({**sim_profile(cfg, infra["model"]), "time_scale": 1.0})
    prior = cfg.get("estimate", {}).get("vllm_prior", {})
    gpu = prior.get("gpus", {}).get(infra["instance_type"])
    params_b = model_params_b(infra["model"], prior)
    if not gpu or params_b is None:
        missing = f"instance type {infra['instance_type']} not in estimate.vllm_prior.gpus" if not gpu else \
            f"model size of {infra['model']} unknown (add it to estimate.vllm_prior.model_params_b)"
        return Timing(**{**base.__dict__, "source": f"stand-in profile of {infra['model']} as vLLM prior ({missing})"})
    tp = int(infra.get("tp_size", 1))
    eff = prior.get("efficiency", {"prefill": 0.5, "decode": 0.6})
    weight_bytes = params_b * 1e9 * float(prior.get("bytes_per_param", 2))
    prefill_tps = eff["prefill"] * gpu["tflops"] * 1e12 * tp / (2 * params_b * 1e9)
    decode_s = weight_bytes / (eff["decode"] * gpu["mem_gbps"] * 1e9 * tp)
    startup = float(prior.get("startup_base_s", 60.0)) + weight_bytes / 1e9 / float(prior.get("load_gb_per_s", 1.0))
    return Timing(startup, prefill_tps, base.prefill_overhead_s, decode_s, base.decode_batch_slowdown, base.kv_bytes_per_token,
                  base.bandwidth_gbps, base.transfer_overhead_s,
                  f"vLLM roofline prior: {gpu.get('gpu', infra['instance_type'])}, {params_b:g}B parameters, TP {tp}")


# ---------------------------------------------------------------------------- the simulation
@dataclass
class _Req:
    prompt: int
    max_tokens: int
    needs_prefill: bool = True
    generated: int = 0
    on_done: Callable[[float], None] = field(default=lambda t: None)


class _Sim:
    """A tiny event loop: (time, seq, callback) on a heap."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Callable[[float], None]]] = []
        self.seq = itertools.count()
        self.now = 0.0

    def at(self, t: float, fn: Callable[[float], None]) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), fn))

    def run(self) -> float:
        while self.heap:
            t, _, fn = heapq.heappop(self.heap)
            self.now = t
            fn(t)
        return self.now


class _Engine:
    """The stand-in's scheduler loop: prefill first (FCFS, one at a time), else one decode step."""

    def __init__(self, sim: _Sim, timing: Timing):
        self.sim, self.t = sim, timing
        self.waiting: deque[_Req] = deque()
        self.running: list[_Req] = []
        self.busy = False

    def submit(self, req: _Req, t: float) -> None:
        self.waiting.append(req)
        if not self.busy:
            self._iterate(t)

    def _iterate(self, t: float) -> None:
        while self.waiting and not self.waiting[0].needs_prefill and len(self.running) < MAX_NUM_SEQS:
            self.running.append(self.waiting.popleft())
        if self.waiting and len(self.running) < MAX_NUM_SEQS:
            req = self.waiting.popleft()
            self.busy = True
            self.sim.at(t + self.t.prefill(req.prompt), lambda end: self._prefilled(req, end))
        elif self.running:
            self.busy = True
            self.sim.at(t + self.t.decode(len(self.running)), self._decoded)
        else:
            self.busy = False

    def _prefilled(self, req: _Req, end: float) -> None:
        req.generated = 1
        if req.max_tokens <= 1:
            req.on_done(end)
        else:
            self.running.append(req)
        self._iterate(end)

    def _decoded(self, end: float) -> None:
        still = []
        for req in self.running:
            req.generated += 1
            if req.generated >= req.max_tokens:
                req.on_done(end)
            else:
                still.append(req)
        self.running = still
        self._iterate(end)


def simulate_load(timing: Timing, backend: str, prompt_tokens: int, max_tokens: int, count: int, shape: str,
                  concurrency: int, request_rate: float | None, request_s: float) -> float:
    """Seconds from the first dispatch to the last response for `count` requests.

    shape: "closed" (`concurrency` workers), "offline" (all at once) or "open" (evenly spaced
    at `request_rate`, at most `concurrency` in flight; 0 = no cap). `request_s` is the time
    a request spends outside the engine(s), added before it reaches the first engine.
    """
    if count <= 0:
        return 0.0
    sim = _Sim()
    first = _Engine(sim, timing)
    decode = _Engine(sim, timing) if backend in DISAGGREGATED else None
    link_free = [0.0]
    pending = deque(range(count))
    in_flight = [0]

    def dispatch(t: float) -> None:
        pending.popleft()
        in_flight[0] += 1
        sim.at(t + request_s, arrive)

    def arrive(t: float) -> None:
        if decode is None:
            first.submit(_Req(prompt_tokens, max_tokens, on_done=finished), t)
        else:
            first.submit(_Req(prompt_tokens, 1, on_done=transfer), t)

    def transfer(t: float) -> None:
        assert decode is not None
        wire = prompt_tokens * timing.kv_bytes_per_token * 8 / (timing.bandwidth_gbps[backend] * 1e9)
        start = max(t + timing.transfer_overhead_s[backend], link_free[0])
        link_free[0] = start + wire
        sim.at(start + wire, lambda t2: decode.submit(_Req(prompt_tokens, max_tokens, needs_prefill=False, on_done=finished), t2))

    waiting_due: deque[int] = deque()
    """Open loop: requests that fell due while `concurrency` were in flight, in order."""

    def finished(t: float) -> None:
        in_flight[0] -= 1
        if shape == "closed" and pending:
            dispatch(t)
        elif shape == "open" and waiting_due:
            waiting_due.popleft()
            dispatch(t)

    if shape == "offline":
        for _ in range(count):
            dispatch(0.0)
    elif shape == "closed":
        for _ in range(min(max(concurrency, 1), count)):
            dispatch(0.0)
    else:
        rate = float(request_rate or 1.0)

        def due(t: float) -> None:
            if concurrency > 0 and in_flight[0] >= concurrency:
                waiting_due.append(1)
            else:
                dispatch(t)

        for i in range(count):
            sim.at((i + 1) / rate, due)
    return sim.run()


def load_shape(spec: dict[str, Any]) -> str:
    if spec.get("measurement_type") == "offline":
        return "offline"
    return "open" if spec.get("request_rate") else "closed"


def bench_engine_s(timing: Timing, spec: dict[str, Any], request_s: float) -> tuple[float, float]:
    """(warm-up, measurement) seconds: warm-up is a closed loop at the concurrency (1 when 0)."""
    backend, prompt, mt = spec["backend"], int(spec["prompt_tokens"]), int(spec["max_tokens"])
    conc = int(spec["concurrency"])
    warm = simulate_load(timing, backend, prompt, mt, int(spec["warmup_iterations"]), "closed", max(1, conc), None, request_s)
    meas = simulate_load(timing, backend, prompt, mt, int(spec["measurement_iterations"]), load_shape(spec), conc,
                         spec.get("request_rate"), request_s)
    return warm, meas


def fit_request_s(points: list[tuple[float, float, float]], prior: float) -> tuple[float, float, int]:
    """Least-squares (k, request_s) from (engine-only model, sensitivity to request_s, actual).

    actual ~ k * E + request_s * R. k is the engine's speed correction (1 for the stand-in,
    which is the model); with k fixed at 1 this is the one-parameter fit used for it.
    Points with no sensitivity (engine bound) say nothing about request_s and are skipped.
    Returns (k, request_s, points used).
    """
    used = [(e, r, a) for e, r, a in points if r > 1e-9]
    if not used:
        return 1.0, prior, 0
    num = sum(r * (a - e) for e, r, a in used)
    den = sum(r * r for e, r, a in used)
    return 1.0, max(0.0, num / den), len(used)


def fit_scale_and_request_s(points: list[tuple[float, float, float]], prior: float) -> tuple[float, float, int]:
    """Both k and request_s (real vLLM: the engine prior itself is uncertain).

    Falls back to k alone (request_s at its prior) when the points cannot tell them apart.
    """
    n = len(points)
    if n == 0:
        return 1.0, prior, 0
    see = sum(e * e for e, r, a in points)
    srr = sum(r * r for e, r, a in points)
    ser = sum(e * r for e, r, a in points)
    sea = sum(e * a for e, r, a in points)
    sra = sum(r * a for e, r, a in points)
    det = see * srr - ser * ser
    if n >= 2 and det > 1e-9 * max(see * srr, 1e-12):
        k = (sea * srr - sra * ser) / det
        d = (see * sra - ser * sea) / det
        if k > 0 and d >= 0:
            return k, d, n
    k = sum((a - prior * r) * e for e, r, a in points) / see if see > 0 else 1.0
    return (k if k > 0 else 1.0), prior, n


def sensitivity(fn: Callable[[float], float], step: float) -> tuple[float, float]:
    """(value at request_s = 0, d value / d request_s): the model is near linear in request_s."""
    base = fn(0.0)
    probe = max(step, 1e-3)
    return base, (fn(probe) - base) / probe


def hms(seconds: float) -> str:
    s = int(math.ceil(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
