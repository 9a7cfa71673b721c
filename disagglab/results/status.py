"""`list` and `status`: what a phase holds and where each pattern stands (the seed's commands).

Status reads the files a run leaves (results, failure records) and asks Snakemake itself
what is out of date (`snakemake --summary`) and what is running (its incomplete markers
and locks), rather than keeping a second ledger that could disagree with Snakemake's.
Only a pattern with a result can be out of date, so Snakemake is asked about those alone
(not at all for a phase where nothing has run): its DAG is most of status's time.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from disagglab.guard import snakestate
from disagglab.paths import PhaseLayout
from disagglab.plan.model import Plan
from disagglab.plan.topology import topology_text
from disagglab.results.read import CorruptResult, latest_acceptance_note, read_result, result_problem

STATES = ("done", "invalid", "out-of-date", "running", "incomplete", "failed", "pending", "corrupt")
"""`invalid`: a result exists but is marked invalid (e.g. KV never moved); it is not a success."""


@dataclass
class PatternStatus:
    pattern_id: str
    layer: str
    backend: str
    state: str
    detail: str = ""
    metrics: dict[str, Any] | None = None


def list_lines(plan: Plan) -> list[str]:
    lines = [f"{plan.phase_name}: {plan.name} ({len(plan.patterns)} patterns)"]
    for layer in plan.layers:
        lines.append(f"  {layer.id} [{layer.priority}] {layer.name}")
        for pid in layer.pattern_ids:
            s = plan.pattern(pid).spec
            load = f"rate {s['request_rate']}/s cap {s['concurrency']}" if s.get("request_rate") else f"c={s['concurrency']}"
            line = f"    {pid:32s} {s['backend']:8s} {s['prompt_tokens']:>6d} tok  {load:14s} {s['measurement_type']}"
            topology = topology_text(s)
            lines.append(f"{line}  {topology}" if topology else line)
    return lines


def snakemake_summary(targets: list[str], workdir: Path, configfiles: list[str] | None = None) -> dict[str, tuple[str, str]]:
    """output path -> (status, plan) for ``targets`` and everything they are built from, from
    `snakemake --summary`; {} without targets."""
    if not targets:
        return {}
    exe = Path(sys.executable).parent / "snakemake"
    extra = ["--configfile", *configfiles] if configfiles else []
    out = subprocess.run([str(exe), *targets, "--summary", "--nolock", *extra], cwd=workdir,
                         capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"snakemake --summary failed (exit {out.returncode}); status cannot tell what is out of date:\n{tail}")
    rows: dict[str, tuple[str, str]] = {}
    for line in out.stdout.splitlines():
        cols = line.split("\t")
        if len(cols) >= 6 and cols[0] != "output_file":
            rows[cols[0]] = (cols[4], cols[5])
    return rows


def running_outputs(workdir: Path) -> tuple[set[str], bool]:
    """Outputs Snakemake marked incomplete (a job writing them), and whether a lock is held."""
    paths = set(snakestate.incomplete_markers(workdir).values())
    locks = workdir / ".snakemake" / "locks"
    return paths, locks.is_dir() and any(locks.iterdir())


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("completed", "failed", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "output_throughput", "request_goodput")
    return {k: result.get(k) for k in keys}


def pattern_state(results: Path, pid: str) -> tuple[str, str]:
    """(state, detail) from the files a run leaves: a result, a failure record, or nothing."""
    result, failure = PhaseLayout(results).result(pid), PhaseLayout(results).failure(pid)
    if result.exists():
        try:
            r = read_result(result, pid)
        except CorruptResult as exc:
            return "corrupt", f"{result}: {exc.reason}; the next run builds it again"
        valid = "valid" if r["validity"]["valid"] else "INVALID: " + "; ".join(map(str, r["validity"].get("reasons") or []))
        sim = " simulated" if r.get("simulated") else ""
        accepted = latest_acceptance_note(r)
        sim += f"; {accepted}" if accepted else ""
        n = int(r.get("repeats", 1))
        if n > 1:
            st = (r.get("stats") or {}).get("median_ttft_ms") or {}
            half = (st["ci_high"] - st["ci_low"]) / 2 if st.get("ci_low") is not None else None
            spread = f" ±{half:.1f} (95% CI)" if half is not None else ""
            return "done", (f"{n} trials x {r['completed']} req, TTFT p50 {r['median_ttft_ms']:.1f}{spread} ms, "
                            f"TPOT p50 {r['median_tpot_ms']:.2f} ms, {valid}{sim}")
        return "done", f"{r['completed']} req, TTFT p50 {r['median_ttft_ms']:.1f} ms, TPOT p50 {r['median_tpot_ms']:.2f} ms, {valid}{sim}"
    moved = PhaseLayout(results).corrupt_result(pid)
    if moved.exists():
        reason = result_problem(moved, pid) or "moved aside as corrupt"
        return "corrupt", f"{result}: {reason} (moved to {moved}); the next run builds it again"
    done = _finished_trials(results, pid)
    if failure.exists():
        return pattern_state_failure(failure)
    return "pending", f"{len(done)} trial(s) measured: {', '.join(map(str, done))}" if done else ""


def pattern_state_failure(failure: Path) -> tuple[str, str]:
    try:
        f = json.loads(failure.read_text())
        which = f" (trial {f['trial']} of {f['repeats']})" if int(f.get("repeats", 1)) > 1 else ""
        return "failed", f"step {f['step']} on {f['node']}{which}: {f['cause']}"
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return "failed", f"{failure}: unreadable failure record ({exc})"


def _finished_trials(results: Path, pid: str) -> list[int]:
    folder = PhaseLayout(results).trials_dir(pid)
    return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()) if folder.is_dir() else []


def phase_status(plan: Plan, workdir: Path = Path("."), configfiles: list[str] | None = None) -> list[PatternStatus]:
    results = workdir / "results" / plan.phase_name
    from disagglab.guard import leftovers
    from disagglab.guard import phaselock

    states = {pid: pattern_state(results, pid) for pid in plan.patterns}
    with_result = [str(PhaseLayout.of(plan.phase_name).result(pid)) for pid, (state, _) in states.items() if state == "done"]
    summary = snakemake_summary(with_result, workdir, configfiles)
    incomplete, locked = running_outputs(workdir)
    holder = phaselock.holder(results)
    if holder is not None:  # the phase lock knows whether its holder lives (Snakemake's lock files do not)
        locked = phaselock.holder_alive(holder)
    found = leftovers.find(plan.phase_name, workdir)
    cut_short = {e["pattern"] for _, e in found.entries} | {leftovers.pattern_of(p) for p in found.incomplete.values()}
    out = []
    for layer in plan.layers:
        for pid in layer.pattern_ids:
            rel = str(PhaseLayout.of(plan.phase_name).result(pid))
            state, detail = states[pid]
            metrics = None
            trials = f"{PhaseLayout.of(plan.phase_name).trials_dir(pid)}/"
            if pid in cut_short:
                state, detail = "incomplete", (f"cut short when its run was killed ({leftovers.fmt_time(found.since)}); "
                                               f"clean up with `{leftovers.recover_command(plan.phase_name)}`")
            elif rel in incomplete or any(p.startswith(trials) for p in incomplete):
                state, detail = ("running", "Snakemake is running this pattern") if locked else (
                    "incomplete", "a run was killed while measuring it; rerun with --rerun-incomplete")
            elif state == "done":
                result = json.loads((workdir / rel).read_text())
                metrics = _metrics(result)
                if not (result.get("validity") or {}).get("valid", False):
                    state = "invalid"
                # The measurement is in the trial files: their reason ("params changed") is the one to show.
                repeats = plan.pattern(pid).repeats
                rows = [summary.get(f"{trials}{k}.json") for k in range(1, repeats + 1)] + [summary.get(rel)]
                pending = [r for r in rows if r is not None and r[1] == "update pending"]
                if pending:
                    have = set(_finished_trials(results, pid))
                    todo = [k for k in range(1, repeats + 1) if k not in have]
                    reason = f"trial(s) {', '.join(map(str, todo))} of {repeats} not measured yet" if todo else pending[0][0]
                    state, detail = "out-of-date", f"{reason}; {detail}"
                failure = PhaseLayout(results).failure(pid)
                if failure.exists():  # a result stands, but the latest attempt (e.g. an added trial) failed
                    _, why = pattern_state_failure(failure)
                    detail += f"; last attempt failed: {why}"
            out.append(PatternStatus(pid, layer.id, plan.pattern(pid).backend, state, detail, metrics))
    return out


def leftover_note(plan: Plan, workdir: Path = Path(".")) -> str | None:
    """One line when a killed run left something on the phase: when, and the command to clean up."""
    from disagglab.guard import leftovers

    found = leftovers.find(plan.phase_name, workdir)
    if not found.any:
        return None
    return (f"{plan.phase_name}: orphaned run from {leftovers.fmt_time(found.since)}: "
            f"run `{leftovers.recover_command(plan.phase_name)}` (it stops what the killed run left running)")


def status_lines(plan: Plan, statuses: list[PatternStatus]) -> list[str]:
    total: dict[str, int] = {}
    lines = []
    for layer in plan.layers:
        mine = [s for s in statuses if s.layer == layer.id]
        counts: dict[str, int] = {}
        for s in mine:
            counts[s.state] = counts.get(s.state, 0) + 1
            total[s.state] = total.get(s.state, 0) + 1
        lines.append(f"{layer.id} [{layer.priority}] {layer.name}: " + ", ".join(f"{counts[k]} {k}" for k in STATES if k in counts))
        for s in mine:
            lines.append(f"  {s.pattern_id:32s} {s.state:11s} {s.detail}")
    return [f"{plan.phase_name}: " + ", ".join(f"{total[k]} {k}" for k in STATES if k in total), *lines]


def status_json(plan: Plan, statuses: list[PatternStatus], warnings: list[str] | None = None) -> str:
    """`warnings`: the plan's (disagglab/plan/checks.py), the lines the text form ends with."""
    doc = {"phase": plan.phase_name, "patterns": [asdict(s) for s in statuses], "warnings": warnings or []}
    return json.dumps(doc, indent=2, sort_keys=True)
