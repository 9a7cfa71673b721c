"""How long and how much: the patterns a phase still has to run, their wall time and cost.

`snakemake results/<phase>/plan.md` (rules/estimate.smk) and `python -m disagglab estimate
<phase>` write and print the same table: per layer and in total, the patterns (trials) still
to run, the estimated wall time and, on AWS, instance-hours and dollars from the user's price
table (`estimate.prices_usd_per_hour`). In local mode the table also shows what the same
work would take and cost on AWS, labelled as such.

Per trial of a pattern the wall time is the sum of
  start-up    servers until healthy: the engine's start-up + a per-server process overhead;
  warm-up + measurement   the timing simulation of estimate_model.py (+ the benchmark client's
              own start-up), with a per-request overhead outside the engine;
  pipeline    runner steps on each node (fetch, start, bench, stop, collect), teardown;
  gap         between two patterns: Snakemake starting the next job;
plus, once per Snakemake run, its own start-up (DAG, the first render and deploy) and the
layer markers at the end.

Calibration, because fixed overheads depend on the machine and its load: every finished
result (results/*/runs/*.json, and results/*/trials/*/*.json where a pattern has trials)
is split into those components using its own timestamps (started_at/finished_at, the start
steps' healthy_after_s, bench_started_at/finished_at, duration), and each overhead is fitted
from the results of the same engine, executor and instance type (local: any instance type):
the per-server, client and pipeline overheads as means or ratios, the per-request overhead
by least squares against the simulated measurement (for real vLLM also a speed factor on the
roofline prior), the gap as the median pause between consecutive results, and the per-run
part from Snakemake's own run logs (.snakemake/log/<start>.snakemake.log: the time before the
first result and after the last). Without such results the priors in config `estimate`
apply, and the table says so.

"Still to run" follows the rerun rules: a pattern is up to date when its result records the
sha256 of exactly the task definitions and node-side files it would run now (the params
Snakemake compares), so an edited pattern counts again and a finished one does not.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disagglab.estimate import model as em
from disagglab.hashing import sha256_file
from disagglab.paths import PhaseLayout
from disagglab.plan.checks import plan_findings, warning_lines
from disagglab.plan.config import sim_profile
from disagglab.plan.model import DISAGGREGATED, Pattern, Plan
from disagglab.results.read import measured_under
from disagglab.tasks.dag import Phases

DISAGG = DISAGGREGATED
AWS_SWITCH = {"executor": "ssm", "storage": "s3", "engine": "vllm"}
"""What config/aws.yaml switches: local mode prices the plan as that run would go."""
COMPONENTS = ("server_process_s", "client_start_s", "step_s", "teardown_s", "gap_s", "invocation_s")
MAX_GAP_S = 900.0
"""A pause longer than this between two results is a different session, not a job launch."""


def backend_class(backend: str) -> str:
    return "disaggregated" if backend in DISAGG else "unified"


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        base, frac = text.rstrip("Z").split(".") if "." in text else (text.rstrip("Z"), "0")
        return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac}")
    except (ValueError, OverflowError):
        return None


# ------------------------------------------------------------------------- what is still to run
def _up_to_date(path: Path, phases: Phases, phase: str, pattern: Pattern) -> bool:
    """The result measured (or was accepted as) exactly what the pattern would run now (same task and node-file sha256)."""
    try:
        under = measured_under(json.loads(path.read_text()))
        tasks = dict(item.split("=", 1) for item in phases.task_digests(phase, pattern.id))
        files = dict(item.split("=", 1) for item in phases.node_file_fingerprint(phase, pattern.id))
        return under["task_sha256"] == tasks and under["node_files_sha256"] == files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def trials_to_run(phases: Phases, phase: str, pattern: Pattern, results: Path) -> tuple[int, int]:
    """(trials still to run, trials planned) for one pattern."""
    repeats = int(getattr(pattern, "repeats", 1) or 1)
    layout = PhaseLayout(results / phase)
    if not layout.trials_dir(pattern.id).is_dir():  # a result from before trials existed counts as its one trial
        return (0 if _up_to_date(layout.result(pattern.id), phases, phase, pattern) else 1) * repeats, repeats
    done = sum(1 for k in range(1, repeats + 1) if _up_to_date(layout.trial(pattern.id, k), phases, phase, pattern))
    return repeats - done, repeats


# ------------------------------------------------------------------------- timing per pattern
def _overheads(cfg: dict[str, Any], executor: str) -> dict[str, Any]:
    prior = cfg.get("estimate", {}).get("overheads", {}).get(executor) or DEFAULT_OVERHEADS[executor]
    return {**DEFAULT_OVERHEADS[executor], **prior, "request_s": {**DEFAULT_OVERHEADS[executor]["request_s"], **prior.get("request_s", {})}}


DEFAULT_OVERHEADS: dict[str, dict[str, Any]] = {
    # Used only when config has no estimate.overheads for the executor; calibration replaces them.
    "local": {"server_process_s": 0.4, "client_start_s": 1.0, "step_s": 0.2, "teardown_s": 0.1, "gap_s": 1.0,
              "invocation_s": 4.0, "request_s": {"unified": 0.01, "disaggregated": 0.03}},
    "ssm": {"server_process_s": 5.0, "client_start_s": 3.0, "step_s": 2.5, "teardown_s": 10.0, "gap_s": 3.0,
            "invocation_s": 20.0, "request_s": {"unified": 0.002, "disaggregated": 0.005}},
}


def timing_for(cfg: dict[str, Any], engine: str, executor: str, spec: dict[str, Any], profile: dict[str, Any] | None = None) -> em.Timing:
    if engine == "sim":
        return em.sim_timing(profile if profile is not None else sim_profile(cfg, spec["infrastructure"]["model"]))
    if executor == "local":  # vLLM-CPU with the tiny model: no prior is worth having; calibration sets the speed
        base = em.sim_timing({**sim_profile(cfg, spec["infrastructure"]["model"]), "time_scale": 1.0})
        return em.Timing(**{**base.__dict__, "source": "no prior for vLLM on this machine (stand-in profile until calibrated: run one pattern)"})
    return em.vllm_timing(cfg, spec["infrastructure"])


def _shape(backend: str) -> tuple[int, int, int]:
    """(servers, nodes, runner steps) of one trial."""
    nodes = 2 if backend in DISAGG else 1
    return nodes, nodes, 3 * nodes + nodes + 1  # fetch, stop, collect per node; start per server; bench


@dataclass
class Fit:
    """Overheads for one (engine, executor, instance type): priors, replaced where results allow."""

    engine: str
    executor: str
    instance_type: str
    values: dict[str, Any]
    k: float = 1.0
    """Engine speed factor on the timing model (1 for the stand-in, which is the model)."""
    results: int = 0
    sources: dict[str, str] = field(default_factory=dict)
    borrowed: bool = False
    """Calibrated from results of other instance types (none of this one yet)."""
    pipeline_ratio: dict[str, float] = field(default_factory=lambda: {"unified": 1.0, "disaggregated": 1.0})
    """Fitted pipeline time (steps + teardown) / the prior's, per backend class."""

    @property
    def calibrated(self) -> bool:
        return self.results > 0

    def describe(self) -> str:
        if not self.calibrated:
            return f"{self.engine}/{self.executor}/{self.instance_type}: not calibrated (no finished results); priors from config estimate.overheads.{self.executor}"
        rs = self.values["request_s"]
        parts = [f"{c} {self.values[c]:.2f} s ({self.sources.get(c, 'prior')})" for c in COMPONENTS if c not in ("step_s", "teardown_s")]
        parts.append("steps + teardown x " + ", ".join(f"{k} {r:.2f}" for k, r in self.pipeline_ratio.items())
                     + f" ({self.sources.get('step_s', 'prior')})")
        parts.append("request_s " + ", ".join(f"{k} {v * 1000:.1f} ms ({self.sources.get('request_s.' + k, 'prior')})" for k, v in rs.items()))
        if self.engine != "sim":
            parts.append(f"engine speed factor {self.k:.2f}")
        other = " of other instance types" if self.borrowed else ""
        return f"{self.engine}/{self.executor}/{self.instance_type}: calibrated from {self.results} results{other}: " + "; ".join(parts)


