"""Where the project's files are. The package sits at the project root, beside the Snakefile."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"
SCHEMA_DIR = CONFIG_DIR / "schemas"
TEMPLATE_DIR = ROOT / "templates"
PLANS_DIR = ROOT / "plans"
# Node-side trees: copied to the nodes, never imported by the control side.
NODE_TREES = ("scripts", "remote")


# ---------------------------------------------------------------------------- safe names
# Plan validation already restricts pattern and layer ids; these checks repeat the rule where
# ids become paths and store keys, so a bypassed or buggy validator still cannot make a path
# leave results/ or a key leave its phase prefix.
PHASE_RE = re.compile(r"phase[0-9]+")
SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class UnsafeName(ValueError):
    """An id or key part that could leave its folder or prefix."""


def safe_segment(part: str) -> str:
    """One path segment: ASCII letters, digits, '.', '_', '-'; not '.', '..', empty, or with a separator."""
    if not isinstance(part, str) or not SEGMENT_RE.fullmatch(part) or part in (".", ".."):
        raise UnsafeName(f"unsafe path segment {part!r}: only ASCII letters, digits, '.', '_' and '-' (not '.' or '..')")
    return part


def safe_join(base: Path, *parts: str) -> Path:
    """base/part/... where every part is a safe segment (a file name may carry a suffix)."""
    path = Path(base)
    for part in parts:
        path = path / safe_segment(part)
    return path


def phase_key(phase: str, *parts: str) -> str:
    """A store key `<phase>/<part>/...`; each part may itself hold '/'-separated safe segments."""
    if not isinstance(phase, str) or not PHASE_RE.fullmatch(phase):
        raise UnsafeName(f"unsafe phase {phase!r}: expected phase<N>")
    segments = [safe_segment(s) for part in parts for s in part.split("/")]
    return "/".join([phase, *segments])


# ---------------------------------------------------------------------------- the results tree
RESULTS = Path("results")
# results/<phase>/...: spelled here only. rules/*.smk take their wildcard paths from RULE_PATHS,
# every module takes concrete paths from PhaseLayout, so the two can never drift apart.
TREE: dict[str, str] = {
    "task": "tasks/{pattern}/{role}.json",
    "deploy_marker": "deploy/{pattern}.json",
    "trial": "trials/{pattern}/{trial}.json",
    "result": "runs/{pattern}.json",
    "failure": "failures/{pattern}.json",
    "layer_marker": "{layer}.done",
    "phase_marker": "all.done",
    "estimate": "plan.md",
    "summary": "summary.csv",
    "mlflow_marker": "mlflow.json",
    "report_html": "report.html",
    "report_md": "report.md",
    "report_plots": "report_plots",
    "task_log": "logs/{pattern}/render-{role}.log",
    "deploy_log": "logs/{pattern}/deploy.log",
    "trial_log": "logs/{pattern}/trial-{trial}/run.log",
    "fold_log": "logs/{pattern}/aggregate.log",
    "layer_log": "logs/layer-{layer}.log",
    "phase_log": "logs/all.log",
    "estimate_log": "logs/estimate.log",
    "summary_log": "logs/summary.log",
    "mlflow_log": "logs/mlflow.log",
    "report_log": "logs/report.log",
}
AGGREGATED = "aggregated.json"
"""Written next to a pattern's trials once they are folded into its result (results/fold.py)."""
RULE_PATHS: dict[str, str] = {name: f"{RESULTS.as_posix()}/{{phase}}/{tail}" for name, tail in TREE.items()}
RULE_PATHS["compare_html"] = f"{RESULTS.as_posix()}/compare/{{phase_a}}_vs_{{phase_b}}.html"
RULE_PATHS["compare_log"] = f"{RESULTS.as_posix()}/compare/{{phase_a}}_vs_{{phase_b}}.log"


