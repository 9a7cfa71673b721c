"""The phase report: summary.csv, a self-contained report.html and a report.md with PNG plots.

What users look at after a run. The CSV is the machine-readable table (one row per planned
pattern); the HTML and Markdown answer "did disaggregation over EFA beat TCP and the unified
baseline, where, and by how much" before any detail, then show every layer, every plot and
every pattern that is failed, missing or invalid. Both documents come from one context, so
they cannot disagree. Identical inputs give identical bytes, except the one footer line that
says when the report was generated: everything is sorted, and plots carry no timestamp.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from disagglab import __version__
from disagglab.hashing import atomic_write_bytes
from disagglab.plan.model import BACKENDS, Plan, load_plan
from disagglab.report.answer import annotate
from disagglab.report.answer_plots import PREFIX as ANSWER_PLOT_PREFIX
from disagglab.report.answer_plots import answer_figures
from disagglab.report.answer_view import WorkloadAnswer, workload_answers
from disagglab.report.answer_view import method as answer_method
from disagglab.report.backends import (
    COMPARED,
    Best,
    PairSummary,
    best_throughput_per_gpu,
    best_ttft,
    headline,
    pair_summaries,
    verdict,
)
from disagglab.report.cells import Table, fmt, with_interval
from disagglab.report.cost import price_table
from disagglab.report.plots import PLOT_NAMES, SIM_BANNER, Plot, make_plots
from disagglab.report.rows import Row, collect_rows, rows_to_csv
from disagglab.report.topologies import Ranking, answer, configuration, topology_rankings

__all__ = ["PLOT_NAMES", "SIM_BANNER", "collect_rows", "write_report", "write_summary"]

TEMPLATE = "report_template.html.jinja2"
ANSWER_TITLE = "The answer: which configuration to deploy, per workload"
NO_ANSWER = "No valid result yet, so there is nothing to recommend."
NOTE_MAX = 180


@dataclass(frozen=True)
class LayerView:
    id: str
    name: str
    priority: str
    description: str
    counts: str
    table: Table


@dataclass(frozen=True)
class FigureView:
    name: str
    title: str
    caption: str
    alt: str
    data_uri: str
    md_path: str
    empty_reason: str


@dataclass(frozen=True)
class AnswerView:
    """One workload of the answer section, its plots ready for either document."""

    workload: str
    anchor: str
    sentences: tuple[str, ...]
    table: Table
    figures: list[FigureView]


@dataclass
class Context:
    title: str
    description: str
    simulated: bool
    banner: str
    facts: list[tuple[str, str]]
    counts: str
    answers: list[AnswerView]
    answer_method: list[str]
    headline: str
    verdict: Table
    best_ttft: Table
    best_tput: Table
    speedups: Table
    topology_answers: list[str]
    topologies: Table
    method: list[str]
    figures: list[FigureView]
    layers: list[LayerView]
    problems: Table
    footer: str


def _as_plan(plan: Plan | str | Path) -> Plan:
    return plan if isinstance(plan, Plan) else load_plan(plan)


def write_summary(plan: Plan | str | Path, results_dir: str | Path, out_csv: str | Path,
                  prices: Mapping[str, Any] | None = None) -> list[Row]:
    """Write results/<phase>/summary.csv: one row per pattern of the plan, in plan order; returns the rows.

    The answer's columns (workload, cost, recommendation) come last; prices default to the configuration's.
    """
    plan = _as_plan(plan)
    rows = collect_rows(plan, Path(results_dir))
    annotate(rows, plan.infrastructure, price_table(prices))
    atomic_write_bytes(Path(out_csv), rows_to_csv(rows).encode())
    return rows


# -- formatting -------------------------------------------------------------------------------

def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= NOTE_MAX else text[: NOTE_MAX - 3] + "..."


def _backends_present(rows: list[Row]) -> list[str]:
    present = {r["backend"] for r in rows}
    return [b for b in BACKENDS if b in present]


# -- tables -----------------------------------------------------------------------------------

def _best_table(bests: list[Best], backends: list[str], unit: str, with_concurrency: bool) -> Table:
    cols = ("prompt tokens", *(("concurrency",) if with_concurrency else ()), *backends, "best", "margin over runner-up")
    rows = []
    for b in bests:
        tokens = f"{b.prompt_tokens} ({b.variant})" if b.variant else str(b.prompt_tokens)
        cells = [tokens, *((str(b.concurrency),) if with_concurrency else ())]
        for backend in backends:
            if backend not in b.values:
                cells.append("-")
                continue
            value, where = b.values[backend]
            cells.append(fmt(value, unit) + ("" if with_concurrency else f" at {where}"))
        margin = "-" if b.margin is None else f"{b.margin:.2f}x"
        if b.margin is not None and b.significant is not None:
            margin += " (significant)" if b.significant else " (95% CIs overlap: not significant)"
        cells += [b.winner, margin]
        rows.append(tuple(cells))
    numeric = (True, *((True,) if with_concurrency else ()), *(True for _ in backends), False, True)
    return Table(cols, tuple(rows), numeric)


def _speedup_table(pairs: list[PairSummary]) -> Table:
    units = {"median_ttft_ms": "ms", "median_tpot_ms": "ms", "median_e2el_ms": "ms", "output_throughput_per_gpu": ""}
    cols = ("treatment vs baseline", "load point", *(f"{label} speedup" for label, _ in COMPARED.values()),
            "treatment / baseline pattern")
    rows = []
    for pair in pairs:
        for p in pair.points:
            cells = [f"{pair.treatment} vs {pair.baseline}", p.point]
            for metric in COMPARED:
                r = p.ratios.get(metric)
                cells.append("-" if r is None else f"{r.value:.2f}x ({fmt(r.baseline)} -> {fmt(r.treatment, units[metric])}{r.note()})")
            rows.append((*cells, f"{p.treatment_id} / {p.baseline_id}"))
    return Table(cols, tuple(rows), (False, False, True, True, True, True, False))


TOPOLOGY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("out tok/s/GPU", "output_throughput_per_gpu", ""), ("total tok/s/GPU", "total_token_throughput_per_gpu", ""),
    ("req/s/GPU", "request_throughput_per_gpu", ""), ("TTFT p50", "median_ttft_ms", "ms"), ("TPOT p50", "median_tpot_ms", "ms"),
)


def _share(ranking: Ranking, row: Row) -> str:
    """'best', or '0.83x of best' with what the 95% intervals say."""
    if row is ranking.best:
        return "best"
    sig = {None: "", True: " (significant)", False: " (95% CIs overlap)"}[ranking.significant(row)]
    return f"{ranking.share_of_best(row):.2f}x of best{sig}"


def _topology_table(rankings: list[Ranking]) -> Table:
    cols = ("load point", "rank", "configuration", "GPUs", *(h for h, _, _ in TOPOLOGY_COLUMNS), "vs best", "pattern")
    out = []
    for ranking in rankings:
        for i, r in enumerate(ranking.entries, 1):
            metrics = [with_interval(r, key, unit) for _, key, unit in TOPOLOGY_COLUMNS]
            out.append((ranking.point, str(i), configuration(r), str(r["gpus_used"]), *metrics, _share(ranking, r), r["pattern_id"]))
    numeric = (False, True, False, True, *(True for _ in TOPOLOGY_COLUMNS), True, False)
    return Table(cols, tuple(out), numeric)


def _failure(row: Row) -> str:
    """'step bench on node2: <cause>', or the cause alone when the record could not be read."""
    if row.get("failure_step") is None:
        return str(row.get("failure_cause") or row["detail"])
    return f"step {row['failure_step']} on {row['failure_node']}: {row['failure_cause']}"


def _note(row: Row) -> str:
    status = row["status"]
    if status == "failed":
        return _short(_failure(row))
    if status in ("missing", "corrupt"):
        return _short(row["detail"])
    bits = []
    if row["validity"] == "invalid":
        bits.append(f"INVALID: {row['validity_reason']}")
    if row.get("stale"):
        bits.append(f"stale ({row['stale']})")
    if row.get("efa_verified") is False:
        bits.append(f"EFA not verified (NIXL preflight: {row.get('preflight_transport')})")
    if row.get("accepted"):
        bits.append(str(row["accepted"]))
    return _short("; ".join(bits))


LAYER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (header, row key, unit); empty key = computed
    ("TTFT p50", "median_ttft_ms", "ms"), ("TTFT p99", "p99_ttft_ms", "ms"), ("TPOT p50", "median_tpot_ms", "ms"),
    ("ITL p50", "median_itl_ms", "ms"), ("E2EL p50", "median_e2el_ms", "ms"), ("out tok/s", "output_throughput", ""),
    ("GPUs", "gpus_used", ""), ("out tok/s/GPU", "output_throughput_per_gpu", ""),
)


def _layer_table(rows: list[Row]) -> Table:
    cols = ("pattern", "backend", "topology", "prompt", "c", "trials", "status", "validity", *(h for h, _, _ in LAYER_COLUMNS), "note")
    out = []
    for r in rows:
        gpus = str(r["gpus_used"]) if r.get("gpus_used") is not None else "-"
        metrics = [gpus if key == "gpus_used" else with_interval(r, key, unit) for _, key, unit in LAYER_COLUMNS]
        load = str(r["concurrency"]) + (f" @ {r['request_rate']:g}/s" if r.get("request_rate") else "")
        trials = str(r["repeats"]) if r.get("repeats") else "-"
        out.append((r["pattern_id"], r["backend"], r["topology"], str(r["prompt_tokens"]), load, trials, r["status"], r["validity"] or "-", *metrics, _note(r)))
    numeric = (False, False, False, True, True, True, False, False, *(True for _ in LAYER_COLUMNS), False)
    return Table(cols, tuple(out), numeric)


def _problems(rows: list[Row]) -> Table:
    out = []
    for r in rows:
        if r["status"] == "failed":
            out.append((r["pattern_id"], r["layer"], "failed", _failure(r)))
        elif r["status"] in ("missing", "corrupt"):
            out.append((r["pattern_id"], r["layer"], r["status"], r["detail"]))
        else:
            if r["validity"] == "invalid":
                out.append((r["pattern_id"], r["layer"], "invalid", r["validity_reason"]))
            if r.get("stale"):
                out.append((r["pattern_id"], r["layer"], "stale", f"measured with different parameters than the plan now has: {r['stale']}"))
    return Table(("pattern", "layer", "state", "reason"), tuple(out))


def _counts(rows: list[Row]) -> str:
    states: dict[str, int] = {}
    for r in rows:
        states[r["status"]] = states.get(r["status"], 0) + 1
    invalid = sum(1 for r in rows if r["validity"] == "invalid")
    order = ("done", "failed", "missing", "corrupt")
    parts = [f"{states[s]} {s}" for s in order if states.get(s)]
    if states.get("done"):
        parts[0] += f" ({states['done'] - invalid} valid, {invalid} invalid)" if invalid else f" ({states['done']} valid)"
    return f"{len(rows)} patterns: " + ", ".join(parts)


# -- context ----------------------------------------------------------------------------------

METHOD = (
    "Backends are compared only at the same load point: every effective parameter equal except the backend.",
    "Only valid results measured with the plan's current parameters are compared or plotted; an invalid one (e.g. "
    "the decode server re-prefilled instead of receiving KV) or a stale one is listed below with its reason.",
    "Per-GPU throughput divides by every GPU the pattern used: every server's tp_size, so all prefill and decode "
    "servers for tcp/efa and every replica for unified.",
    "With topologies, efa vs tcp compares the same layout (2P1D with 2P1D); against unified, the baseline is the "
    "replica count with the same GPUs where the plan has one, otherwise the plan's first unified pattern at that load point.",
    "A speedup > 1.00x means the treatment is better: baseline / treatment for latencies, treatment / baseline "
    "for throughput. Speedup cells read 'speedup (baseline value -> treatment value)'.",
    "Patterns with repeats >= 2 show the mean over trials with the half-width of its 95% Student t confidence "
    "interval (±), and error bars in the plots. A difference is called significant only when the two intervals "
    "are disjoint; overlapping intervals are reported as such, never as a win. Single trials are not tested.",
)



def _figures(plots: list[Plot], plots_dir: Path, md_dir: Path) -> list[FigureView]:
    views = []
    for p in plots:
        uri = "data:image/png;base64," + base64.b64encode(p.png).decode() if p.png else ""
        md_path = os.path.relpath(plots_dir / p.filename, md_dir).replace(os.sep, "/") if p.png else ""
        views.append(FigureView(p.name, p.title, p.caption, p.alt, uri, md_path, p.empty_reason))
    return views


def _answer_views(answers: list[WorkloadAnswer], plots_dir: Path, md_dir: Path) -> list[AnswerView]:
    return [AnswerView(a.workload, a.anchor, a.sentences, a.table, _figures(list(a.plots), plots_dir, md_dir)) for a in answers]


def build_context(plan: Plan, rows: list[Row], plots: list[Plot], plots_dir: Path, md_dir: Path, generated_at: str,
                  answers: tuple[list[WorkloadAnswer], list[str]] = ([], [])) -> Context:
    """Everything both documents show, computed once; answers = (per workload, how to read them)."""
    done = [r for r in rows if r["status"] == "done"]
    simulated = any(r.get("simulated") for r in done)
    engines = sorted({str(r["engine"]) for r in done if r.get("engine")})
    pairs = pair_summaries(rows)
    rankings = topology_rankings(rows)
    backends = _backends_present(rows)
    infra = plan.infrastructure
    facts = [
        ("phase", plan.phase_name), ("plan", plan.name), ("model", str(infra["model"])),
        ("instance type", str(infra["instance_type"])), ("vLLM", str(infra["vllm_version"])),
        ("tensor parallel size", str(infra["tp_size"])), ("engine of the results", ", ".join(engines) or "-"),
    ]
    layers = []
    for layer in plan.layers:
        mine = [r for r in rows if r["layer"] == layer.id]
        layers.append(LayerView(layer.id, layer.name, layer.priority, layer.description, _counts(mine), _layer_table(mine)))
    return Context(
        title=f"{plan.phase_name} report: {plan.name}",
        description=plan.description,
        simulated=simulated,
        banner=SIM_BANNER,
        facts=facts,
        counts=_counts(rows),
        answers=_answer_views(answers[0], plots_dir, md_dir),
        answer_method=answers[1],
        headline=headline(pairs),
        verdict=Table(("treatment vs baseline", "metric", "treatment better at", "significant (disjoint 95% CIs)", "geometric-mean speedup",
                       "range", "where better"),
                      tuple(verdict(pairs)), (False, False, True, False, True, True, False)),
        best_ttft=_best_table(best_ttft(rows), backends, "ms", True),
        best_tput=_best_table(best_throughput_per_gpu(rows), backends, "", False),
        speedups=_speedup_table(pairs),
        topology_answers=[answer(k) for k in rankings] or [
            "No load point in this plan compares topologies with valid results: every pattern runs 1P1D or one unified server."],
        topologies=_topology_table(rankings),
        method=list(METHOD),
        figures=_figures(plots, plots_dir, md_dir),
        layers=layers,
        problems=_problems(rows),
        footer=f"Generated {generated_at} by disagglab {__version__} from {len(done)} result files.",
    )


# -- rendering --------------------------------------------------------------------------------

def render_html(ctx: Context) -> str:
    """The self-contained page. '://' in any text is written as '&#58;//' so the file holds no URL a
    browser or a checker could take for an external reference, while the reader still sees it."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent)), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(TEMPLATE).render(c=ctx).replace("://", "&#58;//")


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _md_table(t: Table) -> list[str]:
    if not t.rows:
        return ["(none)", ""]
    lines = ["| " + " | ".join(_md_cell(c) for c in t.columns) + " |",
             "|" + "|".join("---:" if t.align(i) == "right" else "---" for i in range(len(t.columns))) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return [*lines, ""]


def _md_figure(f: FigureView, level: str) -> list[str]:
    out = [f"{level} {f.title}", ""]
    return out + ([f"![{_md_cell(f.alt)}]({f.md_path})", "", f"*{f.caption}*", ""] if f.md_path else [f"_{f.empty_reason}_", ""])


def _md_answer(ctx: Context, banner: list[str]) -> list[str]:
    out = [f"## {ANSWER_TITLE}", "", *banner]
    if not ctx.answers:
        out += [f"_{NO_ANSWER}_", ""]
    for a in ctx.answers:
        out += [f"### Workload {a.workload}", "", *(line for s in a.sentences for line in (f"**{s}**", "")), *_md_table(a.table)]
        for f in a.figures:
            out += _md_figure(f, "####")
    return out + ["### How to read the answer", "", *(f"- {m}" for m in ctx.answer_method), ""]


def render_markdown(ctx: Context) -> str:
    """The same report as Markdown; plots are PNG files referenced relative to the .md file."""
    banner = [f"> **{ctx.banner}**", ""] if ctx.simulated else []
    out = [f"# {ctx.title}", "", *banner, ctx.description, ""]
    out += [f"- {k}: {v}" for k, v in ctx.facts] + [f"- patterns: {ctx.counts}", ""]
    out += _md_answer(ctx, banner)
    out += ["## Summary: did disaggregation over EFA beat TCP and unified?", "", *banner, f"**{ctx.headline}**", ""]
    out += _md_table(ctx.verdict)
    out += ["### Best backend per prompt length: TTFT p50 at the lowest concurrency", "", *_md_table(ctx.best_ttft)]
    out += ["### Best backend per prompt length: output tok/s per GPU (best load measured)", "", *_md_table(ctx.best_tput)]
    out += ["### Speedups at each shared load point", "", *_md_table(ctx.speedups)]
    out += ["### Per-GPU throughput by topology", "", *(f"- {a}" for a in ctx.topology_answers), *([""] if ctx.topology_answers else [])]
    out += _md_table(ctx.topologies)
    out += ["### How to read this", ""] + [f"- {m}" for m in ctx.method] + [""]
    out += ["## Plots", "", *banner]
    for f in ctx.figures:
        out += _md_figure(f, "###")
    for layer in ctx.layers:
        out += [f"## Layer {layer.id} [{layer.priority}]: {layer.name}", "", *banner, layer.description, "", layer.counts, ""]
        out += _md_table(layer.table)
    out += ["## Failed, missing and invalid patterns", "", *banner, *_md_table(ctx.problems)]
    out += ["---", "", ctx.footer, ""]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out))


