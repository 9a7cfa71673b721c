"""What the Snakefile asks of the package: plans by phase, task digests, rerun fingerprints.

Everything here is evaluated while Snakemake builds the DAG, so it is cached and cheap:
a pattern's task definitions are rendered in memory and hashed, and those hashes (not
file timestamps) are the params that decide whether a pattern runs again.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from disagglab.errors import InputError, Problem
from disagglab.paths import PhaseLayout
from disagglab.plan.checks import check_plan, print_warnings
from disagglab.plan.faults import phase_of
from disagglab.plan.model import Pattern, Plan, load_plan
from disagglab.tasks.nodefiles import files_for_pattern, node_file_digests
from disagglab.tasks.render import render_task, sha256_text


class Phases:
    def __init__(self, plans_dir: Path, cfg: dict[str, Any], show_warnings: bool = False):
        self.plans_dir = plans_dir
        self.cfg = cfg
        self.cfg_json = json.dumps(cfg, sort_keys=True)
        self.warnings: dict[str, list[Problem]] = {}
        """Per phase, once its plan is loaded: plan/checks.py warnings (validate, -n, status, plan.md show them)."""
        self.show_warnings = show_warnings
        self._node_digests: dict[str, str] | None = None

    @cache  # noqa: B019 - one instance per Snakemake run
    def plan(self, phase: str) -> Plan:
        """The plan, checked against this configuration; its warnings go to stderr once."""
        plan = load_plan(self.plans_dir / f"{phase}.json")
        self.warnings[phase] = check_plan(plan, self.cfg)
        if self.show_warnings:  # the Snakefile's instance: -n and every run print them
            print_warnings(self.warnings[phase])
        return plan

    def pattern(self, phase: str, pattern_id: str) -> Pattern:
        return self.plan(phase).pattern(pattern_id)

    def pattern_or_none(self, pattern_id: str) -> Pattern | None:
        """The pattern of that id in the plan its prefix names (p14-... -> phase14), if any."""
        phase = phase_of(pattern_id)
        if phase is None or not (self.plans_dir / f"{phase}.json").exists():
            return None
        try:
            return self.pattern(phase, pattern_id)
        except (KeyError, InputError):
            return None

    @cache  # noqa: B019
    def task_text(self, phase: str, pattern_id: str, role: str) -> str:
        return render_task(self.pattern(phase, pattern_id), role, phase, self.cfg)

    def task_digest(self, phase: str, pattern_id: str, role: str) -> str:
        return sha256_text(self.task_text(phase, pattern_id, role))

    def task_digests(self, phase: str, pattern_id: str) -> list[str]:
        """role=sha256 strings: readable in Snakemake's 'Params have changed' reason."""
        return [f"{role}={self.task_digest(phase, pattern_id, role)}" for role in self.pattern(phase, pattern_id).roles]

    @property
    def node_digests(self) -> dict[str, str]:
        """The node-side files' sha256, read once per instance (one Snakemake run sees one tree).

        Listing and stat-ing the tree for every pattern's params was most of a large plan's
        DAG build (bench/plan_scale.py: 10.5 of 15.5 s for 1000 patterns).
        """
        if self._node_digests is None:
            self._node_digests = node_file_digests()
        return self._node_digests

    def node_file_fingerprint(self, phase: str, pattern_id: str) -> list[str]:
        files = files_for_pattern(self.pattern(phase, pattern_id), self.cfg["engine"], self.node_digests)
        return [f"{rel}={sha}" for rel, sha in sorted(files.items())]

    def trial_results(self, phase: str, pattern_id: str) -> list[str]:
        """The trial files a pattern's result is folded from: 1..repeats."""
        layout = PhaseLayout.of(phase)
        return [str(layout.trial(pattern_id, k)) for k in range(1, self.pattern(phase, pattern_id).repeats + 1)]

    def layer_results(self, phase: str, layer: str) -> list[str]:
        layout = PhaseLayout.of(phase)
        return [str(layout.result(pid)) for pid in self.plan(phase).layer(layer).pattern_ids]
