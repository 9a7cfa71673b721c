"""What rules/common.smk does for run safety while Snakemake parses the workflow.

- `check_phases`: a run that executes jobs takes the phase lock of every phase its targets
  name (one run per phase, with an error naming the holder) and refuses to start on the
  leftovers of a killed run, naming them and the recovery command. A dry run, `--summary`
  (used by `disagglab status`), `--unlock` and the like only print the leftovers.
- `forward_sigterm`: Snakemake answers SIGTERM by waiting for its running jobs to finish,
  which for a measurement can be many minutes. Forwarded, the control jobs stop their
  servers on every node at once and write their failure records, and Snakemake then exits.

- `check_target_plans`: the plan of every phase the targets name must load, so a bad plan is
  refused with its problems, one per line, before any input function asks for it.

The Snakefile is parsed before Snakemake knows its targets or whether it is a dry run, so
the command line is read again with Snakemake's own argument parser.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from disagglab import procs
from disagglab.guard import leftovers, phaselock
from disagglab.paths import RESULTS, TREE, PhaseLayout
from disagglab.run.ledger import OWNER_ENV, identity, identity_text

TARGET_PHASE = re.compile(r"(?:^|/)results/(phase[0-9]+)/")
# Snakemake options under which it runs no job: they may look, never clean up or lock.
NO_JOB_OPTIONS = (
    "dryrun", "unlock", "cleanup_metadata", "summary", "detailed_summary", "list_changes", "list_input_changes",
    "list_params_changes", "list_untracked", "list_rules", "list_target_rules", "list_conda_envs", "lint", "dag",
    "d3dag", "rulegraph", "filegraph", "report", "print_compilation", "containerize", "archive", "export_cwl",
    "generate_unit_tests", "delete_all_output", "delete_temp_output", "cleanup_shadow", "conda_create_envs_only",
    "debug_dag",
)


class RunRefused(Exception):
    """The run must not start; the message says why and what to do."""


def snakemake_args(argv: list[str]) -> argparse.Namespace | None:
    """Snakemake's parsed command line, or None when this is not the `snakemake` CLI."""
    if not argv or not Path(argv[0]).name.startswith("snakemake") and not argv[0].endswith("snakemake/__main__.py"):
        return None
    try:
        from snakemake.cli import get_argument_parser

        return get_argument_parser().parse_args(argv[1:])
    except (SystemExit, Exception):  # noqa: BLE001 - Snakemake itself reports a bad command line
        return None


def runs_jobs(args: argparse.Namespace | None) -> bool:
    return args is not None and not any(getattr(args, name, None) for name in NO_JOB_OPTIONS)


def target_phases(targets: list[str]) -> list[str]:
    return sorted({m.group(1) for t in targets if (m := TARGET_PHASE.search(t))})


def plan_loads(phase: str) -> bool:
    """A phase whose plan is missing or invalid runs nothing; Snakemake reports why, and
    nothing (not even a lock file) may be written under results/ for it."""
    from disagglab.errors import InputError
    from disagglab.paths import PLANS_DIR
    from disagglab.plan.checks import plan_findings
    from disagglab.plan.config import current_config
    from disagglab.plan.model import load_plan

    try:
        if plan_findings(load_plan(PLANS_DIR / f"{phase}.json"), current_config()).errors:
            return False  # context or memory: the DAG reports it
    except (InputError, OSError):
        return False
    return True


def check_target_plans(load: Callable[[str], Any], argv: list[str] | None = None) -> None:
    """Load the plan of every phase the targets name; raise PlanError listing every problem.

    This runs while the Snakefile is parsed, before any input function: Snakemake wraps an
    error from an input function in an InputFunctionException with a traceback block around
    the one line that matters, and a bad plan would reach the first input function that asks
    for it (whichever target asked: a layer, one result, the report, the estimate).
    """
    from disagglab.errors import InputError, PlanError

    args = snakemake_args(sys.argv if argv is None else argv)
    targets = list(getattr(args, "targets", None) or [])
    problems = []
    for phase in target_phases(targets):
        try:
            plan = load(phase)
        except InputError as exc:
            problems += exc.problems
            continue
        problems += unknown_id_problems(plan, [t for t in targets if phase in target_phases([t])])
    if problems:
        raise PlanError(problems)


