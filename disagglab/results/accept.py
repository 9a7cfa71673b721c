"""`python -m disagglab accept <phase> [--pattern ID ...]`: keep finished measurements through a refactor.

A refactor of the node-side files (split into parts, renamed, comments) changes their sha256s,
so every finished pattern looks out of date, though what it would measure is the same. Accept
makes the named finished patterns current under today's task and node-file digests without
measuring anything, and says so in each trial's provenance.accepted:
1. refuse a pattern whose trials 1..repeats or result are missing, and refuse while a run holds the phase;
2. render and deploy the patterns again for real (Snakemake itself), so a later trial fetches today's files;
3. append {at, git_revision, by, old, new} to provenance.accepted of each trial that was not current
   (old: the digests it counted as measured under; new: what would run now); the measured
   provenance.task_sha256 / node_files_sha256 stay as they were: they say what really ran;
4. `snakemake --touch` the trials (Snakemake records today's params and inputs for them), then
   rebuild the results and layer markers with the cheap rules only (fold_trials, layer_done,
   phase_done): a dry run first, and any other rule it would need stops accept before it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from disagglab.guard import phaselock
from disagglab.hashing import atomic_write_json
from disagglab.paths import PLANS_DIR, PhaseLayout
from disagglab.plan.model import Plan
from disagglab.results.failure import iso
from disagglab.results.read import DIGEST_KEYS, measured_under
from disagglab.results.records import git_revision
from disagglab.tasks.dag import Phases
from disagglab.tasks.nodefiles import files_for_pattern, node_file_digests

CHEAP_RULES = ("fold_trials", "layer_done", "phase_done")
BY = "disagglab accept"


class AcceptRefused(Exception):
    """Nothing was accepted; the message says which pattern and what is missing, or who holds the phase."""


class AcceptFailed(Exception):
    """A Snakemake step of accept failed (or would have needed a rule that measures)."""


def current_digests(phases: Phases, phase: str, pattern_id: str) -> dict[str, Any]:
    """What the pattern would run now: its task digests and the node files it uses."""
    pattern = phases.pattern(phase, pattern_id)
    tasks = dict(item.split("=", 1) for item in phases.task_digests(phase, pattern_id))
    return {"task_sha256": tasks, "node_files_sha256": files_for_pattern(pattern, phases.cfg["engine"], node_file_digests())}


def missing_files(layout: PhaseLayout, plan: Plan, pattern_id: str) -> list[Path]:
    repeats = plan.pattern(pattern_id).repeats
    wanted = [layout.trial(pattern_id, k) for k in range(1, repeats + 1)] + [layout.result(pattern_id)]
    return [p for p in wanted if not p.is_file()]


def select_patterns(plan: Plan, layout: PhaseLayout, requested: list[str] | None) -> list[str]:
    """The patterns to accept: the requested ones (each must be finished), else every finished one."""
    if not requested:
        return [pid for layer in plan.layers for pid in layer.pattern_ids if not missing_files(layout, plan, pid)]
    problems = []
    for pid in requested:
        if pid not in plan.patterns:
            problems.append(f"{pid}: not a pattern of {plan.phase_name}")
        elif missing := missing_files(layout, plan, pid):
            problems.append(f"{pid}: not finished, missing {', '.join(map(str, missing))}")
    if problems:
        raise AcceptRefused("accept refused (nothing was changed; accept never measures):\n  " + "\n  ".join(problems))
    return list(dict.fromkeys(requested))


def acceptance_entry(doc: dict[str, Any], new: dict[str, Any], at: str, revision: str | None) -> dict[str, Any] | None:
    """The entry to append to the trial's provenance.accepted, or None when it is current already."""
    old = measured_under(doc)
    new = {key: new[key] for key in DIGEST_KEYS}
    if old == new:
        return None
    return {"at": at, "git_revision": revision, "by": BY, "old": old, "new": new}


def record_acceptance(path: Path, new: dict[str, Any], at: str, revision: str | None) -> dict[str, Any] | None:
    """Append the acceptance to the trial file (atomically); the measured digests stay as they are."""
    doc = json.loads(path.read_text())
    entry = acceptance_entry(doc, new, at, revision)
    if entry is not None:
        prov = doc.setdefault("provenance", {})
        prov["accepted"] = [*(prov.get("accepted") or []), entry]
        atomic_write_json(path, doc)
    return entry


def snakemake_exe() -> str:
    beside = Path(sys.executable).parent / "snakemake"
    return str(beside) if beside.exists() else "snakemake"


def run_snakemake(workdir: Path, args: list[str], configfiles: list[str] | None) -> str:
    """Snakemake in the project (its workflow profile applies), with the user's --configfile; stdout+stderr."""
    extra = ["--configfile", *configfiles] if configfiles else []
    out = subprocess.run([snakemake_exe(), *args, *extra], cwd=workdir, capture_output=True, text=True, timeout=3600, check=False)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        tail = "\n".join(text.strip().splitlines()[-20:])
        raise AcceptFailed(f"`snakemake {' '.join(args)}` failed (exit {out.returncode}):\n{tail}")
    return text


