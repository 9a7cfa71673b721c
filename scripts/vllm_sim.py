#!/usr/bin/env python3
"""Stand-in for ``vllm serve`` ("engine: sim") that needs no GPU.

Why this exists: the experiment pipeline (launch prefill/decode servers, put
a proxy in front, run ``vllm bench serve``, read ``/metrics``) must be
testable on CPU-only machines.  This script speaks the same HTTP API, the
same command line and the same NixlConnector per-request protocol as vLLM,
and replaces the GPU with a timing model.  It is a single standalone file
(stdlib + aiohttp) because it is copied to nodes and run under whatever
Python the vLLM venv provides; it never imports a project package.

Command line
------------
``python vllm_sim.py [--profile-json JSON|@FILE] [--trace-max-requests N] serve MODEL [vllm serve flags...]``

The two sim-only flags must come before ``serve``; ``--trace-max-requests``
(default 100000, 0 turns tracing off) bounds the ground-truth trace served at
``GET /sim/trace`` (see below).  Everything from ``serve`` on is a ``vllm
serve`` command line.  Understood
flags: ``--host`` (0.0.0.0), ``--port`` (8000), ``--tensor-parallel-size`` /
``-tp``, ``--gpu-memory-utilization``, ``--max-num-batched-tokens``,
``--max-num-seqs`` (256, caps the decode batch), ``--max-model-len``
(default: the profile's ``default_max_model_len``), ``--enable-prefix-caching``
/ ``--no-enable-prefix-caching`` (on, as in vLLM V1), ``--kv-transfer-config``
(JSON, or vLLM's dotted form ``--kv-transfer-config.kv_role kv_producer``,
``...backends+ LIBFABRIC``), ``--served-model-name``, ``--seed``,
``--block-size`` (16).  Any other flag is accepted and listed in one
"Ignoring flags" log line.  Bad ``--kv-transfer-config`` JSON, a
``kv_connector`` without ``kv_role``, an unknown profile key or a bad
``DISAGG_SIM_FAULT`` exit with status 2.

Timing model (``--profile-json`` keys; defaults model Qwen2.5-7B on an A10G)
---------------------------------------------------------------------------
=========================  ==================  ====================================
key                        default             meaning
=========================  ==================  ====================================
``startup_s``              3.0                 delay before the HTTP port is bound
                                               (vLLM binds only once the engine is up)
``prefill_tokens_per_s``   8000.0              prefill throughput
``prefill_overhead_ms``    15.0                fixed cost of one prefill step
``decode_ms_per_step``     25.0                one decode step with one sequence
``decode_batch_slowdown``  0.04                each extra running sequence makes a
                                               step this much longer (relative)
``kv_bytes_per_token``     57344               28 layers x 2 (K,V) x 4 kv heads x
                                               128 x 2 bytes (bf16)
``bandwidth_gbps``         tcp 10, efa 100     link rate, gigabit/s, per transport
``transfer_overhead_ms``   tcp 2.0, efa 0.3    per-transfer fixed cost
``kv_lease_s``             30.0                how long P keeps finished blocks
``default_max_model_len``  32768               used when --max-model-len is absent
``time_scale``             1.0                 multiplies every simulated duration
=========================  ==================  ====================================

Missing keys take the defaults (for the two per-transport dicts, per
transport); unknown keys are an error.  ``time_scale`` multiplies startup,
prefill, decode and transfer durations (tests use it to run fast);
``kv_lease_s`` is a protocol timeout in wall-clock seconds and is not scaled.

One asyncio task owns the simulated GPU, like vLLM's scheduler loop:

* Waiting prefills are served first-come first-served, one at a time:
  ``(prefill_overhead_ms/1000 + uncached_prompt_tokens/prefill_tokens_per_s)
  * time_scale``.  The prefill step also yields the first output token.
* When no prefill can run, one decode step advances every running sequence
  by one token: ``decode_ms_per_step/1000 * (1 + decode_batch_slowdown *
  (n_running - 1)) * time_scale``.  At most ``--max-num-seqs`` sequences run.
* Steps are scheduled on absolute deadlines (``loop.time()``), so timer
  lateness does not accumulate (a backlog of more than 50 ms is dropped
  rather than replayed as a burst).
* Prefix caching: the hash chain of each prompt's full ``--block-size``
  blocks is remembered (bounded LRU of 200k blocks); leading blocks seen
  before skip their prefill time (at least one token is always computed).
* Prompt length: a token-id list counts exactly; a text prompt counts as
  ``len(text.split())`` tokens (a documented approximation: no tokenizer);
  chat messages sum their contents the same way.  The sim always generates
  exactly ``max_tokens`` tokens (as with ``ignore_eos``), each the text
  ``" tok"``.

KV transfer (NixlConnector)
---------------------------
Active when ``--kv-transfer-config`` names a ``kv_connector``.  Per request,
as vLLM does (the role comes from ``kv_transfer_params``, not ``kv_role``):

* ``"do_remote_decode": true`` (the proxy's request to P): prefill, generate,
  keep the request's ``ceil(prompt_tokens/block_size)`` block ids for
  ``kv_lease_s`` and answer (non-streaming) with a top-level
  ``kv_transfer_params`` = ``{do_remote_prefill: true, do_remote_decode:
  false, remote_block_ids, remote_engine_id, remote_request_id, remote_host,
  remote_port, tp_size}``; host/port are ``VLLM_NIXL_SIDE_CHANNEL_HOST``
  (``localhost``) and ``VLLM_NIXL_SIDE_CHANNEL_PORT`` (5600).
* ``"do_remote_prefill": true`` (the proxy's request to D): fetch the blocks
  over P's side channel, wait the transfer time, skip the local prefill and
  decode.  On failure the transfer is counted as failed and
  ``kv_load_failure_policy`` (top-level key, default ``fail``) decides:
  ``fail`` -> HTTP 500 JSON error (or an SSE error chunk once a stream's
  headers went out), ``recompute`` -> local prefill.
* No ``kv_transfer_params`` -> ordinary local prefill, no transfer counted.

Transfer time on D = ``(transfer_overhead_ms/1000 + num_tokens *
kv_bytes_per_token * 8 / (bandwidth_gbps * 1e9)) * time_scale``.  The link is
shared: concurrent transfers queue FIFO for the wire part, so the aggregate
rate never exceeds ``bandwidth_gbps`` (uncontended it is exactly the formula).
Transport: ``efa`` if ``LIBFABRIC`` is in ``kv_connector_extra_config.backends``
and ``FI_PROVIDER`` is unset or ``efa``, else ``tcp``; shown by ``GET /version``.

Side channel: whenever a connector is configured the server listens on
``VLLM_NIXL_SIDE_CHANNEL_HOST:VLLM_NIXL_SIDE_CHANNEL_PORT`` and speaks
newline-delimited JSON, one object per line, any number per connection:

* request ``{"op": "fetch", "v": 1, "remote_engine_id": E, "remote_request_id":
  R, "remote_block_ids": [...], "block_size": B, "requester_engine_id": D}``
* success ``{"ok": true, "engine_id": E, "remote_request_id": R,
  "num_tokens": N, "num_blocks": K, "bytes": N*kv_bytes_per_token,
  "block_size": B}`` - the lease is consumed (blocks freed)
* failure ``{"ok": false, "error": CODE, "message": TEXT}`` with CODE one of
  ``engine_id_mismatch``, ``unknown_request``, ``expired``,
  ``block_mismatch``, ``block_size_mismatch``, ``bad_request``.
* ``{"op": "ping"}`` -> ``{"ok": true, "engine_id": E, "block_size": B}``.

Metrics (``GET /metrics``, Prometheus text as prometheus_client writes it)
-------------------------------------------------------------------------
Labels ``{engine="0",model_name=M}`` (label names sorted).  Counters are
exported with the ``_total`` suffix (in ``# HELP``/``# TYPE`` too) plus a
``*_created`` gauge family, exactly as vLLM's prometheus_client output:

* gauges ``vllm:num_requests_running``, ``vllm:num_requests_waiting``
* counters ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
  ``vllm:request_success_total{finished_reason=length|stop|abort|error}``,
  ``vllm:prefix_cache_queries_total``, ``vllm:prefix_cache_hits_total``,
  ``vllm:prompt_tokens_by_source_total{source=local_compute|local_cache_hit|
  external_kv_transfer}``
* with a connector only (as in vLLM): histograms
  ``vllm:nixl_xfer_time_seconds``, ``vllm:nixl_post_time_seconds``,
  ``vllm:nixl_bytes_transferred``, ``vllm:nixl_num_descriptors``
  (``_bucket{le=...}``, ``_count``, ``_sum``; vLLM's buckets) and counters
  ``vllm:nixl_num_failed_transfers_total``,
  ``vllm:nixl_num_failed_notifications_total``,
  ``vllm:nixl_num_kv_expired_reqs_total`` (on P),
  ``vllm:nixl_num_notifications_after_expiry_total`` (on P).
  post time = the scaled per-transfer overhead; descriptors = block count.

Ground-truth trace (``GET /sim/trace``)
--------------------------------------
Sim-only (vLLM has no such route).  For every completion request that passed
validation the server records, on its own clocks, when the request arrived
(the whole request, headers and body, had been read: the earliest instant the
server could start on it) and when each output token's bytes were handed to
the transport (the instant just before ``transport.write``;
tokens the writer coalesced into one write share that instant).  Clients that
run on the same machine share both clocks: ``*_mono`` is ``time.monotonic()``
(CLOCK_MONOTONIC, the clock of ``time.perf_counter()`` and asyncio's
``loop.time()`` on Linux) and ``*_wall`` is ``time.time()``; all in seconds.
The most recent ``--trace-max-requests`` requests are kept (oldest dropped
first; each costs about 16 bytes per streamed token plus ~0.5 kB).  Query:
``?request_id=ID`` returns only the records of that request id (an id that
was used more than once gives several records); ``?clear=1`` removes the
returned records after answering (without ``request_id``: everything).
Answer (200, JSON)::

    {"object": "sim.trace", "enabled": true, "max_requests": N,
     "stored": K, "dropped": D,          # D = evicted by the bound so far
     "now_mono": S, "now_wall": S,       # the server's clocks when answering
     "requests": [                       # oldest first
       {"request_id": "<X-Request-Id, or a generated uuid hex>", "seq": 1,
        "endpoint": "completions"|"chat", "stream": true,
        "status": "ok"|"in_flight"|"aborted"|"error",
        "kv": "local"|"remote_prefill"|"remote_decode"|"recompute",
        "prompt_tokens": P, "max_tokens": M, "completion_tokens": T,
        "arrival_mono": S, "arrival_wall": S,
        "headers_mono": S,               # handler entry (headers parsed, body not yet read)
        "prompt_sha1": H|null,           # sha1 of a text prompt's UTF-8 bytes (completions)
        "scheduled_mono": S|null,        # engine picked it up (prefill start)
        "engine_first_token_mono": S|null,  # simulated end of its prefill step
        "first_token_mono": S|null, "first_token_wall": S|null,
        "end_mono": S|null, "end_wall": S|null,  # after [DONE] / the body
        "ttft_ms": F|null,               # (first_token - arrival) * 1000
        "token_mono": [S, ...], "token_wall": [S, ...]}]}   # streams: one per token

For a non-streaming request the answer is one write: ``token_*`` are empty
and ``first_token_*`` = ``end_*`` = the instant the body was built.
``first_token_*`` of a stream equals ``token_*[0]``.  Read the trace while
the server is idle: a large answer is built on the event loop.

Fault injection (tests only)
----------------------------
``DISAGG_SIM_FAULT=<fault>`` (environment only, never a flag; the pipeline's
node runner sets it for exactly one server when the control side's test-only
``DISAGGLAB_FAULTS`` asks for it).  Requests are counted per server from 1, in
the order their completion request passed validation.

* ``crash_after=N``: ``os._exit(70)`` while serving request N+1, right after
  its first token was written (streaming) or produced (non-streaming).
* ``slow_start=S``: the HTTP port is bound (and /health answers) only after S
  wall-clock seconds (not scaled by ``time_scale``) instead of ``startup_s``.
* ``never_healthy``: starts normally, but ``/health`` always answers 503.
* ``hang_mid_stream=N``: request N writes its first token, then stops sending
  and keeps the connection open until the client goes away.
* ``http_500=N``: request N and every later one answer HTTP 500 with vLLM's
  error JSON before any engine work.
* ``malformed_sse=N``: streams of request N and later carry one broken
  ``data:`` line (truncated JSON) after the first token.
* ``no_kv_params``: a producer answers ``kv_transfer_params: null`` (no KV
  lease), so the decode server re-prefills locally and moves no KV.

Any other non-empty value exits 2 at startup, naming the supported faults.

SIGTERM/SIGINT close the listeners and exit 0 within about a second.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import json
import logging
import math
import os
import signal
import sys
import time
import uuid
from array import array
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

LOG = logging.getLogger("vllm_sim")

KV_ROLES = ("kv_producer", "kv_consumer", "kv_both")
FAILURE_POLICIES = ("fail", "recompute")
TRANSPORTS = ("tcp", "efa")
TOKEN_TEXT = " tok"
SIDE_CHANNEL_TIMEOUT_S = 5.0  # vLLM sets RCVTIMEO=5000 ms on its handshake socket
# asyncio.TimeoutError is only an alias of TimeoutError from Python 3.11 on; nodes
# may run an older vLLM venv.
TIMEOUT_ERRORS = (TimeoutError, asyncio.TimeoutError)
MAX_CATCHUP_S = 0.05  # engine backlog beyond this is dropped, not replayed
PREFIX_CACHE_BLOCKS = 200_000
EXPIRED_MEMORY = 10_000  # remembered expired request ids (after-expiry counter)
TRACE_MAX_REQUESTS = 100_000  # default of --trace-max-requests
FINISH_REASONS = ("abort", "error", "length", "stop")
TOKEN_SOURCES = ("external_kv_transfer", "local_cache_hit", "local_compute")
# vLLM's NixlPromMetrics buckets (vllm/.../nixl/stats.py).
_TIME_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    5.0,
)
XFER_TIME_BUCKETS = _TIME_BUCKETS[1:]
POST_TIME_BUCKETS = _TIME_BUCKETS
BYTES_BUCKETS = tuple(float(2 ** (10 + i)) for i in range(1, 25, 2))
DESCRIPTOR_BUCKETS = (
    10,
    20,
    30,
    50,
    75,
    100,
    200,
    400,
    1000,
    2000,
    4000,
    10000,
    20000,
    50000,
)


class ConfigError(Exception):
    """A startup configuration problem; reported on stderr with exit status 2."""


class RequestError(Exception):
    """A client error turned into vLLM's JSON error body."""

    def __init__(self, message: str, status: int = 400, err_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.err_type = err_type


# --------------------------------------------------------------------------- config


@dataclass
class Profile:
    """The timing model; see the module docstring for what each key means."""

    startup_s: float = 3.0
    prefill_tokens_per_s: float = 8000.0
    prefill_overhead_ms: float = 15.0
    decode_ms_per_step: float = 25.0
    decode_batch_slowdown: float = 0.04
    kv_bytes_per_token: int = 57344
    bandwidth_gbps: dict[str, float] = field(default_factory=lambda: {"tcp": 10.0, "efa": 100.0})
    transfer_overhead_ms: dict[str, float] = field(default_factory=lambda: {"tcp": 2.0, "efa": 0.3})
    kv_lease_s: float = 30.0
    default_max_model_len: int = 32768
    time_scale: float = 1.0

    def prefill_s(self, tokens: int) -> float:
        """Simulated seconds for one prefill step computing ``tokens`` tokens."""
        return (self.prefill_overhead_ms / 1000.0 + tokens / self.prefill_tokens_per_s) * self.time_scale

    def decode_step_s(self, n_running: int) -> float:
        """Simulated seconds for one decode step over ``n_running`` sequences."""
        factor = 1.0 + self.decode_batch_slowdown * max(n_running - 1, 0)
        return self.decode_ms_per_step / 1000.0 * factor * self.time_scale


def _number(key: str, value: Any, *, positive: bool, integer: bool = False) -> float:
    """Validate one numeric profile value so a typo fails at startup, not mid-run."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"--profile-json: {key} must be a finite number, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"--profile-json: {key} must be an integer, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"--profile-json: {key} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return int(value) if integer else float(value)


_POSITIVE_KEYS = {
    "prefill_tokens_per_s",
    "kv_bytes_per_token",
    "default_max_model_len",
    "kv_lease_s",
}
_INTEGER_KEYS = {"kv_bytes_per_token", "default_max_model_len"}


def parse_profile(text: str | None) -> Profile:
    """Build the effective profile from ``--profile-json`` (JSON text or ``@file``)."""
    profile = Profile()
    if text is None:
        return profile
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"--profile-json: cannot read {text[1:]}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--profile-json: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("--profile-json: must be a JSON object")
    known = {f for f in asdict(profile)}
    for key in data:
        if key not in known:
            raise ConfigError(f"--profile-json: unknown key {key!r} (known: {', '.join(sorted(known))})")
    for key, value in data.items():
        if key in ("bandwidth_gbps", "transfer_overhead_ms"):
            if not isinstance(value, dict):
                raise ConfigError(f"--profile-json: {key} must be an object keyed by transport")
            merged = dict(getattr(profile, key))
            for transport, number in value.items():
                if transport not in TRANSPORTS:
                    raise ConfigError(f"--profile-json: unknown transport {transport!r} in {key}")
                merged[transport] = _number(f"{key}.{transport}", number, positive=key == "bandwidth_gbps")
            setattr(profile, key, merged)
        else:
            setattr(
                profile,
                key,
                _number(
                    key,
                    value,
                    positive=key in _POSITIVE_KEYS,
                    integer=key in _INTEGER_KEYS,
                ),
            )
    return profile


@dataclass
class Fault:
    """Test-only fault injection parsed from DISAGG_SIM_FAULT (module docstring)."""

    crash_after: int | None = None
    slow_start_s: float | None = None
    never_healthy: bool = False
    hang_mid_stream: int | None = None
    http_500_from: int | None = None
    malformed_sse_from: int | None = None
    no_kv_params: bool = False

    @property
    def active(self) -> bool:
        return self != Fault()


FAULT_USAGE = (
    "crash_after=N, slow_start=S, never_healthy, hang_mid_stream=N, http_500=N, malformed_sse=N, no_kv_params"
)


def parse_fault(value: str | None) -> Fault:
    """Parse DISAGG_SIM_FAULT; anything unrecognised must stop startup loudly."""
    if not value:
        return Fault()
    name, sep, arg = value.partition("=")
    counted = {"crash_after": "crash_after", "hang_mid_stream": "hang_mid_stream",
               "http_500": "http_500_from", "malformed_sse": "malformed_sse_from"}
    if name in counted and sep and arg.isdigit() and (name == "crash_after" or int(arg) >= 1):
        return Fault(**{counted[name]: int(arg)})
    if name == "slow_start" and sep:
        try:
            seconds = float(arg)
        except ValueError:
            seconds = -1.0
        if seconds >= 0 and math.isfinite(seconds):
            return Fault(slow_start_s=seconds)
    if name in ("never_healthy", "no_kv_params") and not sep:
        return Fault(**{name: True})
    raise ConfigError(f"DISAGG_SIM_FAULT: unknown value {value!r} (supported: {FAULT_USAGE}; N >= 1 except crash_after)")


@dataclass
class KVConfig:
    """The parts of vLLM's KVTransferConfig the simulated NixlConnector uses."""

    connector: str
    role: str
    failure_policy: str
    backends: list[str]
    raw: dict[str, Any]


@dataclass
class ServeConfig:
    """Everything the server needs, parsed from the ``vllm serve`` command line."""

    model: str
    served_model_name: str
    host: str
    port: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_num_batched_tokens: int | None
    max_num_seqs: int
    max_model_len: int
    enable_prefix_caching: bool
    block_size: int
    seed: int | None
    kv: KVConfig | None
    ignored: list[str]
    profile: Profile
    fault: Fault
    side_host: str
    side_port: int
    transport: str
    trace_max_requests: int = TRACE_MAX_REQUESTS


def _human_int(text: str) -> int:
    """vLLM's human-readable ints for --max-model-len: 32k=32000, 32K=32768."""
    text = text.strip()
    mult = {"k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}
    if text and text[-1] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


def _parse_json_value(text: str) -> Any:
    """Values of dotted flags are JSON when they parse as JSON, else strings (like vLLM)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _extract_dotted_kv(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Pull ``--kv-transfer-config.a.b[+] VALUE`` pairs out before argparse sees them.

    argparse cannot be told about open-ended dotted flags, and letting it treat
    them as unknown would scramble flag/value order.
    """
    prefix = "--kv-transfer-config."
    dotted: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(prefix):
            key, eq, value = arg[len(prefix) :].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError(f"argument {arg}: expected one argument")
                value = args[i + 1]
                i += 1
            append = key.endswith("+")
            parts = key.rstrip("+").split(".")
            node = dotted
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"argument {arg}: conflicting keys")
            parsed = _parse_json_value(value)
            if append:
                node.setdefault(parts[-1], []).append(parsed)
            else:
                node[parts[-1]] = parsed
        else:
            rest.append(arg)
        i += 1
    return dotted, rest


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Overlay dotted-flag keys on the JSON config; lists from ``key+`` flags are appended."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + value
        else:
            out[key] = value
    return out


def _serve_parser() -> argparse.ArgumentParser:
    """The ``vllm serve`` flags the sim understands; everything else is reported as ignored."""
    p = argparse.ArgumentParser(prog="vllm serve", allow_abbrev=False, add_help=False)
    p.add_argument("--model", default=None)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-model-len", type=_human_int, default=None)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--kv-transfer-config", default=None)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--block-size", type=int, default=16)
    return p