def _write_plots(plots: list[Plot], plots_dir: Path) -> list[Path]:
    """Write the PNGs that have data; remove ours that no longer have any (never a stale picture).

    Answer plots are named per workload, so one of a workload that is gone is found by its prefix.
    """
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for p in plots:
        path = plots_dir / p.filename
        if p.png:
            atomic_write_bytes(path, p.png)
            written.append(path)
        elif path.exists():
            path.unlink()
    for old in plots_dir.glob(f"{ANSWER_PLOT_PREFIX}_*.png"):
        if old not in written:
            old.unlink()
    return written


def write_report(plan: Plan | str | Path, results_dir: str | Path, out_html: str | Path, out_md: str | Path,
                 plots_dir: str | Path, generated_at: str | None = None, prices: Mapping[str, Any] | None = None) -> list[Path]:
    """Write report.html (self-contained), report.md and its PNG plots; return the plot files written
    (the fixed plots in PLOT_NAMES order, then each workload's answer plots).

    generated_at is the footer's time stamp (default: now, UTC); pass a fixed value for
    byte-identical output. prices: instance type -> USD per hour (default: the configuration's).
    """
    plan = _as_plan(plan)
    out_html, out_md, plots_dir = Path(out_html), Path(out_md), Path(plots_dir)
    rows = collect_rows(plan, Path(results_dir))
    price, recs = annotate(rows, plan.infrastructure, price_table(prices))
    simulated = any(r.get("simulated") for r in rows if r["status"] == "done")
    plots = make_plots(rows, simulated)
    figures = answer_figures(rows, simulated)
    answers = (workload_answers(recs, figures, price), answer_method(price))
    stamp = generated_at or datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ctx = build_context(plan, rows, plots, plots_dir, out_md.parent, stamp, answers)
    written = _write_plots([*plots, *(p for f in figures for p in f.plots)], plots_dir)
    atomic_write_bytes(out_html, render_html(ctx).encode())
    atomic_write_bytes(out_md, render_markdown(ctx).encode())
    return written