@dataclass(frozen=True)
class PhaseLayout:
    """One phase's folder under results/: where each kind of file of a pattern lives.

    Every id passes safe_segment on its way into a path, so a bypassed validator still cannot
    make a path leave the phase's folder.
    """

    root: Path

    @classmethod
    def of(cls, phase: str, results: Path = RESULTS) -> PhaseLayout:
        if not isinstance(phase, str) or not PHASE_RE.fullmatch(phase):
            raise UnsafeName(f"unsafe phase {phase!r}: expected phase<N>")
        return cls(Path(results) / phase)

    @classmethod
    def every(cls, results: Path = RESULTS) -> list[PhaseLayout]:
        """Every phase folder under results/ (the parse-time sweeps look at all of them)."""
        return [cls(p) for p in sorted(Path(results).glob("phase*")) if p.is_dir() and PHASE_RE.fullmatch(p.name)]

    @property
    def phase(self) -> str:
        return self.root.name

    def _at(self, name: str, **parts: str | int) -> Path:
        return self.root / TREE[name].format(**{k: safe_segment(str(v)) for k, v in parts.items()})

    def task(self, pattern: str, role: str) -> Path:
        return self._at("task", pattern=pattern, role=role)

    def tasks_dir(self, pattern: str) -> Path:
        return safe_join(self.root / "tasks", pattern)

    def deploy_marker(self, pattern: str) -> Path:
        return self._at("deploy_marker", pattern=pattern)

    def trial(self, pattern: str, trial: int) -> Path:
        return self._at("trial", pattern=pattern, trial=int(trial))

    def trials_dir(self, pattern: str) -> Path:
        return safe_join(self.trials_root, pattern)

    def fold_marker(self, pattern: str) -> Path:
        """Written next to a pattern's trials once they are folded into its result."""
        return self.trials_dir(pattern) / AGGREGATED

    def trial_files(self) -> list[Path]:
        """Every trial file of the phase (trials/<pattern>/<k>.json)."""
        return [p for p in sorted(self.trials_root.glob("*/*.json")) if p.stem.isdigit()]

    @property
    def trials_root(self) -> Path:
        return self.root / "trials"

    def result(self, pattern: str) -> Path:
        return self._at("result", pattern=pattern)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def failure(self, pattern: str) -> Path:
        return self._at("failure", pattern=pattern)

    @property
    def failures_dir(self) -> Path:
        return self.root / "failures"

    @property
    def deploy_dir(self) -> Path:
        return self.root / "deploy"

    def layer_marker(self, layer: str) -> Path:
        return self._at("layer_marker", layer=layer)

    @property
    def phase_marker(self) -> Path:
        return self._at("phase_marker")

    def logs(self, pattern: str) -> Path:
        return safe_join(self.root / "logs", pattern)

    def trial_logs(self, pattern: str, trial: int) -> Path:
        """Each trial keeps its own logs: a later trial never overwrites an earlier one's evidence."""
        return safe_join(self.logs(pattern), f"trial-{int(trial)}")

    @property
    def preflight_dir(self) -> Path:
        return self.root / "preflight"

    def preflight_marker(self, name: str) -> Path:
        """`name` is `<pair key>-<backend>.json`; a pair key holds '+' (node1+node2), so no safe_segment."""
        if "/" in name or name in (".", "..") or not name:
            raise UnsafeName(f"unsafe preflight marker name {name!r}")
        return self.preflight_dir / name

    @property
    def layer_markers(self) -> list[Path]:
        """Every <layer>.done; not all.done, which lists layers, not results."""
        return sorted(p for p in self.root.glob("*.done") if p != self.phase_marker)

    @property
    def corrupt_dir(self) -> Path:
        """Damaged files set aside (kept, never deleted): corrupt/<pattern>.json, corrupt/trials/<pattern>/<k>.json."""
        return self.root / "corrupt"

    def corrupt_result(self, pattern: str) -> Path:
        return safe_join(self.corrupt_dir, f"{pattern}.json")

    def corrupt_trial(self, pattern: str, trial: int) -> Path:
        return safe_join(self.corrupt_dir / "trials", pattern, f"{int(trial)}.json")

    @property
    def ledger_dir(self) -> Path:
        """The control-side run ledger (disagglab/run/ledger.py)."""
        return self.root / ".ledger"


def pattern_of(output: str | Path) -> str | None:
    """The pattern a result or trial path belongs to (results/<phase>/runs/<p>.json, .../trials/<p>/<k>.json)."""
    parts = Path(output).parts
    if len(parts) >= 2 and parts[-2] == "runs":
        return Path(output).stem
    if len(parts) >= 3 and parts[-3] == "trials":
        return parts[-2]
    return None