def _parse_kv(raw_json: str | None, dotted: dict[str, Any]) -> KVConfig | None:
    """Validate the KV transfer config the way vLLM's KVTransferConfig does."""
    data: dict[str, Any] = {}
    if raw_json is not None:
        try:
            data = json.loads(raw_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"argument --kv-transfer-config: invalid JSON value: {raw_json!r} ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"argument --kv-transfer-config: expected a JSON object, got {raw_json!r}")
    data = _deep_merge(data, dotted)
    if not data:
        return None
    connector = data.get("kv_connector")
    role = data.get("kv_role")
    if connector is not None and role is None:
        raise ConfigError(f"Please specify kv_role when kv_connector is set, supported roles are {KV_ROLES}")
    if role is not None and role not in KV_ROLES:
        raise ConfigError(f"Unsupported kv_role: {role}. Supported roles are {KV_ROLES}")
    policy = data.get("kv_load_failure_policy", "fail")
    if policy not in FAILURE_POLICIES:
        raise ConfigError(f"Unsupported kv_load_failure_policy: {policy!r}. Supported: {FAILURE_POLICIES}")
    if connector is None:
        return None
    extra = data.get("kv_connector_extra_config") or {}
    if not isinstance(extra, dict):
        raise ConfigError("kv_connector_extra_config must be a JSON object")
    backends = extra.get("backends", ["UCX"])
    if isinstance(backends, str):
        backends = [backends]
    if not isinstance(backends, list):
        raise ConfigError("kv_connector_extra_config.backends must be a list")
    return KVConfig(str(connector), str(role), str(policy), [str(b) for b in backends], data)


def pick_transport(kv: KVConfig | None, env: dict[str, str]) -> str:
    """EFA only when the LIBFABRIC backend is asked for and libfabric may use efa."""
    if kv is None:
        return "tcp"
    provider = env.get("FI_PROVIDER")
    if "LIBFABRIC" in kv.backends and (provider is None or provider == "efa"):
        return "efa"
    return "tcp"


def parse_cli(argv: list[str], env: dict[str, str]) -> ServeConfig:
    """Parse ``[--profile-json J] serve MODEL [flags]`` into a ServeConfig."""
    top = argparse.ArgumentParser(prog="vllm_sim.py", allow_abbrev=False)
    top.add_argument("--profile-json", default=None, help="timing profile (JSON object or @file)")
    top.add_argument(
        "--trace-max-requests",
        type=int,
        default=TRACE_MAX_REQUESTS,
        help="requests kept in the ground-truth trace at GET /sim/trace (0: off)",
    )
    top.add_argument("command", choices=["serve"])
    top.add_argument("rest", nargs=argparse.REMAINDER)
    ns = top.parse_args(argv)
    rest: list[str] = list(ns.rest)
    for flag in ("--profile-json", "--trace-max-requests"):
        if any(a == flag or a.startswith(flag + "=") for a in rest):
            raise ConfigError(f"{flag} must come before 'serve'")
    if ns.trace_max_requests < 0:
        raise ConfigError("--trace-max-requests must be >= 0")
    model: str | None = None
    if rest and not rest[0].startswith("-"):
        model = rest.pop(0)
    dotted, rest = _extract_dotted_kv(rest)
    sargs, unknown = _serve_parser().parse_known_args(rest)
    model = model or sargs.model
    if not model:
        raise ConfigError("vllm serve: error: the following arguments are required: model_tag")
    profile = parse_profile(ns.profile_json)
    kv = _parse_kv(sargs.kv_transfer_config, dotted)
    fault = parse_fault(env.get("DISAGG_SIM_FAULT"))
    max_model_len = sargs.max_model_len
    if max_model_len is None or max_model_len <= 0:
        max_model_len = profile.default_max_model_len
    if sargs.block_size <= 0 or sargs.tensor_parallel_size <= 0 or sargs.max_num_seqs <= 0:
        raise ConfigError("--block-size, --tensor-parallel-size and --max-num-seqs must be positive")
    port_text = env.get("VLLM_NIXL_SIDE_CHANNEL_PORT", "5600")
    try:
        side_port = int(port_text)
    except ValueError as exc:
        raise ConfigError(f"VLLM_NIXL_SIDE_CHANNEL_PORT must be an integer, got {port_text!r}") from exc
    served = sargs.served_model_name[0] if sargs.served_model_name else model
    return ServeConfig(
        model=model,
        served_model_name=served,
        host=sargs.host,
        port=sargs.port,
        tensor_parallel_size=sargs.tensor_parallel_size,
        gpu_memory_utilization=sargs.gpu_memory_utilization,
        max_num_batched_tokens=sargs.max_num_batched_tokens,
        max_num_seqs=sargs.max_num_seqs,
        max_model_len=max_model_len,
        enable_prefix_caching=sargs.enable_prefix_caching,
        block_size=sargs.block_size,
        seed=sargs.seed,
        kv=kv,
        ignored=unknown,
        profile=profile,
        fault=fault,
        side_host=env.get("VLLM_NIXL_SIDE_CHANNEL_HOST", "localhost"),
        side_port=side_port,
        transport=pick_transport(kv, env),
        trace_max_requests=ns.trace_max_requests,
    )


# --------------------------------------------------------------------------- metrics


def go_float(value: float) -> str:
    """Format a float the way prometheus_client does (Go style exponents)."""
    value = float(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6 and "e" not in text:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _labels(labels: dict[str, str]) -> str:
    """Prometheus label set, keys sorted so every series of a family reads the same way."""
    parts = []
    for key in sorted(labels):
        val = labels[key].replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{key}="{val}"')
    return "{" + ",".join(parts) + "}"


class Histogram:
    """A single-series Prometheus histogram (buckets are upper bounds, le)."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound (le) is >= it, as prometheus_client does."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def render(self, out: list[str], labels: dict[str, str], created: float) -> None:
        """Append the family in prometheus_client order: cumulative buckets, _count, _sum, _created."""
        out.append(f"# HELP {self.name} {self.doc}")
        out.append(f"# TYPE {self.name} histogram")
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts):
            running += n
            out.append(f"{self.name}_bucket{_labels({**labels, 'le': go_float(bound)})} {go_float(running)}")
        lab = _labels(labels)
        out.append(f"{self.name}_count{lab} {go_float(self.count)}")
        out.append(f"{self.name}_sum{lab} {go_float(self.total)}")
        _render_created(out, self.name, self.doc, [labels], created)


def _render_created(out: list[str], name: str, doc: str, series: list[dict[str, str]], created: float) -> None:
    """prometheus_client exports each counter/histogram's creation time as a separate gauge family."""
    out.append(f"# HELP {name}_created {doc}")
    out.append(f"# TYPE {name}_created gauge")
    for labels in series:
        out.append(f"{name}_created{_labels(labels)} {go_float(created)}")


def _render_counter(
    out: list[str],
    name: str,
    doc: str,
    series: list[tuple[dict[str, str], float]],
    created: float,
) -> None:
    """A counter family exported with the _total suffix, plus its _created gauge family."""
    out.append(f"# HELP {name}_total {doc}")
    out.append(f"# TYPE {name}_total counter")
    for labels, value in series:
        out.append(f"{name}_total{_labels(labels)} {go_float(value)}")
    _render_created(out, name, doc, [labels for labels, _ in series], created)


def _render_gauge(out: list[str], name: str, doc: str, labels: dict[str, str], value: float) -> None:
    """One gauge family with a single series."""
    out.append(f"# HELP {name} {doc}")
    out.append(f"# TYPE {name} gauge")
    out.append(f"{name}{_labels(labels)} {go_float(value)}")


@dataclass
class Stats:
    """Counters behind /metrics; plain ints because one event loop owns them."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    by_source: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_SOURCES, 0))
    prefix_queries: int = 0
    prefix_hits: int = 0
    nixl_failed_transfers: int = 0
    nixl_failed_notifications: int = 0
    nixl_expired: int = 0
    nixl_after_expiry: int = 0
    xfer_time: Histogram = field(
        default_factory=lambda: Histogram(
            "vllm:nixl_xfer_time_seconds",
            "Histogram of transfer duration for NIXL KV Cache transfers.",
            XFER_TIME_BUCKETS,
        )
    )
    post_time: Histogram = field(
        default_factory=lambda: Histogram(
            "vllm:nixl_post_time_seconds",
            "Histogram of transfer post time for NIXL KV Cache transfers.",
            POST_TIME_BUCKETS,
        )
    )
    xfer_bytes: Histogram = field(
        default_factory=lambda: Histogram(
            "vllm:nixl_bytes_transferred",
            "Histogram of bytes transferred per NIXL KV Cache transfers.",
            BYTES_BUCKETS,
        )
    )
    descriptors: Histogram = field(
        default_factory=lambda: Histogram(
            "vllm:nixl_num_descriptors",
            "Histogram of number of descriptors per NIXL KV Cache transfers.",
            DESCRIPTOR_BUCKETS,
        )
    )
    created: float = field(default_factory=time.time)


# --------------------------------------------------------------------------- engine


@dataclass(eq=False)
class SimRequest:
    """One request as the simulated scheduler sees it."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    block_hashes: list[int]
    arrival: float
    needs_prefill: bool = True
    source: str = "local"
    generated: int = 0
    cached_tokens: int = 0
    aborted: bool = False
    finished: bool = False
    t_scheduled: float | None = None
    t_first_token: float | None = None
    t_finished: float | None = None
    prefill_s: float = 0.0
    xfer_s: float = 0.0
    waiter: asyncio.Future[None] | None = None

    def notify(self) -> None:
        """Wake the HTTP handler waiting for this request's progress."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_beyond(self, seen: int) -> None:
        """Return once more than ``seen`` tokens exist (or the request ended)."""
        loop = asyncio.get_running_loop()
        while self.generated <= seen and not self.finished and not self.aborted:
            self.waiter = loop.create_future()
            await self.waiter


def block_hash_chain(tokens: list[Any], block_size: int) -> list[int]:
    """Hash each full block chained with its prefix, like vLLM's prefix cache keys."""
    hashes: list[int] = []
    prev = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        prev = hash((prev, tuple(tokens[start : start + block_size])))
        hashes.append(prev)
    return hashes


class Engine:
    """The simulated GPU: one task runs prefill and decode steps on a timeline."""

    def __init__(self, cfg: ServeConfig, stats: Stats) -> None:
        self.cfg = cfg
        self.profile = cfg.profile
        self.stats = stats
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.prefilling: SimRequest | None = None
        self.cache: OrderedDict[int, None] = OrderedDict()
        self._wake = asyncio.Event()
        self._aborted_pending = 0

    @property
    def num_running(self) -> int:
        """Sequences in the batch, counting the one being prefilled (as vLLM's running queue does)."""
        return len(self.running) + (1 if self.prefilling is not None else 0)

    @property
    def num_waiting(self) -> int:
        """Requests queued for prefill or for a free batch slot."""
        return len(self.waiting)

    def submit(self, req: SimRequest) -> None:
        """Queue a request (FCFS) and wake the scheduler loop if it is idle."""
        self.waiting.append(req)
        self._wake.set()

    def abort(self, req: SimRequest) -> None:
        """Stop working on a request whose client went away (counted as finished_reason=abort)."""
        if not req.finished and not req.aborted:
            req.aborted = True
            self._aborted_pending += 1
            self.stats.finished["abort"] += 1
            self._wake.set()
            req.notify()

    def _reap(self) -> None:
        """Drop aborted requests from the queues lazily, only when some were aborted."""
        if self._aborted_pending:
            self.waiting = deque(r for r in self.waiting if not r.aborted)
            self.running = [r for r in self.running if not r.aborted]
            self._aborted_pending = 0

    def _prefix_hit_tokens(self, req: SimRequest) -> int:
        """Leading prompt tokens whose blocks are cached; vLLM always recomputes at least one token."""
        if not self.cfg.enable_prefix_caching or not req.block_hashes:
            return 0
        hits = 0
        for h in req.block_hashes:
            if h not in self.cache:
                break
            self.cache.move_to_end(h)
            hits += 1
        return min(hits * self.cfg.block_size, req.prompt_tokens - 1)

    def remember_blocks(self, req: SimRequest) -> None:
        """Record a prompt's blocks as cached (after prefill or KV load)."""
        if not self.cfg.enable_prefix_caching:
            return
        for h in req.block_hashes:
            self.cache[h] = None
            self.cache.move_to_end(h)
        while len(self.cache) > PREFIX_CACHE_BLOCKS:
            self.cache.popitem(last=False)

    def _finish(self, req: SimRequest, now: float) -> None:
        """Mark a request done; the sim always stops on length (max_tokens reached)."""
        req.finished = True
        req.t_finished = now
        self.stats.finished["length"] += 1

    async def run(self) -> None:
        """The scheduler loop; never returns while the server lives."""
        loop = asyncio.get_running_loop()
        clock = loop.time()
        cap = self.cfg.max_num_seqs
        while True:
            self._reap()
            if not self.waiting and not self.running:
                self._wake.clear()
                await self._wake.wait()
                clock = loop.time()
                continue
            now = loop.time()
            if now - clock > MAX_CATCHUP_S:
                clock = now
            while self.waiting and not self.waiting[0].needs_prefill and len(self.running) < cap:
                req = self.waiting.popleft()
                req.t_scheduled = clock
                self.running.append(req)
            if self.waiting and len(self.running) < cap:
                req = self.waiting.popleft()
                if not req.aborted:
                    clock = await self._prefill(req, clock)
            elif self.running:
                clock = await self._decode(clock)
            else:  # only aborted entries were left
                await asyncio.sleep(0)

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep to an absolute deadline so per-step timer lateness does not accumulate."""
        delay = deadline - asyncio.get_running_loop().time()
        await asyncio.sleep(max(0.0, delay))

    async def _prefill(self, req: SimRequest, clock: float) -> float:
        """Run one prefill step (which also samples the first token); return the step's end time."""
        cached = self._prefix_hit_tokens(req)
        duration = self.profile.prefill_s(req.prompt_tokens - cached)
        req.t_scheduled = clock
        req.cached_tokens = cached
        req.prefill_s = duration
        self.prefilling = req
        end = clock + duration
        try:
            await self._sleep_until(end)
        finally:
            self.prefilling = None
        stats = self.stats
        stats.prefix_queries += req.prompt_tokens if self.cfg.enable_prefix_caching else 0
        stats.prefix_hits += cached
        if req.aborted:
            return end
        self.remember_blocks(req)
        stats.prompt_tokens += req.prompt_tokens
        stats.by_source["local_cache_hit"] += cached
        stats.by_source["local_compute"] += req.prompt_tokens - cached
        stats.generation_tokens += 1
        req.generated = 1
        req.t_first_token = end
        if req.max_tokens <= 1:
            self._finish(req, end)
        else:
            self.running.append(req)
        req.notify()
        return end

    async def _decode(self, clock: float) -> float:
        """Run one decode step: every running sequence gains one token at the step's end."""
        end = clock + self.profile.decode_step_s(len(self.running))
        await self._sleep_until(end)
        still: list[SimRequest] = []
        emitted = 0
        for req in self.running:
            if req.aborted:
                continue
            req.generated += 1
            emitted += 1
            if req.t_first_token is None:
                req.t_first_token = end
            if req.generated >= req.max_tokens:
                self._finish(req, end)
            else:
                still.append(req)
            req.notify()
        self.stats.generation_tokens += emitted
        self.running = still
        return end


# --------------------------------------------------------------------------- KV transfer


@dataclass
class Lease:
    """Blocks P keeps after a do_remote_decode request until D fetches them."""

    request_id: str
    block_ids: list[int]
    num_tokens: int
    expires_at: float


class KVTransfer:
    """Simulated NixlConnector: P-side leases + side channel, D-side fetch + link."""

    def __init__(self, cfg: ServeConfig, kv: KVConfig, stats: Stats) -> None:
        self.cfg = cfg
        self.kv = kv
        self.stats = stats
        self.engine_id = str(uuid.uuid4())
        self.leases: dict[str, Lease] = {}
        self.expired_ids: OrderedDict[str, None] = OrderedDict()
        self._next_block = 0
        self._link_free_at = 0.0
        self.server: asyncio.AbstractServer | None = None

    # ---- producer side
    def create_lease(self, req: SimRequest) -> dict[str, Any]:
        """Keep the request's blocks and return the kv_transfer_params P answers with."""
        n_blocks = -(-req.prompt_tokens // self.cfg.block_size)
        block_ids = list(range(self._next_block, self._next_block + n_blocks))
        self._next_block += n_blocks
        remote_id = f"{req.request_id}-0-{uuid.uuid4().hex[:8]}"
        now = asyncio.get_running_loop().time()
        self.leases[remote_id] = Lease(remote_id, block_ids, req.prompt_tokens, now + self.cfg.profile.kv_lease_s)
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": block_ids,
            "remote_engine_id": self.engine_id,
            "remote_request_id": remote_id,
            "remote_host": self.cfg.side_host,
            "remote_port": self.cfg.side_port,
            "tp_size": self.cfg.tensor_parallel_size,
        }

    def _expire(self, lease: Lease) -> None:
        self.leases.pop(lease.request_id, None)
        self.stats.nixl_expired += 1
        self.expired_ids[lease.request_id] = None
        while len(self.expired_ids) > EXPIRED_MEMORY:
            self.expired_ids.popitem(last=False)
        LOG.warning(
            "KV blocks of request %s expired after %.1f s without being read",
            lease.request_id,
            self.cfg.profile.kv_lease_s,
        )

    async def sweep_leases(self) -> None:
        """Expire leases D never fetched (vLLM: nixl_num_kv_expired_reqs on P)."""
        interval = max(0.05, min(1.0, self.cfg.profile.kv_lease_s / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for lease in [lz for lz in self.leases.values() if lz.expires_at <= now]:
                self._expire(lease)

    def handle_message(self, msg: Any) -> dict[str, Any]:
        """Answer one side-channel request (producer role)."""

        def error(code: str, message: str) -> dict[str, Any]:
            return {"ok": False, "error": code, "message": message}

        if not isinstance(msg, dict):
            return error("bad_request", "expected a JSON object")
        op = msg.get("op")
        if op == "ping":
            return {
                "ok": True,
                "engine_id": self.engine_id,
                "block_size": self.cfg.block_size,
            }
        if op != "fetch":
            return error("bad_request", f"unknown op {op!r}")
        if msg.get("remote_engine_id") != self.engine_id:
            return error(
                "engine_id_mismatch",
                f"Remote NIXL agent engine ID mismatch. Expected {msg.get('remote_engine_id')}, received {self.engine_id}.",
            )
        block_size = msg.get("block_size")
        if block_size is not None and block_size != self.cfg.block_size:
            return error(
                "block_size_mismatch",
                f"block size mismatch: producer {self.cfg.block_size}, consumer {block_size}",
            )
        rid = msg.get("remote_request_id")
        lease = self.leases.get(rid) if isinstance(rid, str) else None
        if lease is not None and lease.expires_at <= asyncio.get_running_loop().time():
            self._expire(lease)
            lease = None
        if lease is None:
            if isinstance(rid, str) and rid in self.expired_ids:
                self.stats.nixl_after_expiry += 1
                return error(
                    "expired",
                    f"KV blocks of request {rid} expired (lease {self.cfg.profile.kv_lease_s} s)",
                )
            return error("unknown_request", f"no KV blocks held for request {rid!r}")
        wanted = msg.get("remote_block_ids")
        if wanted is not None and list(wanted) != lease.block_ids:
            return error(
                "block_mismatch",
                f"remote_block_ids do not match the blocks of request {rid}",
            )
        del self.leases[rid]
        return {
            "ok": True,
            "engine_id": self.engine_id,
            "remote_request_id": rid,
            "num_tokens": lease.num_tokens,
            "num_blocks": len(lease.block_ids),
            "bytes": lease.num_tokens * self.cfg.profile.kv_bytes_per_token,
            "block_size": self.cfg.block_size,
        }

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One side-channel connection: newline-delimited JSON request/answer pairs."""
        try:
            while True:
                line = await asyncio.wait_for(reader.readline(), timeout=60.0)
                if not line:
                    break
                try:
                    answer = self.handle_message(json.loads(line))
                except json.JSONDecodeError:
                    answer = {
                        "ok": False,
                        "error": "bad_request",
                        "message": "invalid JSON",
                    }
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (*TIMEOUT_ERRORS, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def start(self) -> None:
        """Bind the side channel; a port clash fails start-up like vLLM's ZMQ 'Address already in use'."""
        self.server = await asyncio.start_server(self.serve_connection, self.cfg.side_host, self.cfg.side_port)

    # ---- consumer side
    async def _fetch(self, params: dict[str, Any]) -> dict[str, Any]:
        """Ask P's side channel for the blocks named in ``params``; raise on any failure."""
        host, port = params.get("remote_host"), params.get("remote_port")
        if not host or port is None:
            raise RuntimeError("kv_transfer_params lack remote_host/remote_port")
        msg = {
            "op": "fetch",
            "v": 1,
            "remote_engine_id": params.get("remote_engine_id"),
            "remote_request_id": params.get("remote_request_id"),
            "remote_block_ids": params.get("remote_block_ids"),
            "block_size": self.cfg.block_size,
            "requester_engine_id": self.engine_id,
        }
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(str(host), int(port)),
            timeout=SIDE_CHANNEL_TIMEOUT_S,
        )
        try:
            writer.write(json.dumps(msg).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout=SIDE_CHANNEL_TIMEOUT_S)
        finally:
            writer.close()
        if not line:
            raise RuntimeError(f"side channel {host}:{port} closed without answering")
        answer = json.loads(line)
        if not isinstance(answer, dict) or not answer.get("ok"):
            code = answer.get("error") if isinstance(answer, dict) else "bad_answer"
            text = answer.get("message") if isinstance(answer, dict) else str(answer)
            raise RuntimeError(f"{code}: {text}")
        return answer

    async def load(self, req: SimRequest, params: dict[str, Any]) -> str | None:
        """Fetch P's blocks and wait the simulated transfer; return an error text or None."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            answer = await self._fetch(params)
            num_tokens = int(answer["num_tokens"])
            num_blocks = int(answer.get("num_blocks", 0))
        except (
            *TIMEOUT_ERRORS,
            OSError,
            RuntimeError,
            ValueError,
            TypeError,
            KeyError,
        ) as exc:
            self.stats.nixl_failed_transfers += 1
            text = f"KV load from {params.get('remote_host')}:{params.get('remote_port')} failed: {exc or type(exc).__name__}"
            LOG.warning(
                "Request %s: %s (kv_load_failure_policy=%s)",
                req.request_id,
                text,
                self.kv.failure_policy,
            )
            return text
        if num_tokens != req.prompt_tokens:
            LOG.warning(
                "Request %s: producer held %d tokens, prompt has %d",
                req.request_id,
                num_tokens,
                req.prompt_tokens,
            )
        profile = self.cfg.profile
        transport = self.cfg.transport
        nbytes = num_tokens * profile.kv_bytes_per_token
        overhead = profile.transfer_overhead_ms[transport] / 1000.0 * profile.time_scale
        wire = nbytes * 8 / (profile.bandwidth_gbps[transport] * 1e9) * profile.time_scale
        now = loop.time()
        wire_start = max(now + overhead, self._link_free_at)
        done = wire_start + wire
        self._link_free_at = done
        await asyncio.sleep(max(done - loop.time(), 0))
        xfer_s = done - now
        self.stats.xfer_time.observe(xfer_s)
        self.stats.post_time.observe(overhead)
        self.stats.xfer_bytes.observe(nbytes)
        self.stats.descriptors.observe(num_blocks)
        req.xfer_s = loop.time() - t0
        return None


# --------------------------------------------------------------------------- ground-truth trace


def _clocks() -> tuple[float, float]:
    """(time.monotonic(), time.time()) read back to back."""
    return time.monotonic(), time.time()


@dataclass(eq=False)
class TraceRecord:
    """What the server did for one request, on its own clocks (see GET /sim/trace)."""

    seq: int
    request_id: str
    endpoint: str
    stream: bool
    prompt_tokens: int
    max_tokens: int
    arrival_mono: float
    arrival_wall: float
    status: str = "in_flight"
    kv: str = "local"
    token_mono: array = field(default_factory=lambda: array("d"))
    token_wall: array = field(default_factory=lambda: array("d"))
    completion_tokens: int = 0
    first_mono: float | None = None
    first_wall: float | None = None
    end_mono: float | None = None
    end_wall: float | None = None
    headers_mono: float | None = None
    prompt_sha1: str | None = None
    req: SimRequest | None = None

    def tokens_written(self, count: int) -> None:
        """``count`` tokens are about to be handed to the transport in one write."""
        mono, wall = _clocks()
        if self.first_mono is None:
            self.first_mono, self.first_wall = mono, wall
        for _ in range(count):
            self.token_mono.append(mono)
            self.token_wall.append(wall)
        self.completion_tokens += count

    def body_written(self, tokens: int) -> None:
        """A non-streaming answer carrying ``tokens`` tokens is about to be returned."""
        self.end_mono, self.end_wall = _clocks()
        self.first_mono, self.first_wall = self.end_mono, self.end_wall
        self.completion_tokens = tokens

    def finish(self, status: str) -> None:
        """Close the record (first status wins; end time kept if already set)."""
        if self.status == "in_flight":
            self.status = status
        if self.end_mono is None:
            self.end_mono, self.end_wall = _clocks()

    def to_json(self) -> dict[str, Any]:
        req = self.req
        ttft = None if self.first_mono is None else round((self.first_mono - self.arrival_mono) * 1000.0, 6)
        return {
            "request_id": self.request_id,
            "seq": self.seq,
            "endpoint": self.endpoint,
            "stream": self.stream,
            "status": self.status,
            "kv": req.source if req is not None else self.kv,
            "prompt_tokens": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "completion_tokens": self.completion_tokens,
            "arrival_mono": self.arrival_mono,
            "arrival_wall": self.arrival_wall,
            "headers_mono": self.headers_mono,
            "prompt_sha1": self.prompt_sha1,
            "scheduled_mono": req.t_scheduled if req is not None else None,
            "engine_first_token_mono": req.t_first_token if req is not None else None,
            "first_token_mono": self.first_mono,
            "first_token_wall": self.first_wall,
            "end_mono": self.end_mono,
            "end_wall": self.end_wall,
            "ttft_ms": ttft,
            "token_mono": self.token_mono.tolist(),
            "token_wall": self.token_wall.tolist(),
        }


def prompt_fingerprint(body: dict[str, Any], chat: bool) -> str | None:
    """sha1 hex of a text prompt's UTF-8 bytes, so clients that send no request id can be matched."""
    prompt = None if chat else body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        return None
    return hashlib.sha1(prompt.encode("utf-8", errors="surrogatepass")).hexdigest()


class TraceStore:
    """The most recent ``max_requests`` TraceRecords, oldest first (0 disables tracing)."""

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self.records: deque[TraceRecord] = deque()
        self.dropped = 0
        self._seq = 0

    def start(
        self,
        request_id: str,
        endpoint: str,
        stream: bool,
        prompt_tokens: int,
        max_tokens: int,
        arrival: tuple[float, float],
    ) -> TraceRecord | None:
        """Open a record for an accepted request; None when tracing is off."""
        if self.max_requests <= 0:
            return None
        self._seq += 1
        rec = TraceRecord(self._seq, request_id, endpoint, stream, prompt_tokens, max_tokens, *arrival)
        self.records.append(rec)
        while len(self.records) > self.max_requests:
            self.records.popleft().req = None
            self.dropped += 1
        return rec

    def select(self, request_id: str | None) -> list[TraceRecord]:
        if request_id is None:
            return list(self.records)
        return [r for r in self.records if r.request_id == request_id]

    def remove(self, records: list[TraceRecord]) -> None:
        if len(records) == len(self.records):
            self.records.clear()
        else:
            gone = {id(r) for r in records}
            self.records = deque(r for r in self.records if id(r) not in gone)
        for rec in records:
            rec.req = None


# --------------------------------------------------------------------------- HTTP


def error_body(message: str, err_type: str, status: int) -> dict[str, Any]:
    """vLLM's error JSON shape."""
    return {"error": {"message": message, "type": err_type, "param": None, "code": status}}


def error_response(message: str, err_type: str = "BadRequestError", status: int = 400) -> web.Response:
    """An HTTP error answer in vLLM's JSON shape."""
    return web.json_response(error_body(message, err_type, status), status=status)


def _count_text(text: Any) -> list[str]:
    """Whitespace words stand in for tokens: no tokenizer is available on CPU-only test nodes."""
    if not isinstance(text, str):
        raise RequestError("prompt must be a string or a list of token ids")
    return text.split()


def prompt_units(body: dict[str, Any], chat: bool) -> list[Any]:
    """The prompt as a list of "tokens" (ids, or words as the documented approximation)."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list")
        words: list[Any] = []
        for msg in messages:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, str):
                words.extend(content.split())
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        words.extend(part["text"].split())
        return words
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise RequestError("the sim accepts one prompt per request: a string or a list of token ids")
        return prompt
    if prompt is None:
        raise RequestError("prompt is required")
    return _count_text(prompt)


def requested_max_tokens(body: dict[str, Any], chat: bool, prompt_tokens: int, max_model_len: int) -> int:
    """vLLM defaults: 16 for completions, the rest of the context for chat."""
    value = body.get("max_completion_tokens") if chat else None
    if value is None:
        value = body.get("max_tokens")
    if value is None:
        return 16 if not chat else max(max_model_len - prompt_tokens, 1)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"max_tokens must be an integer, got {value!r}")
    if value < 1:
        raise RequestError(f"max_tokens must be at least 1, got {value}.")
    return value


class SimServer:
    """HTTP front end (OpenAI-compatible, vLLM-flavoured) bound to one Engine."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.engine = Engine(cfg, self.stats)
        self.kv = KVTransfer(cfg, cfg.kv, self.stats) if cfg.kv is not None else None
        self.engine_task: asyncio.Task[None] | None = None
        self.served_requests = 0
        self.background: list[asyncio.Task[None]] = []
        self.trace = TraceStore(cfg.trace_max_requests)

    def make_app(self) -> web.Application:
        """The routes vLLM's OpenAI server exposes that the pipeline uses (large bodies allowed)."""
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ping", self.health)
        app.router.add_post("/ping", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/sim/trace", self.sim_trace)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    # ---- simple routes
    async def health(self, request: web.Request) -> web.Response:
        """200 with an empty body while the engine loop lives, like vLLM's /health."""
        if self.engine_task is None or self.engine_task.done():
            return error_response("engine is dead", "EngineDeadError", 500)
        if self.cfg.fault.never_healthy:
            return error_response("DISAGG_SIM_FAULT never_healthy: this server never becomes healthy", "ServiceUnavailableError", 503)
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        """The model card; clients such as vllm bench read the model id from here."""
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.cfg.served_model_name,
                        "object": "model",
                        "created": int(self.stats.created),
                        "owned_by": "vllm",
                        "root": self.cfg.model,
                        "parent": None,
                        "max_model_len": self.cfg.max_model_len,
                    }
                ],
            }
        )

    async def version(self, request: web.Request) -> web.Response:
        """Marks the server as simulated and reports the KV transport actually in use."""
        return web.json_response(
            {
                "version": "sim",
                "simulated": True,
                "kv_transport": self.cfg.transport if self.kv is not None else None,
                "kv_role": self.cfg.kv.role if self.cfg.kv is not None else None,
                "engine_id": self.kv.engine_id if self.kv is not None else None,
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition (content type of prometheus_client 0.0.4)."""
        return web.Response(
            text=self.render_metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Version": "0.0.4"},
        )

    async def sim_trace(self, request: web.Request) -> web.Response:
        """Sim-only ground truth: per-request server-clock timings (module docstring)."""
        request_id = request.query.get("request_id")
        clear = request.query.get("clear", "").lower() in ("1", "true", "yes")
        records = self.trace.select(request_id)
        now_mono, now_wall = _clocks()
        body = {
            "object": "sim.trace",
            "enabled": self.trace.max_requests > 0,
            "max_requests": self.trace.max_requests,
            "stored": len(self.trace.records),
            "dropped": self.trace.dropped,
            "now_mono": now_mono,
            "now_wall": now_wall,
            "requests": [r.to_json() for r in records],
        }
        if clear:
            self.trace.remove(records)
        return web.Response(text=json.dumps(body), content_type="application/json")

    def render_metrics(self) -> str:
        """All metric families; NIXL ones only with a connector, as vLLM registers them."""
        s = self.stats
        base = {"engine": "0", "model_name": self.cfg.served_model_name}
        out: list[str] = []
        _render_gauge(
            out,
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            base,
            self.engine.num_running,
        )
        _render_gauge(
            out,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            base,
            self.engine.num_waiting,
        )
        _render_counter(
            out,
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            [(base, s.prompt_tokens)],
            s.created,
        )
        _render_counter(
            out,
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            [(base, s.generation_tokens)],
            s.created,
        )
        _render_counter(
            out,
            "vllm:request_success",
            "Count of successfully processed requests.",
            [({**base, "finished_reason": r}, s.finished[r]) for r in FINISH_REASONS],
            s.created,
        )
        _render_counter(
            out,
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            [(base, s.prefix_queries)],
            s.created,
        )
        _render_counter(
            out,
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            [(base, s.prefix_hits)],
            s.created,
        )
        _render_counter(
            out,
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            [({**base, "source": k}, s.by_source[k]) for k in TOKEN_SOURCES],
            s.created,
        )
        if self.kv is not None:
            for hist in (s.xfer_time, s.post_time, s.xfer_bytes, s.descriptors):
                hist.render(out, base, s.created)
            _render_counter(
                out,
                "vllm:nixl_num_failed_transfers",
                "Number of failed NIXL KV Cache transfers.",
                [(base, s.nixl_failed_transfers)],
                s.created,
            )
            _render_counter(
                out,
                "vllm:nixl_num_failed_notifications",
                "Number of failed NIXL KV Cache notifications.",
                [(base, s.nixl_failed_notifications)],
                s.created,
            )
            _render_counter(
                out,
                "vllm:nixl_num_kv_expired_reqs",
                "Number of requests that had their KV expire. NOTE: This metric is tracked on the P instance.",
                [(base, s.nixl_expired)],
                s.created,
            )
            _render_counter(
                out,
                "vllm:nixl_num_notifications_after_expiry",
                "Number of KV read notifications that arrived after the lease expired.",
                [(base, s.nixl_after_expiry)],
                s.created,
            )
        return "\n".join(out) + "\n"

    # ---- completions
    async def completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions."""
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        return await self._serve(request, chat=True)

    def _crash_if_due(self, ordinal: int) -> None:
        """DISAGG_SIM_FAULT crash_after=N: die abruptly during the (N+1)-th request."""
        if self.cfg.fault.crash_after is not None and ordinal == self.cfg.fault.crash_after + 1:
            LOG.error("DISAGG_SIM_FAULT: simulated crash while serving request #%d", ordinal)
            sys.stderr.flush()
            os._exit(70)

    async def _stream_faults(self, resp: web.StreamResponse, req: SimRequest, ordinal: int) -> None:
        """DISAGG_SIM_FAULT hang_mid_stream / malformed_sse, right after a stream's first token."""
        fault = self.cfg.fault
        if fault.malformed_sse_from is not None and ordinal >= fault.malformed_sse_from:
            LOG.error("DISAGG_SIM_FAULT: broken SSE data line in request #%d", ordinal)
            await resp.write(b'data: {"choices": [{"text": \n\n')  # the same bytes every time: errors group in the result
        if fault.hang_mid_stream is not None and ordinal == fault.hang_mid_stream:
            LOG.error("DISAGG_SIM_FAULT: request #%d stops sending tokens and holds its connection", ordinal)
            self.engine.abort(req)  # the engine moves on; this connection just never hears more
            await asyncio.Event().wait()  # until the client disconnects (the handler is cancelled)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        """Validate, run the NixlConnector per-request protocol, then stream or return the result."""
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        try:
            raw = await request.read()
            arrival_clocks = _clocks()  # the whole request is in: the trace's arrival
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response("Invalid JSON body")
        if not isinstance(body, dict):
            return error_response("request body must be a JSON object")
        model = body.get("model")
        if model is not None and model not in (
            self.cfg.served_model_name,
            self.cfg.model,
        ):
            return error_response(f"The model `{model}` does not exist.", "NotFoundError", 404)
        try:
            units = prompt_units(body, chat)
            n_prompt = len(units)
            if n_prompt == 0:
                raise RequestError("The decoder prompt cannot be empty")
            max_tokens = requested_max_tokens(body, chat, n_prompt, self.cfg.max_model_len)
        except RequestError as exc:
            return error_response(exc.message, exc.err_type, exc.status)
        limit = self.cfg.max_model_len
        if n_prompt + max_tokens > limit:
            return error_response(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )
        stream = bool(body.get("stream", False))
        stream_options = body.get("stream_options") or {}
        include_usage = bool(stream_options.get("include_usage")) if isinstance(stream_options, dict) else False
        kv_in = body.get("kv_transfer_params") if self.kv is not None else None
        kv_in = kv_in if isinstance(kv_in, dict) else None
        remote_decode = kv_in is not None and kv_in.get("do_remote_decode") is True
        remote_prefill = kv_in is not None and kv_in.get("do_remote_prefill") is True

        base_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        resp_id = f"{'chatcmpl' if chat else 'cmpl'}-{base_id}"
        hashes = block_hash_chain(units, self.cfg.block_size) if self.cfg.enable_prefix_caching else []
        req = SimRequest(resp_id, n_prompt, max_tokens, hashes, arrival)
        trace = self.trace.start(base_id, "chat" if chat else "completions", stream, n_prompt, max_tokens, arrival_clocks)
        if trace is not None:
            trace.req = req
            trace.headers_mono = arrival
            trace.prompt_sha1 = prompt_fingerprint(body, chat)
        self.served_requests += 1
        ordinal = self.served_requests
        created = int(time.time())
        fault = self.cfg.fault
        if fault.http_500_from is not None and ordinal >= fault.http_500_from:
            LOG.error("DISAGG_SIM_FAULT: answering request #%d with HTTP 500", ordinal)
            self.stats.finished["error"] += 1
            if trace is not None:
                trace.finish("error")
            return error_response("DISAGG_SIM_FAULT http_500: simulated engine error", "InternalServerError", 500)

        resp: web.StreamResponse | None = None
        if stream:  # vLLM sends the SSE headers before any engine work
            resp = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
            resp.content_type = "text/event-stream"
            resp.charset = "utf-8"
            await resp.prepare(request)
        try:
            if remote_prefill:
                assert self.kv is not None
                failure = await self.kv.load(req, kv_in or {})
                if failure is None:
                    req.needs_prefill = False
                    req.source = "remote_prefill"
                    self.engine.remember_blocks(req)
                    self.stats.prompt_tokens += n_prompt
                    self.stats.by_source["external_kv_transfer"] += n_prompt
                elif self.cfg.kv is not None and self.cfg.kv.failure_policy == "fail":
                    req.finished = True
                    self.stats.finished["error"] += 1
                    if trace is not None:
                        trace.finish("error")
                    return await self._fail(request, resp, failure, req)
                else:
                    req.source = "recompute"
            elif remote_decode:
                req.source = "remote_decode"
            if req.aborted:
                return resp or web.Response(status=499)
            self.engine.submit(req)
            if resp is not None:
                await self._stream(resp, req, chat, created, include_usage, ordinal, trace)
                result: web.StreamResponse = resp
            else:
                await req.wait_beyond(0)
                self._crash_if_due(ordinal)
                while not req.finished and not req.aborted:
                    await req.wait_beyond(req.generated)
                kv_out = self.kv.create_lease(req) if (remote_decode and self.kv is not None and not fault.no_kv_params) else None
                result = web.json_response(self._full_body(req, chat, created, kv_out))
                if trace is not None and req.finished:
                    trace.body_written(req.generated)
            self._log_finished(req, loop.time())
            return result
        except ConnectionError:
            self.engine.abort(req)
            return resp or web.Response(status=499)
        finally:
            if not req.finished:
                self.engine.abort(req)
            if trace is not None:
                trace.finish("aborted" if req.aborted or not req.finished else "ok")

    async def _fail(
        self,
        request: web.Request,
        resp: web.StreamResponse | None,
        message: str,
        req: SimRequest,
    ) -> web.StreamResponse:
        """End a request whose KV load failed under kv_load_failure_policy=fail."""
        LOG.info(
            "Finished request %s: kv=remote_prefill status=error (%s)",
            req.request_id,
            message,
        )
        if resp is None:
            return error_response(message, "InternalServerError", 500)
        payload = json.dumps(error_body(message, "InternalServerError", 500))
        await resp.write(f"data: {payload}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp

    def _full_body(self, req: SimRequest, chat: bool, created: int, kv_out: dict[str, Any] | None) -> dict[str, Any]:
        """The non-streaming response; P's answer carries kv_transfer_params at top level."""
        text = TOKEN_TEXT * req.generated
        usage = {
            "prompt_tokens": req.prompt_tokens,
            "total_tokens": req.prompt_tokens + req.generated,
            "completion_tokens": req.generated,
            "prompt_tokens_details": None,
        }
        if chat:
            choice = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "reasoning_content": None,
                    "tool_calls": [],
                },
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
            return {
                "id": req.request_id,
                "object": "chat.completion",
                "created": created,
                "model": self.cfg.served_model_name,
                "choices": [choice],
                "usage": usage,
                "prompt_logprobs": None,
                "kv_transfer_params": kv_out,
            }
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        return {
            "id": req.request_id,
            "object": "text_completion",
            "created": created,
            "model": self.cfg.served_model_name,
            "choices": [choice],
            "usage": usage,
            "kv_transfer_params": kv_out,
        }

    def _frames(self, req: SimRequest, chat: bool, created: int) -> tuple[bytes, bytes, bytes]:
        """Pre-serialised SSE frames (middle token, last token, chat role) - one dumps per request."""
        head = {
            "id": req.request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": self.cfg.served_model_name,
        }

        def frame(choice: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n"

        def token_choice(finish: str | None) -> dict[str, Any]:
            if chat:
                return {
                    "index": 0,
                    "delta": {"content": TOKEN_TEXT},
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                }
            return {
                "index": 0,
                "text": TOKEN_TEXT,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }

        role = (
            frame(
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
            if chat
            else b""
        )
        return frame(token_choice(None)), frame(token_choice("length")), role

    async def _stream(
        self,
        resp: web.StreamResponse,
        req: SimRequest,
        chat: bool,
        created: int,
        include_usage: bool,
        ordinal: int,
        trace: TraceRecord | None = None,
    ) -> None:
        """Write each token as soon as the engine emits it; coalesce only if the writer fell behind.

        ``trace`` (if any) gets the instant each write is handed to the transport:
        aiohttp's ``write`` calls ``transport.write`` synchronously before it may
        await a drain, so the stamp taken just before it is that instant.
        """
        middle, last, role = self._frames(req, chat, created)
        sent = 0
        while sent < req.max_tokens:
            await req.wait_beyond(sent)
            if req.aborted:
                return
            n = req.generated
            if n <= sent:
                continue
            k = n - sent
            data = middle * (k - 1) + (last if n >= req.max_tokens else middle)
            if sent == 0:
                data = role + data
            if trace is not None:
                trace.tokens_written(k)
            await resp.write(data)
            if sent == 0:
                self._crash_if_due(ordinal)
                await self._stream_faults(resp, req, ordinal)
            sent = n
        if include_usage:
            usage = {
                "id": req.request_id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": self.cfg.served_model_name,
                "choices": [],
                "usage": {
                    "prompt_tokens": req.prompt_tokens,
                    "total_tokens": req.prompt_tokens + req.generated,
                    "completion_tokens": req.generated,
                },
            }
            await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        if trace is not None:
            trace.finish("ok")

    def _log_finished(self, req: SimRequest, now: float) -> None:
        """One log line per request with its simulated timings, for debugging runs from logs."""

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.1f}"

        queue = None if req.t_scheduled is None else req.t_scheduled - req.arrival - req.xfer_s
        ttft = None if req.t_first_token is None else req.t_first_token - req.arrival
        LOG.info(
            "Finished request %s: status=%s kv=%s prompt_tokens=%d cached_tokens=%d "
            "completion_tokens=%d queue_ms=%s prefill_ms=%s kv_xfer_ms=%s ttft_ms=%s "
            "e2e_ms=%s",
            req.request_id,
            "aborted" if req.aborted else "ok",
            req.source,
            req.prompt_tokens,
            req.cached_tokens,
            req.generated,
            ms(queue),
            ms(req.prefill_s if req.needs_prefill else 0.0),
            ms(req.xfer_s),
            ms(ttft),
            ms(now - req.arrival),
        )


# --------------------------------------------------------------------------- main


async def serve(cfg: ServeConfig) -> int:
    """Simulate engine start-up, bind the listeners, run until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = SimServer(cfg)
    startup = cfg.profile.startup_s * cfg.profile.time_scale
    if cfg.fault.slow_start_s is not None:
        startup = cfg.fault.slow_start_s
    t0 = time.monotonic()
    if server.kv is not None:  # vLLM starts the NIXL handshake listener during engine init
        try:
            await server.kv.start()
        except OSError as exc:
            LOG.error(
                "Cannot bind NIXL side channel tcp://%s:%d: %s",
                cfg.side_host,
                cfg.side_port,
                exc,
            )
            return 1
        LOG.info(
            "NIXL side channel listening on %s:%d (engine_id=%s)",
            cfg.side_host,
            cfg.side_port,
            server.kv.engine_id,
        )
    try:
        await asyncio.wait_for(stop.wait(), timeout=startup)
    except TIMEOUT_ERRORS:
        pass
    if stop.is_set():
        LOG.info("Stopped during start-up")
        return 0
    LOG.info(
        "init engine (profile, create kv cache, warmup model) took %.2f seconds",
        time.monotonic() - t0,
    )
    server.engine_task = loop.create_task(server.engine.run())
    if server.kv is not None:
        server.background.append(loop.create_task(server.kv.sweep_leases()))
    try:
        runner = web.AppRunner(server.make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.3)
    except TypeError:  # aiohttp < 3.9 has no runner-level shutdown_timeout
        runner = web.AppRunner(server.make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port)
    try:
        await site.start()
    except OSError as exc:
        LOG.error("Cannot bind http://%s:%d: %s", cfg.host, cfg.port, exc)
        return 1
    LOG.info("Starting vLLM API server on http://%s:%d", cfg.host, cfg.port)
    waiter = loop.create_task(stop.wait())
    await asyncio.wait([waiter, server.engine_task], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if not waiter.done():
        LOG.error("Engine loop died: %r", server.engine_task.exception())
        code = 1
    LOG.info("Shutting down")
    if server.kv is not None and server.kv.server is not None:
        server.kv.server.close()
    for task in (*server.background, server.engine_task, waiter):
        task.cancel()
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=0.8)
    except TIMEOUT_ERRORS:
        LOG.warning("HTTP shutdown timed out; exiting anyway")
    return code


def main(argv: list[str] | None = None) -> int:
    """Parse, log the effective configuration, serve; return the process exit status."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(levelname)s %(asctime)s.%(msecs)03d [vllm_sim.py] %(message)s",
        datefmt="%m-%d %H:%M:%S",
    )
    try:
        cfg = parse_cli(sys.argv[1:] if argv is None else argv, dict(os.environ))
    except ConfigError as exc:
        print(f"vllm_sim.py: error: {exc}", file=sys.stderr)
        return 2
    if cfg.ignored:
        LOG.info("Ignoring flags not simulated: %s", " ".join(cfg.ignored))
    LOG.info("Simulation timing profile: %s", json.dumps(asdict(cfg.profile), sort_keys=True))
    LOG.info(
        "vllm serve (sim) model=%s served_model_name=%s tp=%d max_model_len=%d block_size=%d "
        "prefix_caching=%s max_num_seqs=%d max_num_batched_tokens=%s gpu_memory_utilization=%s seed=%s",
        cfg.model,
        cfg.served_model_name,
        cfg.tensor_parallel_size,
        cfg.max_model_len,
        cfg.block_size,
        cfg.enable_prefix_caching,
        cfg.max_num_seqs,
        cfg.max_num_batched_tokens,
        cfg.gpu_memory_utilization,
        cfg.seed,
    )
    if cfg.kv is not None:
        LOG.info(
            "KV transfer: connector=%s role=%s kv_load_failure_policy=%s backends=%s transport=%s side_channel=%s:%d",
            cfg.kv.connector,
            cfg.kv.role,
            cfg.kv.failure_policy,
            cfg.kv.backends,
            cfg.transport,
            cfg.side_host,
            cfg.side_port,
        )
    if cfg.fault.active:
        LOG.warning("DISAGG_SIM_FAULT active (test-only fault injection): %s", os.environ.get("DISAGG_SIM_FAULT"))
    code = asyncio.run(serve(cfg))
    logging.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
