#!/usr/bin/env python3
"""Phase-agnostic streaming benchmark client for OpenAI-compatible vLLM servers.

Metrics are defined exactly as ``vllm bench serve`` defines them, so that the
numbers stay comparable with vLLM's own client; this file is the command line
and ``main``, and its parts live in ``bench_client/`` beside it. What is
measured, how, and why (load shapes, goodput, prompts, result file, exit
codes) is in docs/node-programs.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

# The parts sit in bench_client/ beside this file. Put this folder first on
# sys.path so they are found however the file is started: as a script, loaded
# from its path by importlib (the tests), or under a vLLM venv's python.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path[:1] != [_HERE]:
    sys.path.insert(0, _HERE)

from bench_client.load import arrival_schedule, run_all_at_once, run_closed_loop, run_open_loop  # noqa: E402
from bench_client.metrics import GOODPUT_METRICS, achieved_load, calculate_metrics, percentile_key, slo_met  # noqa: E402
from bench_client.model import (  # noqa: E402
    CLIENT_NAME,
    ERROR_BODY_EXCERPT_CHARS,
    NO_CONTENT_ERROR,
    READ_BUFSIZE,
    BenchConfig,
    RequestOutcome,
    RequestSpec,
    RunOutput,
    ServerUnreachable,
)
from bench_client.output import format_summary, write_json_atomic  # noqa: E402
from bench_client.prompts import (  # noqa: E402
    CHAT_WORDS,
    build_prompts,
    build_specs,
    chat_payload,
    chat_text_from_ids,
    completions_payload,
    prompt_id_matrix,
)
from bench_client.result import build_result, request_record  # noqa: E402
from bench_client.runner import check_reachable, execute, run_benchmark  # noqa: E402
from bench_client.sse import SSEParser  # noqa: E402
from bench_client.stream import request_openai_chat_completions, request_openai_completions  # noqa: E402

# What this module offered before it was split, still importable from here.
__all__ = [
    "CHAT_WORDS",
    "CLIENT_NAME",
    "DEFAULT_PERCENTILES",
    "ERROR_BODY_EXCERPT_CHARS",
    "GOODPUT_METRICS",
    "NO_CONTENT_ERROR",
    "READ_BUFSIZE",
    "BenchConfig",
    "RequestOutcome",
    "RequestSpec",
    "RunOutput",
    "SSEParser",
    "ServerUnreachable",
    "achieved_load",
    "arrival_schedule",
    "build_parser",
    "build_prompts",
    "build_result",
    "build_specs",
    "calculate_metrics",
    "chat_payload",
    "chat_text_from_ids",
    "check_reachable",
    "completions_payload",
    "execute",
    "format_summary",
    "main",
    "parse_args",
    "parse_goodput",
    "percentile_key",
    "prompt_id_matrix",
    "request_openai_chat_completions",
    "request_openai_completions",
    "request_record",
    "run_all_at_once",
    "run_benchmark",
    "run_closed_loop",
    "run_open_loop",
    "slo_met",
    "write_json_atomic",
]

DEFAULT_PERCENTILES = "50,90,95,99"


def _parse_float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}")
    return value


def _positive_rate(text: str) -> float:
    """--request-rate: a number > 0, or inf."""
    value = _parse_float(text, "--request-rate")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--request-rate must be > 0 (or inf), got {text!r}")
    return value


def _positive_burstiness(text: str) -> float:
    """--burstiness: a number > 0, or inf (fixed gaps)."""
    value = _parse_float(text, "--burstiness")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--burstiness must be > 0 (or inf), got {text!r}")
    return value


def parse_goodput(items: Sequence[str]) -> dict[str, float]:
    """vLLM's ``--goodput KEY:VALUE ...`` -> {key: ms}; ValueError if bad.

    Keys are ttft, tpot, e2el, each at most once; values finite and >= 0.
    """
    slo: dict[str, float] = {}
    for item in items:
        key, sep, raw = item.partition(":")
        key = key.strip().lower()
        if not sep or key not in GOODPUT_METRICS:
            raise ValueError(f"invalid goodput SLO {item!r}: expected KEY:MS with KEY one of {', '.join(GOODPUT_METRICS)}")
        if key in slo:
            raise ValueError(f"goodput SLO {key!r} given twice")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"invalid goodput SLO {item!r}: {raw!r} is not a number of milliseconds") from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"invalid goodput SLO {item!r}: milliseconds must be finite and >= 0")
        slo[key] = value
    if not slo:
        raise ValueError("--goodput needs at least one KEY:MS")
    return slo


# The options in --help order: (flag, add_argument keywords).
OPTIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "--base-url",
        dict(
            default="http://127.0.0.1:8000",
            help="Server or proxy root, e.g. http://10.0.0.5:8000 (default: %(default)s).",
        ),
    ),
    (
        "--endpoint",
        dict(
            default="/v1/completions",
            help="API path: /v1/completions (token-id prompts, exact length) or "
            "/v1/chat/completions (text prompts, approximate length). "
            "Default: %(default)s.",
        ),
    ),
    (
        "--model",
        dict(
            required=True,
            help="Model name sent in every request (as served).",
        ),
    ),
    (
        "--prompt-tokens",
        dict(
            type=int,
            required=True,
            help="Input length: token ids per prompt (exact for /v1/completions).",
        ),
    ),
    (
        "--max-tokens",
        dict(
            type=int,
            required=True,
            help="Output length: max_tokens per request, with ignore_eos so it is reached.",
        ),
    ),
    (
        "--concurrency",
        dict(
            type=int,
            default=1,
            help="Requests in flight for online (closed loop) and for the warmup; "
            "with a finite --request-rate the cap on requests in flight (0 = uncapped, "
            "open loop only); recorded but not used for dispatch when offline (default: %(default)s).",
        ),
    ),
    (
        "--request-rate",
        dict(
            type=_positive_rate,
            default=float("inf"),
            help="Requests per second of an open loop (online only): requests are sent on a "
            "gamma-process schedule fixed up front, as `vllm bench serve --request-rate`; "
            "inf = no schedule, i.e. the closed loop or offline batch (default: inf).",
        ),
    ),
    (
        "--burstiness",
        dict(
            type=_positive_burstiness,
            default=1.0,
            help="Gamma shape of the open-loop inter-arrival times: 1 = Poisson, <1 burstier, "
            ">1 more regular, inf = fixed gaps; as `vllm bench serve --burstiness` (default: %(default)s).",
        ),
    ),
    (
        "--goodput",
        dict(
            nargs="+",
            default=None,
            metavar="KEY:MS",
            help="SLOs for goodput as vLLM's --goodput, e.g. ttft:500 tpot:50 e2el:3000 (keys "
            "ttft, tpot, e2el; milliseconds); a completed request is good if it meets all given SLOs. "
            "Default: none (request_goodput null).",
        ),
    ),
    (
        "--warmup-requests",
        dict(
            type=int,
            default=0,
            help="Requests sent first and excluded from all metrics (default: %(default)s).",
        ),
    ),
    (
        "--num-requests",
        dict(
            type=int,
            required=True,
            help="Measured requests.",
        ),
    ),
    (
        "--measurement-type",
        dict(
            choices=("online", "offline"),
            default="online",
            help="online: closed loop at --concurrency; offline: all measured requests dispatched at once (default: %(default)s).",
        ),
    ),
    (
        "--seed",
        dict(
            type=int,
            default=0,
            help="Seed of numpy's default_rng for prompts (default: %(default)s).",
        ),
    ),
    (
        "--token-id-range",
        dict(
            default="1000:30000",
            help="LOW:HIGH, prompt token ids are drawn from [LOW, HIGH); must hold at "
            "least warmup+num requests ids (distinct first tokens). "
            "Default: %(default)s.",
        ),
    ),
    (
        "--percentiles",
        dict(
            default=DEFAULT_PERCENTILES,
            help="Comma-separated percentiles in [0, 100] reported for ttft/tpot/itl/e2el (default: %(default)s).",
        ),
    ),
    (
        "--request-timeout",
        dict(
            type=float,
            default=600.0,
            help="Total time allowed per request in seconds; a request over it fails (default: %(default)s).",
        ),
    ),
    (
        "--result-file",
        dict(
            required=True,
            help="Where to write the result JSON (atomically).",
        ),
    ),
    (
        "--label",
        dict(
            default=None,
            help="Free-text label saved in the result and used as X-Request-Id prefix (default prefix: bench).",
        ),
    ),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark_common.py",
        description="Streaming benchmark client for an OpenAI-compatible vLLM server or P/D proxy; metrics as `vllm bench serve`.",
    )
    for flag, keywords in OPTIONS:
        p.add_argument(flag, **keywords)
    return p


# BenchConfig fields taken from the command line exactly as parsed.
AS_PARSED = (
    "model",
    "prompt_tokens",
    "max_tokens",
    "concurrency",
    "warmup_requests",
    "num_requests",
    "measurement_type",
    "seed",
    "request_timeout",
    "result_file",
    "label",
    "request_rate",
    "burstiness",
)


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    """Parse and validate; any problem exits with status 2 via argparse."""
    parser = build_parser()
    a = parser.parse_args(argv)
    for name in ("prompt_tokens", "max_tokens", "num_requests"):
        if getattr(a, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    open_loop = math.isfinite(a.request_rate)
    if open_loop and a.measurement_type == "offline":
        parser.error("--request-rate must be inf with --measurement-type offline (offline sends everything at once)")
    if open_loop and a.concurrency < 0:
        parser.error("--concurrency must be >= 0 with a finite --request-rate (0 = uncapped)")
    if not open_loop and a.concurrency < 1:
        parser.error("--concurrency must be >= 1 (0 = uncapped is only allowed with a finite --request-rate)")
    goodput = None
    if a.goodput is not None:
        try:
            goodput = parse_goodput(a.goodput)
        except ValueError as exc:
            parser.error(f"--goodput: {exc}")
    if a.warmup_requests < 0:
        parser.error("--warmup-requests must be >= 0")
    if not a.request_timeout > 0:
        parser.error("--request-timeout must be > 0")
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", a.token_id_range)
    if not m:
        parser.error("--token-id-range must be LOW:HIGH with non-negative integers")
    low, high = int(m.group(1)), int(m.group(2))
    if high <= low:
        parser.error("--token-id-range: HIGH must be > LOW")
    if high - low < a.warmup_requests + a.num_requests:
        parser.error("--token-id-range holds fewer ids than warmup+num requests (each request needs a distinct first token)")
    try:
        percentiles = [float(x) for x in a.percentiles.split(",") if x.strip()]
    except ValueError:
        parser.error("--percentiles must be comma-separated numbers")
    if not percentiles or any(not 0 <= p <= 100 for p in percentiles):
        parser.error("--percentiles must be numbers in [0, 100]")
    parts = urlsplit(a.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        parser.error("--base-url must look like http://HOST:PORT")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parser.error("--base-url has an invalid port")
    endpoint = a.endpoint if a.endpoint.startswith("/") else "/" + a.endpoint
    if not endpoint.rstrip("/").endswith("completions"):
        parser.error("--endpoint must be /v1/completions or /v1/chat/completions")
    if not a.model.strip():
        parser.error("--model must not be empty")
    return BenchConfig(
        base_url=a.base_url.rstrip("/"),
        endpoint=endpoint,
        token_id_low=low,
        token_id_high=high,
        percentiles=percentiles,
        goodput_slo_ms=goodput,
        **{name: getattr(a, name) for name in AS_PARSED},
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        result = asyncio.run(run_benchmark(cfg))
    except ServerUnreachable as exc:
        print(f"benchmark_common: server unreachable: {exc}", file=sys.stderr)
        return 1
    try:
        write_json_atomic(cfg.result_file, result)
    except (OSError, TypeError, ValueError) as exc:
        print(f"benchmark_common: cannot write {cfg.result_file}: {exc}", file=sys.stderr)
        return 1
    print(format_summary(result))
    print(f"result written to {cfg.result_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