@dataclass
class TrialTime:
    startup_s: float
    bench_s: float
    pipeline_s: float
    gap_s: float

    @property
    def total_s(self) -> float:
        return self.startup_s + self.bench_s + self.pipeline_s + self.gap_s


def trial_time(timing: em.Timing, spec: dict[str, Any], fit: Fit) -> TrialTime:
    v = fit.values
    servers, nodes, steps = _shape(spec["backend"])
    t = timing.scaled(fit.k)
    warm, meas = em.bench_engine_s(t, spec, v["request_s"][backend_class(spec["backend"])])
    ratio = fit.pipeline_ratio[backend_class(spec["backend"])]
    return TrialTime(servers * (t.startup_s + v["server_process_s"]), warm + meas + v["client_start_s"],
                     (steps * v["step_s"] + nodes * v["teardown_s"]) * ratio, v["gap_s"])


# ------------------------------------------------------------------------- calibration
@dataclass
class Observation:
    """One finished trial, split into the estimate's components by its own timestamps."""

    key: tuple[str, str, str]
    spec: dict[str, Any]
    timing: em.Timing
    started: float
    finished: float
    startup: float
    bench: float
    duration: float

    @property
    def other(self) -> float:
        return (self.finished - self.started) - self.startup - self.bench


def _group_key(engine: str, executor: str, instance_type: str) -> tuple[str, str, str]:
    return engine, executor, "*" if executor == "local" else instance_type