def planned_jobs(dry_run: str) -> list[tuple[str, str]]:
    """(rule, reason) of every job a `snakemake -n` output plans."""
    jobs: list[tuple[str, str]] = []
    for line in dry_run.splitlines():
        stripped = line.strip()
        if line.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            jobs.append((stripped.split()[1].rstrip(":"), ""))
        elif jobs and stripped.startswith("reason:"):
            jobs[-1] = (jobs[-1][0], stripped[len("reason:"):].strip())
    return jobs


def fold_targets(plan: Plan, layout: PhaseLayout, accepted: list[str]) -> list[str]:
    """The accepted results, the layer markers whose patterns all have results, and the phase marker if it
    was there; as paths relative to the project (Snakemake's targets)."""
    rel = PhaseLayout.of(plan.phase_name)
    targets = [str(rel.result(pid)) for pid in accepted]
    complete = [layer.id for layer in plan.layers if all(layout.result(pid).is_file() for pid in layer.pattern_ids)]
    targets += [str(rel.layer_marker(layer)) for layer in complete]
    if len(complete) == len(plan.layers) and layout.phase_marker.exists():
        targets.append(str(rel.phase_marker))
    return targets


def rebuild_cheaply(workdir: Path, targets: list[str], configfiles: list[str] | None) -> list[str]:
    """Fold the results and rebuild the markers with the cheap rules only; refuse if anything else is planned."""
    plan = planned_jobs(run_snakemake(workdir, ["-n", "--cores", "1", *targets], configfiles))
    other = [f"{rule} ({reason})" for rule, reason in plan if rule not in CHEAP_RULES]
    if other:
        raise AcceptFailed("after touching the trials Snakemake would still run (accept never measures; nothing was folded):\n  "
                           + "\n  ".join(other))
    if plan:
        run_snakemake(workdir, ["--allowed-rules", *CHEAP_RULES, "--cores", "1", *targets], configfiles)
    return [rule for rule, _ in plan]


def _hold_phase(results: Path, phase: str, argv: list[str]) -> None:
    """Take the phase lock (refused while a run holds it, or when a killed run left it to recover)."""
    try:
        killed = phaselock.acquire(results, phase, BY, argv)
    except phaselock.PhaseBusy as exc:
        raise AcceptRefused(f"{exc}\naccept refused: it never changes a phase a run holds.") from None
    if killed:
        phaselock.release(results, killed)
        raise AcceptRefused(f"{phase}: the run of {phaselock.describe(killed)} was killed; "
                            f"run `python -m disagglab recover {phase}` first. accept refused.")


def _record_all(phases: Phases, plan: Plan, layout: PhaseLayout, accepted: list[str], argv: list[str]) -> list[str]:
    """Step 3 under the phase lock: the acceptance entries; returns the trial files that got one."""
    at, revision = iso(time.time()), git_revision()
    _hold_phase(layout.root, plan.phase_name, argv)
    try:
        changed = []
        for pid in accepted:
            new = current_digests(phases, plan.phase_name, pid)
            for k in range(1, plan.pattern(pid).repeats + 1):
                if record_acceptance(layout.trial(pid, k), new, at, revision) is not None:
                    changed.append(str(layout.trial(pid, k)))
        return changed
    finally:
        phaselock.release(layout.root)


def accept(phases: Phases, phase: str, patterns: list[str] | None, workdir: Path = Path("."),
           configfiles: list[str] | None = None) -> list[str]:
    """Accept the finished patterns; returns lines saying what was done. Raises AcceptRefused / AcceptFailed."""
    plan = phases.plan(phase)
    layout = PhaseLayout(Path(workdir) / "results" / phase)
    rel = PhaseLayout.of(phase)
    argv = ["python", "-m", "disagglab", "accept", phase, *(["--pattern", *patterns] if patterns else [])]
    _hold_phase(layout.root, phase, argv)  # refuse early; each Snakemake run below takes the lock itself
    try:
        accepted = select_patterns(plan, layout, patterns)
    finally:
        phaselock.release(layout.root)
    if not accepted:
        return [f"{phase}: no finished pattern to accept"]
    run_snakemake(workdir, ["--cores", "1", *(str(rel.deploy_marker(pid)) for pid in accepted)], configfiles)
    changed = _record_all(phases, plan, layout, accepted, argv)
    trials = [str(rel.trial(pid, k)) for pid in accepted for k in range(1, plan.pattern(pid).repeats + 1)]
    run_snakemake(workdir, ["--touch", "--cores", "1", *trials], configfiles)
    rebuilt = rebuild_cheaply(workdir, fold_targets(plan, layout, accepted), configfiles)
    lines = [f"  {pid}: {'accepted' if any(t.startswith(str(layout.trials_dir(pid)) + '/') for t in changed) else 'already current'}"
             for pid in accepted]
    return [f"{phase}: {len(accepted)} pattern(s), {len(changed)} trial(s) newly accepted, deployed again; "
            f"rebuilt without measuring: {', '.join(rebuilt) or 'nothing'}", *lines]


def phases_for(configfiles: list[str] | None) -> Phases:
    from disagglab.plan.config import current_config, merged_config

    return Phases(PLANS_DIR, merged_config(configfiles) if configfiles else current_config())
