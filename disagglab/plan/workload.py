"""A pattern's workload: what its requests look like, beyond today's unique random prompts.

The workload enters the effective spec only when it is not the default (`random`), so a
plan written before workloads existed keeps its spec, its tasks and its finished results.
"""

from __future__ import annotations

from typing import Any

from disagglab.errors import Problem
from disagglab.plan.jsonpath import format_path, written_patterns

DEFAULT = {"kind": "random"}


def plan_workload(pattern: dict[str, Any], common: dict[str, Any]) -> dict[str, Any] | None:
    """The pattern's workload (its own, else common_settings'), or None for the default."""
    workload = pattern.get("workload", common.get("workload", DEFAULT))
    return None if workload["kind"] == "random" else dict(workload)


def workload_problems(doc: dict[str, Any], file: str) -> list[Problem]:
    """Rules the schema cannot say: a shared prefix leaves room for a unique suffix."""
    problems: list[Problem] = []
    common = doc["common_settings"]
    for here, pat in written_patterns(doc):
        workload = plan_workload(pat, common)
        if workload is None:
            continue
        where = [*here, "workload"] if "workload" in pat else ["common_settings", "workload"]
        if workload["kind"] == "shared_prefix" and workload["prefix_tokens"] >= pat["prompt_tokens"]:
            problems.append(Problem(file, format_path([*where, "prefix_tokens"]),
                                    f"prefix_tokens {workload['prefix_tokens']} must be less than the pattern's prompt_tokens "
                                    f"{pat['prompt_tokens']} ({format_path(here)}): every request needs a suffix of its own"))
    return problems
