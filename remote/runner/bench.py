"""The `bench` step: the proxy (if the task has one), /metrics before, the benchmark, /metrics after.

A failure names what died under the benchmark on this node before the request errors, so the
cause is the crash, not its symptoms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
import urllib.error
from pathlib import Path
from typing import Any

from task_runner import Ledger, StepError, pid_alive, run_dir_for, stop_entries, write_json

from .bindings import bind, full_bindings
from .faults import kill_after_s, kill_later, parse_faults
from .health import wait_healthy
from .metrics import EVIDENCE_METRICS, scrape_metrics
from .procs import describe_exit, spawn
from .task import load_task


def _run_benchmark(argv: list[str], run_dir: Path, ledger: Ledger, proxy_proc: subprocess.Popen[bytes] | None,
                   faults: dict[str, str]) -> int:
    """Run the benchmark to its end (with any kill_after_s fault armed); never leave it running."""
    proc = spawn("benchmark", argv, {}, run_dir, ledger)
    by_pid = {e["pid"]: e for e in ledger.load()}
    timers = [kill_later(by_pid[p.pid], kill_after_s(faults[role]), run_dir / "logs" / f"{role}.log")
              for role, p in (("proxy", proxy_proc), ("benchmark", proc)) if role in faults and p is not None]
    try:
        code = proc.wait()
    finally:
        for timer in timers:
            timer.cancel()
        if proc.poll() is None:
            stop_entries([e for e in ledger.load() if e["pid"] == proc.pid], 2.0)
    return code


def _what_died(task: dict[str, Any], ledger: Ledger, proxy_proc: subprocess.Popen[bytes] | None) -> list[str]:
    """The proxy and the servers of this node that are gone after the benchmark, in words."""
    gone = [f"proxy (pid {proxy_proc.pid}) {describe_exit(proxy_proc.poll())} during the benchmark"] if proxy_proc and proxy_proc.poll() is not None else []
    gone += [f"{e['name']} (pid {e['pid']}) is no longer running" for e in ledger.load()
             if e["name"] in {srv["name"] for srv in task["servers"]} and not e.get("stopped_at") and not pid_alive(e["pid"], e.get("starttime"))]
    return gone


def _checked_result(out_dir: Path, code: int, bench: dict[str, Any], prefix: str, explain_log: Path) -> dict[str, Any]:
    """benchmark.json, when the benchmark wrote one and few enough of its requests failed."""
    result_file = out_dir / "benchmark.json"
    if code != 0 or not result_file.exists():
        cause = f"benchmark {describe_exit(code)}" + ("" if result_file.exists() else " and wrote no result")
        raise StepError(prefix + cause, explain_log, code)
    result = json.loads(result_file.read_text())
    failed = int(result.get("failed", 0))
    completed = int(result.get("completed", 0))
    if completed == 0 or failed > int(bench.get("max_failed_requests", 0)):
        errors = "; ".join(f"{e.get('count', '?')}x {e.get('error', e)}" for e in result.get("errors", [])[:3]) if isinstance(result.get("errors"), list) else ""
        raise StepError(prefix + f"{failed} of {failed + completed} measured requests failed (allowed: {bench.get('max_failed_requests', 0)}): {errors}", explain_log)
    return result


def _scrape_after(urls: dict[str, str]) -> tuple[dict[str, dict[str, float]] | None, str]:
    """Every server's counters after the benchmark, or None and why one could not be read."""
    after = {}
    for name, url in urls.items():
        try:
            after[name] = scrape_metrics(url)
        except (urllib.error.URLError, OSError) as exc:  # the server died under the benchmark: the cause says so
            return None, f"cannot read {url} after the benchmark ({getattr(exc, 'reason', exc)})"
    return after, ""


def step_bench(args: argparse.Namespace) -> dict[str, Any]:
    node_dir = Path(args.node_dir)
    task = load_task(node_dir, args.task)
    bench = task.get("benchmark")
    if not bench:
        raise StepError(f"task {args.task} has no benchmark")
    bindings = full_bindings(args, task)
    run_dir = run_dir_for(node_dir, task["pattern"])
    ledger = Ledger(run_dir)
    out_dir = Path(bindings["out_dir"])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    faults = parse_faults(args.fault, {"benchmark", "proxy"} if task.get("proxy") else {"benchmark"})
    timings: dict[str, float] = {}
    proxy_proc: subprocess.Popen[bytes] | None = None
    proxy_log = run_dir / "logs" / "proxy.log"
    if task.get("proxy"):
        proxy = task["proxy"]
        proxy_proc = spawn("proxy", bind(proxy["argv"], bindings), {}, run_dir, ledger)
        timings["proxy_healthy_after_s"] = round(wait_healthy(bind(proxy["health_url"], bindings), float(proxy["health_timeout_s"]), proxy_proc, "proxy", proxy_log), 3)
    # KV evidence from every server of the role (one per instance of the pattern's topology).
    urls = {s["name"]: bind(s["metrics_url"], bindings) for s in task["servers"]}
    before = {name: scrape_metrics(url) for name, url in urls.items()}
    t0 = time.time()
    bench_log = run_dir / "logs" / "benchmark.log"
    code = _run_benchmark(bind(bench["argv"], bindings), run_dir, ledger, proxy_proc, faults)
    t1 = time.time()
    # What died under the benchmark on this node: named in the cause, before the request errors.
    gone = _what_died(task, ledger, proxy_proc)
    explain_log = proxy_log if gone and gone[0].startswith("proxy") else bench_log
    after, unreadable = _scrape_after(urls)
    if task.get("proxy"):
        entries = ledger.load()
        stop_entries(entries, 5.0, only={"proxy"})
        ledger.update(entries)
    prefix = "".join(f"{g}; " for g in gone)
    result = _checked_result(out_dir, code, bench, prefix, explain_log)
    if after is None:
        raise StepError(prefix + unreadable, explain_log)
    readings = [{"source": url, "server": name, "before": before[name], "after": after[name],
                 "delta": {k: after[name][k] - before[name][k] for k in EVIDENCE_METRICS}} for name, url in urls.items()]
    node_result = {
        "benchmark": result,
        "metrics": readings[0],
        **({"instance_metrics": readings} if len(readings) > 1 else {}),
        "bench_started_at": t0,
        "bench_finished_at": t1,
        "timings": timings,
    }
    write_json(run_dir / "node-result.json", node_result)
    return {"completed": int(result.get("completed", 0)), "failed": int(result.get("failed", 0)), "duration_s": round(t1 - t0, 3)}
