#!/usr/bin/env python3
"""Stand-in for ``vllm serve`` ("engine: sim") that needs no GPU.

It speaks vLLM's HTTP API, command line and NixlConnector per-request
protocol, and replaces the GPU with a timing model, so that the pipeline can
be tested on CPU-only machines. This file is the command line and ``main``;
the parts live in ``sim/`` beside it. The timing model, KV transfer, metrics,
ground-truth trace and fault injection are in docs/node-programs.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import asdict

# The parts sit in sim/ beside this file. Put this folder first on sys.path so
# they are found however the file is started: as a script, loaded from its
# path by importlib, or under a vLLM venv's python.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path[:1] != [_HERE]:
    sys.path.insert(0, _HERE)

from sim.config import TRACE_MAX_REQUESTS, ServeConfig, extract_dotted_kv, human_int, parse_kv, pick_transport  # noqa: E402
from sim.errors import ConfigError  # noqa: E402
from sim.faults import parse_fault  # noqa: E402
from sim.lifecycle import serve  # noqa: E402
from sim.profile import parse_profile  # noqa: E402

LOG = logging.getLogger("vllm_sim")


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
    p.add_argument("--max-model-len", type=human_int, default=None)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--kv-transfer-config", default=None)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--block-size", type=int, default=16)
    return p


def parse_cli(argv: list[str], env: dict[str, str]) -> ServeConfig:
    """Parse ``[--profile-json J] [--node-link F] serve MODEL [flags]`` into a ServeConfig."""
    top = argparse.ArgumentParser(prog="vllm_sim.py", allow_abbrev=False)
    top.add_argument("--profile-json", default=None, help="timing profile (JSON object or @file)")
    top.add_argument(
        "--trace-max-requests",
        type=int,
        default=TRACE_MAX_REQUESTS,
        help="requests kept in the ground-truth trace at GET /sim/trace (0: off)",
    )
    top.add_argument("--node-link", default=None, help="file the node's stand-ins share as one network link (KV transfers)")
    top.add_argument("command", choices=["serve"])
    top.add_argument("rest", nargs=argparse.REMAINDER)
    ns = top.parse_args(argv)
    rest: list[str] = list(ns.rest)
    for flag in ("--profile-json", "--trace-max-requests", "--node-link"):
        if any(a == flag or a.startswith(flag + "=") for a in rest):
            raise ConfigError(f"{flag} must come before 'serve'")
    if ns.trace_max_requests < 0:
        raise ConfigError("--trace-max-requests must be >= 0")
    model: str | None = None
    if rest and not rest[0].startswith("-"):
        model = rest.pop(0)
    dotted, rest = extract_dotted_kv(rest)
    sargs, unknown = _serve_parser().parse_known_args(rest)
    model = model or sargs.model
    if not model:
        raise ConfigError("vllm serve: error: the following arguments are required: model_tag")
    profile = parse_profile(ns.profile_json)
    kv = parse_kv(sargs.kv_transfer_config, dotted)
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
        node_link=ns.node_link,
    )


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
    LOG.info("KV link: %s", f"shared by the node's stand-ins through {cfg.node_link}" if cfg.node_link else "this process's own")
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