def _profile_used(results: Path, doc: dict[str, Any]) -> dict[str, Any] | None:
    """The stand-in profile the result ran with, from its task file when that is still the one it ran."""
    phase, pid = doc.get("phase"), doc.get("pattern_id")
    for role, sha in (doc.get("provenance", {}).get("task_sha256") or {}).items():
        task = PhaseLayout.of(str(phase), results).task(str(pid), role)
        try:
            if sha256_file(task) != sha:
                continue
            argv = json.loads(task.read_text())["servers"][0]["argv"]
            return json.loads(argv[argv.index("--profile-json") + 1])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue
    return None


def observation(results: Path, path: Path, cfg: dict[str, Any]) -> Observation | None:
    """None for anything that is not a complete, readable result."""
    try:
        doc = json.loads(path.read_text())
        prov = doc["provenance"]
        spec = doc["spec"]
        started, finished = _ts(doc["started_at"]), _ts(doc["finished_at"])
        b0, b1 = _ts(prov.get("bench_started_at")), _ts(prov.get("bench_finished_at"))
        startup = sum(float(x) for k, step in prov["steps"].items() if k.startswith("start:") for x in step["healthy_after_s"].values())
        duration = float(doc["duration"])
        engine, executor = doc["engine"], prov["executor"]
        instance_type = doc["description"]["instance_type"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if None in (started, finished, b0, b1):
        return None
    assert started is not None and finished is not None and b0 is not None and b1 is not None
    timing = timing_for(cfg, engine, executor, spec, _profile_used(results, doc) if engine == "sim" else None)
    return Observation(_group_key(engine, executor, instance_type), spec, timing, started, finished, startup, b1 - b0, duration)


def result_files(results: Path) -> list[Path]:
    """Every finished trial: a pattern's trial files when it has them, else its result."""
    files = []
    for layout in PhaseLayout.every(results):
        trials = layout.trial_files()
        with_trials = {t.parent.name for t in trials}
        files.extend(r for r in sorted(layout.runs_dir.glob("*.json")) if r.stem not in with_trials)
        files.extend(trials)
    return files


def snakemake_runs(workdir: Path) -> list[tuple[float, float]]:
    """(start, end) of each Snakemake run, from its log: the name is the start, the mtime the end."""
    runs = []
    for log in sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log")):
        try:
            # Snakemake names the log after its start in local time (datetime.now().isoformat())
            start = time.mktime(time.strptime(log.name.split(".")[0], "%Y-%m-%dT%H%M%S")) + float("0." + log.name.split(".")[1])
            runs.append((start, log.stat().st_mtime))
        except (ValueError, IndexError, OSError):
            continue
    return runs


def _measurement_point(o: Observation, request_s: float) -> tuple[float, float, float]:
    """(simulated measurement without per-request overhead, its sensitivity to it, actual duration)."""
    spec = o.spec

    def meas(d: float) -> float:
        return em.simulate_load(o.timing, spec["backend"], int(spec["prompt_tokens"]), int(spec["max_tokens"]),
                                int(spec["measurement_iterations"]), em.load_shape(spec), int(spec["concurrency"]),
                                spec.get("request_rate"), d)

    e0, r = em.sensitivity(meas, request_s)
    return e0, r, o.duration


def _ratio(obs: list[Observation], prior: dict[str, Any]) -> float:
    model = sum(_shape(o.spec["backend"])[2] * prior["step_s"] + _shape(o.spec["backend"])[1] * prior["teardown_s"] for o in obs)
    return max(0.0, sum(o.other for o in obs)) / model if model > 0 else 1.0


def calibrate(cfg: dict[str, Any], obs: list[Observation], key: tuple[str, str, str], runs: list[tuple[float, float]]) -> Fit:
    """Fit the overheads of one group from its observations (priors where they say nothing)."""
    engine, executor, itype = key
    prior = _overheads(cfg, executor)
    fit = Fit(engine, executor, itype, {**prior, "request_s": dict(prior["request_s"])})
    mine = [o for o in obs if o.key == key]
    if not mine:
        mine = [o for o in obs if o.key[:2] == key[:2]]
        fit.borrowed = bool(mine)
    if not mine:
        return fit
    fit.results = len(mine)
    n = len(mine)
    src = f"{n} results"
    v = fit.values
    # request_s per class from the measured durations. Real vLLM first fits the engine speed
    # factor k on the roofline prior (from unified results when there are any: no proxy, no
    # transfer), then request_s per class with k fixed. The stand-in is the model: k = 1.
    pts = {cls: [_measurement_point(o, v["request_s"][cls]) for o in mine if backend_class(o.spec["backend"]) == cls]
           for cls in ("unified", "disaggregated")}
    first = "unified" if pts["unified"] else "disaggregated"
    for cls in sorted(pts, key=lambda c: c != first):
        if not pts[cls]:
            continue
        if engine != "sim" and cls == first:
            fit.k, d, used = em.fit_scale_and_request_s(pts[cls], v["request_s"][cls])
        else:
            _, d, used = em.fit_request_s([(fit.k * e, r, a) for e, r, a in pts[cls]], v["request_s"][cls])
        if used:
            v["request_s"][cls] = d
            fit.sources["request_s." + cls] = f"{used} results"
    # per-server start-up overhead on top of the engine's own start-up
    servers = sum(_shape(o.spec["backend"])[0] for o in mine)
    v["server_process_s"] = max(0.0, sum(o.startup - _shape(o.spec["backend"])[0] * o.timing.scaled(fit.k).startup_s for o in mine) / servers)
    fit.sources["server_process_s"] = src
    # the benchmark client's own start-up: bench time not explained by the simulated warm-up + measurement
    extra = []
    for o in mine:
        warm, _ = em.bench_engine_s(o.timing.scaled(fit.k), o.spec, v["request_s"][backend_class(o.spec["backend"])])
        extra.append(o.bench - o.duration - warm)
    v["client_start_s"] = max(0.0, statistics.fmean(extra))
    fit.sources["client_start_s"] = src
    # pipeline steps and teardown: a ratio on the prior per backend class (results do not tell
    # steps and teardown apart; a disaggregated pattern also starts the proxy here)
    fit.pipeline_ratio = {cls: _ratio([o for o in mine if backend_class(o.spec["backend"]) == cls] or mine, prior)
                          for cls in ("unified", "disaggregated")}
    fit.sources["step_s"] = fit.sources["teardown_s"] = src
    # the pause between consecutive results (a job launch), and the per-run part
    ordered = sorted(mine, key=lambda o: o.started)
    gaps = [b.started - a.finished for a, b in zip(ordered, ordered[1:]) if 0 <= b.started - a.finished <= MAX_GAP_S]
    if gaps:
        v["gap_s"] = statistics.median(gaps)
        fit.sources["gap_s"] = f"{len(gaps)} pauses"
    once = []
    for start, end in runs:
        inside = [o for o in mine if start <= o.started and o.finished <= end]
        if inside:
            once.append(min(o.started for o in inside) - start + end - max(o.finished for o in inside))
    if once:
        v["invocation_s"] = statistics.median(once)
        fit.sources["invocation_s"] = f"{len(once)} Snakemake runs"
    return fit


# ------------------------------------------------------------------------- the estimate
@dataclass
class PatternEstimate:
    pattern_id: str
    layer: str
    backend: str
    trials: int
    planned: int
    trial: TrialTime
    aws_trial: TrialTime | None
    aws_trials: int = 0
    """Local mode: trials an AWS run would still need (local stand-in results never count there)."""

    @property
    def wall_s(self) -> float:
        return self.trials * self.trial.total_s

    @property
    def aws_wall_s(self) -> float:
        return self.aws_trials * self.aws_trial.total_s if self.aws_trial else 0.0


@dataclass
class Estimate:
    phase: str
    plan_name: str
    instance_type: str
    executor: str
    engine: str
    time_scale: float | None
    patterns: list[PatternEstimate]
    layers: list[tuple[str, str]]
    fit: Fit
    aws_fit: Fit | None
    price: float | None
    nodes: int
    timing_source: str
    aws_timing_source: str | None
    warnings: list[str] = field(default_factory=list)
    """The plan's warnings (disagglab/plan/checks.py), as validate, -n and status show them."""

    def layer_rows(self, layer: str) -> list[PatternEstimate]:
        return [p for p in self.patterns if p.layer == layer]

    def once_s(self, aws: bool = False) -> float:
        """Per Snakemake run: its start-up and final markers, minus the gap already counted per trial."""
        fit = self.aws_fit if aws else self.fit
        assert fit is not None
        todo = any(p.aws_trials if aws else p.trials for p in self.patterns)
        return max(0.0, fit.values["invocation_s"] - fit.values["gap_s"]) if todo else 0.0

    def to_json(self) -> dict[str, Any]:
        def totals(rows: list[PatternEstimate], aws: bool) -> dict[str, Any]:
            wall = sum(p.aws_wall_s if aws else p.wall_s for p in rows)
            trials = [p.aws_trials if aws else p.trials for p in rows]
            return {"patterns_to_run": sum(1 for t in trials if t), "patterns": len(rows),
                    "trials_to_run": sum(trials), "wall_s": round(wall, 3), **self.cost(wall, aws)}

        doc: dict[str, Any] = {
            "phase": self.phase, "executor": self.executor, "engine": self.engine, "instance_type": self.instance_type,
            "calibration": {"calibrated": self.fit.calibrated, "results": self.fit.results, "text": self.fit.describe(),
                            "values": self.fit.values},
            "layers": {lid: totals(self.layer_rows(lid), False) for lid, _ in self.layers},
            "once_per_run_s": round(self.once_s(), 3),
            "patterns": {p.pattern_id: {"layer": p.layer, "trials_to_run": p.trials, "trials_planned": p.planned,
                                        "startup_s": round(p.trial.startup_s, 3), "bench_s": round(p.trial.bench_s, 3),
                                        "pipeline_s": round(p.trial.pipeline_s, 3), "gap_s": round(p.trial.gap_s, 3),
                                        "wall_s": round(p.wall_s, 3)} for p in self.patterns},
        }
        doc["warnings"] = self.warnings
        doc["total"] = totals(self.patterns, False)
        doc["total"]["wall_s"] = round(doc["total"]["wall_s"] + self.once_s(), 3)
        doc["total"].update(self.cost(doc["total"]["wall_s"], False))
        if self.aws_fit is not None:
            doc["aws"] = {lid: totals(self.layer_rows(lid), True) for lid, _ in self.layers}
            aws_total = totals(self.patterns, True)
            aws_total["wall_s"] = round(aws_total["wall_s"] + self.once_s(True), 3)
            aws_total.update(self.cost(aws_total["wall_s"], True))
            doc["aws"]["total"] = aws_total
        return doc

    def cost(self, wall_s: float, aws: bool) -> dict[str, Any]:
        """Instance-hours and dollars: the node pair is leased (and billed) for the whole run."""
        if self.executor == "local" and not aws:
            return {"instance_hours": None, "usd": None}
        hours = wall_s * self.nodes / 3600.0
        return {"instance_hours": round(hours, 4), "usd": None if self.price is None else round(hours * self.price, 2)}


def estimate(plan: Plan, cfg: dict[str, Any], results: Path = Path("results"), workdir: Path = Path(".")) -> Estimate:
    phase = plan.phase_name
    phases = Phases(plan.path.parent, cfg)
    executor, engine = cfg["executor"], cfg["engine"]
    infra = plan.infrastructure
    obs = [o for o in (observation(results, f, cfg) for f in result_files(results)) if o is not None]
    runs = snakemake_runs(workdir)
    fit = calibrate(cfg, obs, _group_key(engine, executor, infra["instance_type"]), runs)
    aws_fit = calibrate(cfg, obs, _group_key("vllm", "ssm", infra["instance_type"]), runs) if executor == "local" else None
    aws_phases = Phases(plan.path.parent, {**cfg, **AWS_SWITCH}) if aws_fit is not None else None
    rows = []
    timing_source = aws_source = None
    for layer in plan.layers:
        for pid in layer.pattern_ids:
            pattern = plan.pattern(pid)
            todo, planned = trials_to_run(phases, phase, pattern, results)
            timing = timing_for(cfg, engine, executor, pattern.spec)
            timing_source = timing.source
            aws_trial, aws_todo = None, 0
            if aws_fit is not None and aws_phases is not None:
                aws_timing = timing_for(cfg, "vllm", "ssm", pattern.spec)
                aws_source = aws_timing.source
                aws_trial = trial_time(aws_timing, pattern.spec, aws_fit)
                aws_todo = trials_to_run(aws_phases, phase, pattern, results)[0]
            rows.append(PatternEstimate(pid, layer.id, pattern.backend, todo, planned, trial_time(timing, pattern.spec, fit), aws_trial, aws_todo))
    prices = cfg.get("estimate", {}).get("prices_usd_per_hour", {})
    price = prices.get(infra["instance_type"])
    return Estimate(phase, plan.name, infra["instance_type"], executor, engine, float(cfg["sim"].get("time_scale", 1.0)) if engine == "sim" else None,
                    rows, [(lay.id, lay.name) for lay in plan.layers], fit, aws_fit, None if price is None else float(price),
                    2, timing_source or "", aws_source, warning_lines(plan_findings(plan, cfg).warnings))


# ------------------------------------------------------------------------- the table
def _money(est: Estimate, usd: float | None) -> str:
    if usd is None:
        return f"unknown (add {est.instance_type} to estimate.prices_usd_per_hour)"
    return f"${usd:,.2f}"


def markdown(est: Estimate) -> str:
    doc = est.to_json()
    local = est.executor == "local"
    what = f"executor {est.executor}, engine {est.engine}" + (f" (stand-in, time_scale {est.time_scale:g})" if est.time_scale else "")
    lines = [f"# Estimate for {est.phase}: {est.plan_name}", "",
             f"What runs: {what}. Instance type {est.instance_type}; a node pair ({est.nodes} instances) is leased per pattern.", ""]
    if est.warnings:  # never blocks a run; the same lines as validate, -n and status
        lines += ["## Warnings", "", *(f"- {w}" for w in est.warnings), ""]
    head = ["layer", "patterns to run", "trials to run", "est. wall time"]
    if local:
        head += [f"on AWS ({est.instance_type}, vLLM): patterns", "on AWS: wall time", "on AWS: instance-hours", "on AWS: cost (USD)"]
    else:
        head += ["instance-hours", "cost (USD)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, t: dict[str, Any], aws: dict[str, Any] | None) -> str:
        counts = [f"{t['patterns_to_run']} of {t['patterns']}", str(t["trials_to_run"])] if "patterns" in t else ["-", "-"]
        cells = [label, *counts, em.hms(t["wall_s"])]
        if local:
            assert aws is not None
            aws_counts = f"{aws['patterns_to_run']} of {aws['patterns']}" if "patterns" in aws else "-"
            cells += [aws_counts, em.hms(aws["wall_s"]), f"{aws['instance_hours']:.2f}", _money(est, aws["usd"])]
        else:
            cells += [f"{t['instance_hours']:.2f}", _money(est, t["usd"])]
        return "| " + " | ".join(cells) + " |"

    for lid, name in est.layers:
        lines.append(row(f"{lid} ({name})", doc["layers"][lid], doc.get("aws", {}).get(lid)))
    if est.once_s() > 0:
        once = {"wall_s": est.once_s(), **est.cost(est.once_s(), False)}
        aws_once = None
        if local:
            aws_once = {"wall_s": est.once_s(True), **est.cost(est.once_s(True), True)}
        lines.append(row("once per Snakemake run", once, aws_once))
    lines.append(row("**total**", doc["total"], doc.get("aws", {}).get("total")))
    speed = f" x {est.fit.k:.2f} (calibrated)" if est.engine != "sim" and est.fit.calibrated else ""
    lines += ["", "Calibration: " + est.fit.describe() + ".", f"Engine timing: {est.timing_source}{speed}."]
    if est.aws_fit is not None:
        lines += ["On AWS (what this plan would take with `--configfile config/aws.yaml`): " + est.aws_fit.describe() + ".",
                  f"AWS engine timing: {est.aws_timing_source or '-'}"
                  + (f" x {est.aws_fit.k:.2f} (calibrated)." if est.aws_fit.calibrated else " (a rough prior until calibrated).")]
    lines += ["Prices: `estimate.prices_usd_per_hour` in config/config.yaml (prefilled with on-demand us-east-1 list prices: "
              "check them before relying on them).",
              "Wall time is for one node pair; with `--resources node_pair=N` it is about N times shorter, instance-hours stay the same.",
              "", "| pattern | layer | trials to run | start-up | warm-up + measurement | pipeline + gap | wall time |",
              "|---|---|---|---|---|---|---|"]
    for p in est.patterns:
        t = p.trial
        lines.append(f"| {p.pattern_id} | {p.layer} | {p.trials} of {p.planned} | {t.startup_s:.1f} s | {t.bench_s:.1f} s | "
                     f"{t.pipeline_s + t.gap_s:.1f} s | {em.hms(p.wall_s)} |")
    return "\n".join(lines) + "\n"


def fingerprint(plan: Plan, cfg: dict[str, Any], phases: Phases, results: Path = Path("results")) -> list[str]:
    """What the estimate depends on (the rule's params): plan, config, what would run, finished results."""
    phase = plan.phase_name
    tasks = hashlib.sha256()
    for pid in plan.patterns:
        tasks.update("\n".join([*phases.task_digests(phase, pid), *phases.node_file_fingerprint(phase, pid), ""]).encode())
    finished = hashlib.sha256()
    files = [f for lay in PhaseLayout.every(results) for f in (*sorted(lay.runs_dir.glob("*.json")), *sorted(lay.trials_root.glob("*/*.json")))]
    for f in files:
        finished.update(f"{f}={sha256_file(f)}\n".encode())
    return [f"plan={sha256_file(plan.path)}", f"config={hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()}",
            f"tasks={tasks.hexdigest()}", f"results={len(files)}:{finished.hexdigest()}"]
