#!/usr/bin/env python3
"""Prefill/decode proxy for disaggregated vLLM serving with the NIXL KV connector.

It speaks the protocol of vLLM's toy P/D proxy (P prefills one token and says
where its KV is, D pulls the KV and generates), with the differences that a
proxy inside every measurement needs: little per-request work, no buffering,
errors that name the backend, health checks and Prometheus metrics. This file
is the command line and ``main``; the parts live in ``proxy/`` beside it. The
protocol, headers, errors and metrics are in docs/node-programs.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# The parts sit in proxy/ beside this file. Put this folder first on sys.path
# so they are found however the file is started: as a script, loaded from its
# path by importlib, or under a vLLM venv's python.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path[:1] != [_HERE]:
    sys.path.insert(0, _HERE)

from proxy.backends import http_url  # noqa: E402
from proxy.server import run, serve  # noqa: E402

LOG = logging.getLogger("disagg_proxy")


def add_log_args(parser: argparse.ArgumentParser) -> None:
    """How much the proxy logs: a line per request costs CPU on the measured path."""
    parser.add_argument(
        "--log-every",
        type=int,
        default=1000,
        help="log one successful request in this many at INFO (failures and the first 10 always)",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning"), default="info", help="debug: a line for every request")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI compatible with vLLM's toy proxy (plural and singular spellings)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (logged)")
    parser.add_argument("--prefiller-hosts", "--prefiller-host", nargs="+", default=["localhost"])
    parser.add_argument("--prefiller-ports", "--prefiller-port", nargs="+", type=int, default=[8100])
    parser.add_argument("--decoder-hosts", "--decoder-host", nargs="+", default=["localhost"])
    parser.add_argument("--decoder-ports", "--decoder-port", nargs="+", type=int, default=[8200])
    parser.add_argument(
        "--unified-hosts",
        nargs="+",
        help="data-parallel replicas of a unified server instead of P/D pairs: each request goes to one, round robin",
    )
    parser.add_argument("--unified-ports", nargs="+", type=int)
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to open a TCP connection to a backend",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=300.0,
        help="seconds a backend may stay silent (no bytes) before it counts as failed",
    )
    parser.add_argument(
        "--health-interval",
        type=float,
        default=2.0,
        help="seconds between health checks (GET /health) of each backend",
    )
    parser.add_argument(
        "--health-timeout",
        type=float,
        default=1.0,
        help="seconds a health check may take before it counts as failed",
    )
    parser.add_argument(
        "--eject-after",
        type=int,
        default=2,
        help="failed health checks in a row that take a backend out of the round robin",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        help="on SIGTERM/SIGINT, seconds in-flight requests may take to finish",
    )
    add_log_args(parser)
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    if (args.unified_hosts is None) != (args.unified_ports is None):
        parser.error("--unified-hosts and --unified-ports go together")
    if args.unified_hosts is not None and any(a.startswith(("--prefiller", "--decoder")) for a in given):
        parser.error("--unified-hosts replaces the prefiller and decoder flags: give one or the other")
    for role, hosts, ports in (
        ("prefiller", args.prefiller_hosts, args.prefiller_ports),
        ("decoder", args.decoder_hosts, args.decoder_ports),
        ("unified", args.unified_hosts or [], args.unified_ports or []),
    ):
        if len(hosts) != len(ports):
            parser.error(f"--{role}-hosts has {len(hosts)} value(s) but --{role}-ports has {len(ports)}; give one port per host")
    if args.health_interval <= 0 or args.health_timeout <= 0:
        parser.error("--health-interval and --health-timeout must be positive")
    if args.eject_after < 1:
        parser.error("--eject-after must be at least 1")
    if args.log_every < 1:
        parser.error("--log-every must be at least 1")
    if args.shutdown_grace < 0:
        parser.error("--shutdown-grace must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 0 after a signal-driven shutdown."""
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s disagg_proxy: %(message)s",
    )
    # Request lines on the hot path: skip what the format does not use (stack walk, thread and
    # process names), as the logging module allows.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    try:
        run(serve(args))
    except OSError as exc:  # typically: port in use, or host not local
        LOG.error("cannot listen on %s: %s", http_url(args.host, args.port), exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