def _id_target(name: str, field: str) -> re.Pattern[str]:
    """A results-tree path (paths.TREE[name]) as a regex capturing its `field` as `id`."""
    parts = re.split(r"(\{[a-z]+\})", TREE[name])
    body = "".join("(?P<id>[^/]+)" if p == f"{{{field}}}" else "[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(rf"(?:^|/){re.escape(RESULTS.as_posix())}/phase[0-9]+/{body}$")


ID_TARGETS = [(kind, _id_target(name, kind)) for kind, name in
              (("pattern", "task"), ("pattern", "deploy_marker"), ("pattern", "trial"), ("pattern", "result"), ("layer", "layer_marker"))]


def unknown_id_problems(plan: Any, targets: list[str]) -> list[Any]:
    """A target naming a pattern or layer the plan does not have (ids are case-sensitive)."""
    from disagglab.errors import Problem
    from disagglab.plan.config import display_path

    known = {"pattern": list(plan.patterns), "layer": [lay.id for lay in plan.layers]}
    problems = []
    for target in targets:
        for kind, rx in ID_TARGETS:
            m = rx.search(target)
            if not m or (kind == "layer" and Path(target).name == TREE["phase_marker"]) or m["id"] in known[kind]:
                continue
            same = [k for k in known[kind] if k.lower() == m["id"].lower()]
            close = same or difflib.get_close_matches(m["id"], known[kind], n=1)
            hint = f" ({kind}s: {', '.join(known[kind])})"
            if close:
                hint = f" (did you mean {close[0]!r}?{' ids are case-sensitive' if same else ''})"
            problems.append(Problem(display_path(plan.path), "", f"target {target}: no {kind} {m['id']!r} in this plan{hint}"))
            break
    return problems


def check_phases(argv: list[str] | None = None, workdir: Path = Path(".")) -> list[str]:
    """Lock and check the phases of this Snakemake run; returns the phases locked.

    Also tells the jobs which Snakemake run they belong to (OWNER_ENV).
    """
    argv = sys.argv if argv is None else argv
    os.environ[OWNER_ENV] = identity_text(identity())
    args = snakemake_args(argv)
    targets = list(getattr(args, "targets", None) or [])
    if runs_jobs(args):
        locked = []
        for phase in filter(plan_loads, target_phases(targets)):
            try:
                previous = phaselock.acquire(Path(workdir) / "results" / phase, phase, "Snakemake", ["snakemake", *argv[1:]])
            except phaselock.PhaseBusy as exc:
                raise RunRefused(str(exc)) from None
            locked.append(phase)
            found = leftovers.find(phase, workdir, previous)
            if found.any:
                for held in locked:  # refused: the phases stay as the killed run left them
                    phaselock.release(Path(workdir) / "results" / held, previous if held == phase else None)
                raise RunRefused(leftovers.explain(found))
        return locked
    phases = target_phases(targets) if targets else [lay.phase for lay in PhaseLayout.every(Path(workdir) / RESULTS) if lay.ledger_dir.is_dir()]
    for phase in phases:
        found = leftovers.find(phase, workdir)
        if found.any:
            print(f"WARNING: {leftovers.explain(found)}", file=sys.stderr)
    return []


def _job_processes(root: int) -> list[int]:
    """Descendants of `root` in its own process group: the jobs, not the node-side groups."""
    parents = {pid: (int(f[procs.PPID]), int(f[procs.PGRP])) for pid, f in procs.all_processes()}
    pgid = os.getpgid(root)
    out, frontier = [], [root]
    while frontier:
        nxt = [pid for pid, (ppid, _) in parents.items() if ppid in frontier]
        out.extend(pid for pid in nxt if parents[pid][1] == pgid)
        frontier = nxt
    return out


def forward_sigterm() -> None:
    """Wrap Snakemake's SIGTERM handler (installed by then): pass SIGTERM on to the jobs first."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        for pid in _job_processes(os.getpid()):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
