#!/usr/bin/env python3
"""The benchmark client for a pattern with a workload (plan `workload`, docs/workloads.md).

Takes every option of benchmark_common.py, plus ``--workload-json`` (the plan's workload
object) and ``--metrics-url`` (once per server that prefills, whose prefix-cache counters
are read before the warmup and after the measured phase). The result is the default
client's, with a ``workload`` block: the workload, its expected prefix-cache hit rate and
the rate the servers measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path[:1] != [_HERE]:
    sys.path.insert(0, _HERE)

from bench_client.model import ServerUnreachable  # noqa: E402
from bench_client.output import format_summary, write_json_atomic  # noqa: E402
from bench_client.result import build_result  # noqa: E402
from bench_client.workloads.prefix_counters import measured_rate, read_counters  # noqa: E402
from bench_client.workloads.run import execute_requests, workload_requests  # noqa: E402
from benchmark_common import parse_args  # noqa: E402

OWN_OPTIONS = ("--workload-json", "--metrics-url")


def split_argv(argv: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """This script's own options (each followed by one value) apart from the shared ones."""
    own: dict[str, list[str]] = {name: [] for name in OWN_OPTIONS}
    rest: list[str] = []
    items = iter(argv)
    for item in items:
        if item in own:
            value = next(items, None)
            if value is None:
                sys.exit(f"benchmark_workload: {item} needs a value")
            own[item].append(value)
        else:
            rest.append(item)
    if len(own["--workload-json"]) != 1:
        sys.exit("benchmark_workload: give --workload-json exactly once")
    return own, rest


def main(argv: Sequence[str] | None = None) -> int:
    own, rest = split_argv(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(rest)
    try:
        workload: dict[str, Any] = json.loads(own["--workload-json"][0])
        requests = workload_requests(cfg, workload)
    except (ValueError, KeyError, TypeError) as exc:
        sys.exit(f"benchmark_workload: --workload-json: {exc}")
    urls = own["--metrics-url"]
    try:
        before = read_counters(urls)
        run = asyncio.run(execute_requests(cfg, requests))
        after = read_counters(urls)
    except ServerUnreachable as exc:
        print(f"benchmark_workload: server unreachable: {exc}", file=sys.stderr)
        return 1
    result = build_result(cfg, run)
    result["workload"] = {
        **workload,
        "expected": requests.expected,
        "measured": {**measured_rate(before, after), "servers": urls, "counted": "around the benchmark, warmup included"},
    }
    try:
        write_json_atomic(cfg.result_file, result)
    except (OSError, TypeError, ValueError) as exc:
        print(f"benchmark_workload: cannot write {cfg.result_file}: {exc}", file=sys.stderr)
        return 1
    print(format_summary(result))
    print(f"workload {workload['kind']}: expected prefix hit rate {requests.expected['prefix_hit_rate']:.3f}, "
          f"measured {result['workload']['measured']['hit_rate']}")
    print(f"result written to {cfg.result_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
