"""A pattern's workload: what its requests look like, beyond today's unique random prompts.

The workload enters the effective spec only when it is not the default (`random`), so a
plan written before workloads existed keeps its spec, its tasks and its finished results.
Lengths a workload asks for are bounded by the pattern's prompt_tokens and max_tokens: those
size the servers (max_model_len, the KV fit check), so no request may exceed them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from disagglab.errors import Problem
from disagglab.plan.jsonpath import format_path, written_patterns
from disagglab.plan.trace import TraceFacts, TraceLineError, TraceRequest, trace_facts

DEFAULT = {"kind": "random"}


def plan_workload(pattern: dict[str, Any], common: dict[str, Any], plan_dir: Path | None = None) -> dict[str, Any] | None:
    """The pattern's workload (its own, else common_settings'), or None for the default.

    A trace workload carries its file's sha256, so an edited trace changes the task.
    """
    workload = pattern.get("workload", common.get("workload", DEFAULT))
    if workload["kind"] == "random":
        return None
    workload = dict(workload)
    if workload["kind"] == "trace" and plan_dir is not None:
        workload["sha256"] = trace_facts(trace_path(plan_dir, workload), workload["format"]).sha256
    return workload


def trace_path(plan_dir: Path, workload: dict[str, Any]) -> Path:
    return plan_dir / workload["file"]


def replayed(facts: TraceFacts, workload: dict[str, Any]) -> tuple[TraceRequest, ...]:
    """The requests a trace pattern replays: the first max_requests of the file (default all)."""
    return facts.requests[: workload.get("max_requests", len(facts.requests))]


def _length_problems(dist: dict[str, Any], cap: int, cap_name: str) -> list[tuple[str, str]]:
    """(key, reason) for a length distribution that can draw past its cap or is empty."""
    kind = dist["distribution"]
    if kind == "fixed" and dist["tokens"] > cap:
        return [("tokens", f"{dist['tokens']} exceeds the pattern's {cap_name} {cap}")]
    if kind == "uniform":
        if dist["min"] > dist["max"]:
            return [("min", f"{dist['min']} is greater than max {dist['max']}")]
        if dist["max"] > cap:
            return [("max", f"{dist['max']} exceeds the pattern's {cap_name} {cap}")]
    if kind == "lognormal" and dist["mean"] > cap:
        return [("mean", f"{dist['mean']} exceeds the pattern's {cap_name} {cap} (draws above it are capped at it)")]
    return []


def _trace_problems(workload: dict[str, Any], plan_dir: Path, caps: dict[str, int], pid: str) -> list[Problem]:
    """A trace that is missing, outside the plan's folder, malformed, or longer than the pattern allows."""
    path = trace_path(plan_dir, workload)
    shown = str(path)
    if plan_dir.resolve() not in path.resolve().parents:
        return [Problem(shown, "", f"the trace of {pid} resolves outside the plan's folder {plan_dir}")]
    try:
        requests = replayed(trace_facts(path, workload["format"]), workload)
    except FileNotFoundError:
        return [Problem(shown, "", f"trace file not found (workload.file of {pid}, relative to {plan_dir})")]
    except UnicodeDecodeError as exc:
        return [Problem(shown, "", f"not UTF-8 text: {exc}")]
    except TraceLineError as exc:
        return [Problem(shown, f"line {exc.line}, field {exc.field}", f"{exc.reason} ({workload['format']} trace of {pid})")]
    fields = {"mooncake": ("input_length", "output_length"), "azure": ("ContextTokens", "GeneratedTokens")}[workload["format"]]
    for req in requests:
        for name, value, cap_name in ((fields[0], req.input_tokens, "prompt_tokens"), (fields[1], req.output_tokens, "max_tokens")):
            if value > caps[cap_name]:
                return [Problem(shown, f"line {req.line}, field {name}", f"{value} tokens exceed {pid}'s {cap_name} {caps[cap_name]}: "
                                f"raise {cap_name} (it sizes the servers) or set max_requests")]
    return []


def workload_problems(doc: dict[str, Any], file: str) -> list[Problem]:
    """Rules the schema cannot say: a shared prefix leaves room for a unique suffix, lengths fit the pattern."""
    problems: list[Problem] = []
    common = doc["common_settings"]
    plan_dir = Path(file).parent
    for here, pat in written_patterns(doc):
        workload = plan_workload(pat, common)
        if workload is None:
            continue
        where = [*here, "workload"] if "workload" in pat else ["common_settings", "workload"]
        caps = {"prompt_tokens": pat["prompt_tokens"], "max_tokens": common["max_tokens"]}
        if workload["kind"] == "shared_prefix" and workload["prefix_tokens"] >= pat["prompt_tokens"]:
            problems.append(Problem(file, format_path([*where, "prefix_tokens"]),
                                    f"prefix_tokens {workload['prefix_tokens']} must be less than the pattern's prompt_tokens "
                                    f"{pat['prompt_tokens']} ({format_path(here)}): every request needs a suffix of its own"))
        if workload["kind"] == "lengths":
            for side, cap_name in (("input", "prompt_tokens"), ("output", "max_tokens")):
                for key, reason in _length_problems(workload[side], caps[cap_name], cap_name):
                    problems.append(Problem(file, format_path([*where, side, key]), f"{reason} ({format_path(here)})"))
        if workload["kind"] == "trace":
            problems += _trace_problems(workload, plan_dir, caps, pat["id"])
    return _first_per_place(problems)


def _first_per_place(problems: list[Problem]) -> list[Problem]:
    """One problem per file and place: a malformed trace replayed by a sweep is said once."""
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.file, p.path) not in seen:
            seen.add((p.file, p.path))
            out.append(p)
    return out
