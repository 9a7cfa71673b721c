"""`list` and `status`: what a phase holds and where each pattern stands (the seed's commands)."""

from __future__ import annotations

import json
from pathlib import Path

from .plan import Plan


def list_lines(plan: Plan) -> list[str]:
    lines = [f"{plan.phase_name}: {plan.name} ({len(plan.patterns)} patterns)"]
    for layer in plan.layers:
        lines.append(f"  {layer.id} [{layer.priority}] {layer.name}")
        for pid in layer.pattern_ids:
            s = plan.pattern(pid).spec
            load = f"rate {s['request_rate']}/s cap {s['concurrency']}" if s.get("request_rate") else f"c={s['concurrency']}"
            lines.append(f"    {pid:32s} {s['backend']:8s} {s['prompt_tokens']:>6d} tok  {load:14s} {s['measurement_type']}")
    return lines


def pattern_state(results: Path, pid: str) -> tuple[str, str]:
    """(state, detail) from the files a run leaves: a result, a failure record, or nothing."""
    result, failure = results / "runs" / f"{pid}.json", results / "failures" / f"{pid}.json"
    if result.exists():
        try:
            r = json.loads(result.read_text())
        except ValueError as exc:
            return "corrupt", f"{result}: {exc}"
        valid = "valid" if r["validity"]["valid"] else "INVALID: " + "; ".join(r["validity"]["reasons"])
        sim = " simulated" if r.get("simulated") else ""
        return "done", f"{r['completed']} req, TTFT p50 {r['median_ttft_ms']:.1f} ms, TPOT p50 {r['median_tpot_ms']:.2f} ms, {valid}{sim}"
    if failure.exists():
        f = json.loads(failure.read_text())
        return "failed", f"step {f['step']} on {f['node']}: {f['cause']}"
    return "pending", ""


def status_lines(plan: Plan, results: Path) -> list[str]:
    lines, counts = [], {}
    for layer in plan.layers:
        lines.append(f"{layer.id} [{layer.priority}] {layer.name}")
        for pid in layer.pattern_ids:
            state, detail = pattern_state(results, pid)
            counts[state] = counts.get(state, 0) + 1
            lines.append(f"  {pid:32s} {state:8s} {detail}")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return [f"{plan.phase_name}: {summary}", *lines]
