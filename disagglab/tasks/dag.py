"""What the Snakefile asks of the package: plans by phase, task digests, rerun fingerprints.

Everything here is evaluated while Snakemake builds the DAG, so it is cached and cheap:
a pattern's task definitions are rendered in memory and hashed, and those hashes (not
file timestamps) are the params that decide whether a pattern runs again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

from disagglab.errors import InputError
from disagglab.plan.faults import phase_of
from disagglab.plan.model import Pattern, Plan, load_plan
from disagglab.tasks.nodefiles import files_for_pattern, node_file_digests
from disagglab.tasks.render import render_task, sha256_text


class Phases:
    def __init__(self, plans_dir: Path, cfg: dict[str, Any]):
        self.plans_dir = plans_dir
        self.cfg = cfg
        self.cfg_json = json.dumps(cfg, sort_keys=True)

    @cache  # noqa: B019 - one instance per Snakemake run
    def plan(self, phase: str) -> Plan:
        return load_plan(self.plans_dir / f"{phase}.json")

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

    def node_file_fingerprint(self, phase: str, pattern_id: str) -> list[str]:
        files = files_for_pattern(self.pattern(phase, pattern_id), self.cfg["engine"], node_file_digests())
        return [f"{rel}={sha}" for rel, sha in sorted(files.items())]

    def trial_results(self, phase: str, pattern_id: str) -> list[str]:
        """The trial files a pattern's result is folded from: 1..repeats."""
        return [f"results/{phase}/trials/{pattern_id}/{k}.json" for k in range(1, self.pattern(phase, pattern_id).repeats + 1)]

    def layer_results(self, phase: str, layer: str) -> list[str]:
        return [f"results/{phase}/runs/{pid}.json" for pid in self.plan(phase).layer(layer).pattern_ids]


def sweep_stale_layer_markers(results_root: Path = Path("results")) -> list[str]:
    """Remove layer markers whose results are gone.

    A layer marker claims "every pattern of this layer has a result". When a user deletes
    a result, Snakemake would keep trusting the up-to-date marker and never rebuild the
    missing result, so the false claim is withdrawn before the DAG is built.
    """
    removed = []
    for marker in sorted(results_root.glob("phase*/*.done")):
        try:
            doc = json.loads(marker.read_text())
            paths = [Path(p["result"]) for p in doc["patterns"].values()]
        except (OSError, ValueError, KeyError, TypeError):
            paths = None
        if paths is None or any(not p.exists() for p in paths):
            missing = "unreadable marker" if paths is None else ", ".join(str(p) for p in paths if not p.exists())
            marker.unlink(missing_ok=True)
            print(f"disagglab: {marker} was stale ({missing}); it will be rebuilt", file=sys.stderr)
            removed.append(str(marker))
    return removed


AGGREGATED = "aggregated.json"
"""Written next to a pattern's trials once they are folded into its result (trials.py)."""


def sweep_deleted_results(results_root: Path = Path("results"), in_flight: set[str] | None = None) -> list[str]:
    """Deleting a pattern's result means "measure it again": set its folded trials aside.

    The result is built from trial files; if they stayed, deleting the result would only
    rebuild it from the same trials. Trials whose result the user deleted are moved (never
    deleted) to trials/<pattern>/superseded-<time>/, so nothing paid for is lost. A result
    missing because Snakemake is (or was, when killed) rewriting it is not a deletion:
    outputs Snakemake marks incomplete are left alone.
    """
    if in_flight is None:
        from disagglab.results.status import running_outputs

        in_flight, _ = running_outputs(Path("."))
    moved = []
    for marker in sorted(results_root.glob(f"phase*/trials/*/{AGGREGATED}")):
        try:
            doc = json.loads(marker.read_text())
            result = Path(doc["result"])
            files = [Path(f) for f in doc["trials"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if result.exists() or str(result) in in_flight or (result.parents[1] / "corrupt" / result.name).exists():
            continue  # (a result moved aside as corrupt is rebuilt from these trials: quarantine_corrupt_results)
        dest = marker.parent / time.strftime("superseded-%Y%m%dT%H%M%S")
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            if f.exists():
                shutil.move(str(f), str(dest / f.name))
        shutil.move(str(marker), str(dest / AGGREGATED))
        print(f"disagglab: {result} was deleted; its {len(files)} trial(s) moved to {dest} and will be measured again", file=sys.stderr)
        moved.append(str(result))
    return moved


def quarantine_corrupt_results(results_root: Path = Path("results")) -> list[str]:
    """Move result and trial files that cannot be read to results/<phase>/corrupt/, so they count as not done.

    Snakemake only sees that a file exists; a damaged one (truncated, binary, wrong types,
    missing keys) would count as finished forever. Moving it aside (kept as evidence, never
    deleted) makes it missing, so the next run rebuilds exactly that: a damaged result is
    folded again from its trials (nothing is measured again when they are intact), a damaged
    trial is measured again when its result has to be folded again (an intact result already
    holds its numbers). Status and the report say "corrupt", with the file and the
    reason, until the result is rebuilt. Runs before the sweeps: sweep_deleted_results must
    not take a result moved here for one the user deleted.
    """
    from disagglab.results.records import CorruptResult, read_result

    moved = []
    found = [(p, p.stem, p.parents[1] / "corrupt" / p.name) for p in sorted(results_root.glob("phase*/runs/*.json"))]
    found += [(p, p.parent.name, p.parents[2] / "corrupt" / "trials" / p.parent.name / p.name)
              for p in sorted(results_root.glob("phase*/trials/*/*.json")) if p.stem.isdigit()]
    for path, pattern_id, dest in found:
        try:
            read_result(path, pattern_id)
        except CorruptResult as exc:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            print(f"disagglab: {exc}; moved to {dest}; it will be built again", file=sys.stderr)
            moved.append(str(path))
    return moved
