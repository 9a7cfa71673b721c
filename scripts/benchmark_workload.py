#!/usr/bin/env python3
"""The benchmark client for a pattern with a workload (plan `workload`, docs/workloads.md).

Takes every option of benchmark_common.py, plus ``--workload-json`` (the plan's workload
object), ``--workload-file`` (a trace workload's deployed trace, checked against the sha256
in the workload) and ``--metrics-url`` (once per server that prefills, whose prefix-cache
counters are read before the warmup and after the measured phase). The result is the default
client's, with a ``workload`` block: the workload, its expected prefix-cache hit rate and
the rate the servers measured.
"""

from __future__ import annotations

import asyncio
import hashlib
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
from bench_client.workloads.run import WorkloadRequests, execute_requests, workload_requests  # noqa: E402
from bench_client.workloads.trace_file import TraceRequest, read_trace  # noqa: E402
from benchmark_common import parse_args  # noqa: E402

OWN_OPTIONS = ("--workload-json", "--workload-file", "--metrics-url")


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


def read_trace_file(workload: dict[str, Any], files: list[str]) -> list[TraceRequest]:
    """The deployed trace of a trace workload, refused unless its bytes are the planned ones."""
    if workload.get("kind") != "trace":
        return []
    if len(files) != 1:
        raise ValueError("a trace workload needs --workload-file exactly once")
    data = open(files[0], "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != workload.get("sha256"):
        raise ValueError(f"{files[0]} has sha256 {digest}, the task was rendered for {workload.get('sha256')}")
    return read_trace(data.decode("utf-8"), workload["format"])


def per_request_outputs(result: dict[str, Any], requests: WorkloadRequests) -> None:
    """Judge each request's output length against what it asked for, not against --max-tokens."""
    if not requests.output_tokens:
        return
    for record in result["requests"]:
        asked = requests.output_tokens[record["index"]]
        record["output_tokens_requested"] = asked
        record["output_tokens_mismatch"] = bool(record["success"] and record["output_tokens"] != asked)
    result["output_tokens_mismatch"] = sum(1 for r in result["requests"] if r["output_tokens_mismatch"])


def main(argv: Sequence[str] | None = None) -> int:
    own, rest = split_argv(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(rest)
    try:
        workload: dict[str, Any] = json.loads(own["--workload-json"][0])
        requests = workload_requests(cfg, workload, read_trace_file(workload, own["--workload-file"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"benchmark_workload: cannot build the workload's requests: {exc}")
    urls = own["--metrics-url"]
    try:
        before = read_counters(urls)
        run = asyncio.run(execute_requests(cfg, requests))
        after = read_counters(urls)
    except ServerUnreachable as exc:
        print(f"benchmark_workload: server unreachable: {exc}", file=sys.stderr)
        return 1
    result = build_result(cfg, run)
    per_request_outputs(result, requests)
    if requests.due_s is not None:  # a trace: open loop at its own arrival times
        result.update(load_mode="open_loop", arrival_schedule={"distribution": "trace", "time_scale": requests.facts["time_scale"]})
    result["workload"] = {
        **workload,
        **({"drawn" if workload["kind"] == "lengths" else "replayed": requests.facts} if requests.facts else {}),
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
