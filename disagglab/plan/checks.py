"""The plan checks that need the configuration, and the warnings every front door shows.

`load_plan` (model.py) checks a plan file on its own. What depends on config (the model's
context, the memory of the instance type) and the warnings are here, in one function, so
that `validate`, the Snakefile (`-n` and runs: disagglab/tasks/dag.py), `status` and the
estimate (`plan.md`) report exactly the same lines. An error stops the plan as any plan
error does (nothing runs, nothing is written under results/); a warning never blocks a run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disagglab.errors import PlanError, Problem
from disagglab.plan.bounds import concurrency_warnings, context_findings, pattern_paths, scheduler_findings
from disagglab.plan.fit import fit_findings
from disagglab.plan.model import Plan
from disagglab.plan.sweep import relocate
from disagglab.plan.topology import fixed_ports, port_collisions

WARNING = "WARNING"


@dataclass(frozen=True)
class Findings:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


def _display(path: Path) -> str:
    """As load_plan names the file: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def plan_findings(plan: Plan, cfg: dict[str, Any]) -> Findings:
    """Every config-dependent error and every warning of a loaded plan."""
    file = _display(plan.path)
    paths = pattern_paths(plan)
    ctx_errors, ctx_warnings = context_findings(plan, file, paths, cfg.get("models", {}))
    fit_errors, fit_warnings = fit_findings(plan, file, paths, cfg)
    seq_errors, seq_warnings = scheduler_findings(plan, file, paths)
    port_errors = port_findings(plan, file, paths, cfg)
    warnings = [*concurrency_warnings(plan, file, paths), *ctx_warnings, *fit_warnings, *seq_warnings]
    errors = relocate([*ctx_errors, *fit_errors, *seq_errors, *port_errors], plan.sweep_origins)  # expanded patterns: named by their sweep
    return Findings(errors, relocate(list(dict.fromkeys(warnings)), plan.sweep_origins))


def port_findings(plan: Plan, file: str, paths: dict[str, str], cfg: dict[str, Any]) -> list[Problem]:
    """Errors: a topology whose servers, side channels and proxy would share a fixed port on a
    node (config aws.ports; instance i listens on its role's port + i, plan/topology.py)."""
    ports = fixed_ports(cfg["aws"]["ports"])
    problems = []
    for pid, pat in plan.patterns.items():
        for clash in port_collisions(pat.spec, pat.roles, pat.uses_proxy, ports):
            problems.append(Problem(file, paths[pid], f"{clash}: on AWS each listens on a fixed port (config aws.ports); move aws.ports or use fewer instances"))
    return problems


def check_plan(plan: Plan, cfg: dict[str, Any]) -> list[Problem]:
    """Raise PlanError on any error; else return the warnings."""
    found = plan_findings(plan, cfg)
    if found.errors:
        raise PlanError(found.errors)
    return found.warnings


def warning_lines(warnings: list[Problem]) -> list[str]:
    return [f"{WARNING} {w}" for w in warnings]


def print_warnings(warnings: list[Problem]) -> None:
    for line in warning_lines(warnings):
        print(line, file=sys.stderr)
