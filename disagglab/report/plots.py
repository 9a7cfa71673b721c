"""The report's figures: latency and throughput against load and prompt length, by backend.

These are the plots the peer study found in every good serving report (latency vs load,
TTFT vs input length, per-GPU throughput vs per-user speed), and per-GPU throughput by topology. Each is drawn from the summary
rows with matplotlib's object API on the Agg canvas: no pyplot state, no display, and the
same rows give the same PNG bytes (no timestamp in the file). A plot without data is not
drawn; it says why instead, so nobody reads an empty frame as "zero".
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from disagglab.plan.model import BACKENDS
from disagglab.report.rows import Row, comparable, interval, number, variant
from disagglab.report.topologies import RANKED_BY, Ranking, configuration, topology_rankings

SIM_BANNER = "SIMULATED (vLLM stand-in, not real GPU measurements)"
COLORS = {"unified": "#4d4d4d", "tcp": "#1f77b4", "efa": "#d62728"}
MARKERS = {"unified": "s", "tcp": "o", "efa": "^"}
LABELS = {
    "median_ttft_ms": "TTFT p50 (ms)", "p99_ttft_ms": "TTFT p99 (ms)",
    "median_e2el_ms": "E2E latency p50 (ms)", "p99_e2el_ms": "E2E latency p99 (ms)",
    "median_tpot_ms": "TPOT p50 (ms)", "median_itl_ms": "ITL p50 (ms)",
    "output_throughput": "output tok/s", "output_throughput_per_gpu": "output tok/s per GPU",
}
LINESTYLES = ("-", "--", ":", "-.")
DPI = 100


@dataclass(frozen=True)
class Plot:
    """One figure of the report: a PNG, or the reason there is none."""

    name: str
    title: str
    caption: str
    alt: str
    png: bytes | None
    empty_reason: str = ""

    @property
    def filename(self) -> str:
        return f"{self.name}.png"


def _plottable(rows: list[Row]) -> list[Row]:
    """Valid, current results only: an invalid one (KV never moved) or a stale one would draw a false line."""
    return [r for r in rows if comparable(r)]


def _closed_loop(rows: list[Row]) -> list[Row]:
    return [r for r in _plottable(rows) if not r.get("request_rate")]


def _tokens_label(tokens: int) -> str:
    return f"{tokens / 1000:g}k" if tokens >= 1000 else str(tokens)


def _render(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _suptitle(fig: Figure, title: str, simulated: bool) -> None:
    if simulated:
        fig.suptitle(f"{title}\n{SIM_BANNER}", color="#b00000", fontweight="bold", fontsize=11)
    else:
        fig.suptitle(title, fontsize=11)


def _series_label(backend: str, var: str) -> str:
    return f"{backend} ({var})" if var else backend


def _series_order(key: tuple[str, str]) -> tuple[int, str]:
    return (BACKENDS.index(key[0]) if key[0] in BACKENDS else len(BACKENDS), key[1])


Point = tuple[float, float, tuple[float, float] | None]
"""(x, y, 95% interval of y or None for a single trial)"""


def _series(rows: list[Row], x: str, y: str) -> dict[tuple[str, str], list[Point]]:
    """(backend, variant) -> sorted (x, y, interval) points; the first row in plan order wins when an x repeats."""
    out: dict[tuple[str, str], dict[float, tuple[float, tuple[float, float] | None]]] = {}
    for r in rows:
        xv, yv = number(r.get(x)), number(r.get(y))
        if xv is None or yv is None:
            continue
        out.setdefault((r["backend"], variant(r)), {}).setdefault(xv, (yv, interval(r, y)))
    return {k: [(xv, yv, ci) for xv, (yv, ci) in sorted(out[k].items())] for k in sorted(out, key=_series_order)}


def _axis_x(ax: Any, values: list[float], log2: bool, tokens: bool) -> None:
    """Ticks exactly at the measured x values (no 0.975 concurrency), log2 when they span >= 4x."""
    xs = sorted(set(values))
    if not xs:
        return
    if log2 and xs[0] > 0 and xs[-1] / xs[0] >= 4:
        ax.set_xscale("log", base=2)
    if len(xs) == 1:
        ax.set_xlim(xs[0] * 0.5, xs[0] * 1.5)
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _tokens_label(int(v)) if tokens else f"{v:g}"))


def _y_from_zero(ax: Any, values: list[float]) -> None:
    """Latency and throughput axes start at 0 (no exaggerated gaps), with headroom above the highest point."""
    top = max(values, default=0.0)
    ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)


def _line_grid(rows: list[Row], x: str, xlabel: str, ys: list[str], facet: str | None, title: str, simulated: bool,
               log2_x: bool = False) -> bytes | None:
    """len(ys) rows of panels x one column per facet value (e.g. prompt length); one line per backend."""
    facets = sorted({r[facet] for r in rows}) if facet else [None]
    panels = {(y, f): _series([r for r in rows if facet is None or r[facet] == f], x, y) for y in ys for f in facets}
    if not any(panels.values()):
        return None
    variants = sorted({k[1] for series in panels.values() for k in series})
    styles = {v: LINESTYLES[i % len(LINESTYLES)] for i, v in enumerate(variants)}
    ncols = len(facets)
    fig = Figure(figsize=(max(6.0, 3.4 * ncols), 2.9 * len(ys) + 0.9), layout="constrained")
    axes = fig.subplots(len(ys), ncols, squeeze=False)
    for i, y in enumerate(ys):
        for j, f in enumerate(facets):
            ax = axes[i][j]
            series = panels[(y, f)]
            xs: list[float] = []
            for (backend, var), pts in series.items():
                xs.extend(p[0] for p in pts)
                style = {"marker": MARKERS[backend], "color": COLORS[backend], "linestyle": styles[var], "label": _series_label(backend, var)}
                if any(p[2] for p in pts):  # repeats: error bars span the 95% t-interval of the mean
                    yerr = [[p[1] - p[2][0] if p[2] else 0.0 for p in pts], [p[2][1] - p[1] if p[2] else 0.0 for p in pts]]
                    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=yerr, capsize=3, **style)
                else:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], **style)
            _axis_x(ax, xs, log2_x, tokens=x == "prompt_tokens")
            if not series:
                ax.text(0.5, 0.5, "no valid result", ha="center", va="center", transform=ax.transAxes, color="#888888")
            _y_from_zero(ax, [p[2][1] if p[2] else p[1] for pts in series.values() for p in pts])
            ax.grid(True, alpha=0.3)
            if i == 0 and f is not None:
                ax.set_title(f"{_tokens_label(f)} prompt tokens" if facet == "prompt_tokens" else f"{facet} = {f}", fontsize=10)
            if i == len(ys) - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(LABELS.get(y, y))
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    keys = sorted({k for series in panels.values() for k in series}, key=_series_order)
    order = [_series_label(*k) for k in keys]
    fig.legend([handles[lab] for lab in order], order, loc="outside lower center", ncols=min(len(order), 4))
    _suptitle(fig, title, simulated)
    return _render(fig)


def _bar_key(row: Row) -> tuple[int, int, float, str]:
    return (row["prompt_tokens"], row["concurrency"], float(row.get("request_rate") or 0.0), variant(row))


def _point_text(tokens: int, concurrency: int, rate: float, var: str) -> str:
    """'4k c8', '4k c8 2/s', '4k c4\nprefix cache': short enough for a tick label."""
    return f"{_tokens_label(tokens)} c{concurrency}" + (f" {rate:g}/s" if rate else "") + (f"\n{var}" if var else "")


def _bars(rows: list[Row], metrics: list[str], title: str, simulated: bool) -> bytes | None:
    """Grouped bars per load point: p50 as the bar, p99 as a black tick above it."""
    keyed = sorted({_bar_key(r) for r in rows})
    if not keyed or not any(number(r.get(m)) is not None for r in rows for m in metrics):
        return None
    fig = Figure(figsize=(max(6.0, 0.9 * len(keyed) + 2.5), 2.8 * len(metrics) + 0.9), layout="constrained")
    axes = fig.subplots(len(metrics), 1, squeeze=False)
    width = 0.8 / len(BACKENDS)
    for i, metric in enumerate(metrics):
        ax = axes[i][0]
        tail = metric.replace("median_", "p99_")
        for k, backend in enumerate(BACKENDS):
            xs, hs, tails, cis = [], [], [], []
            for n, key in enumerate(keyed):
                match = [r for r in rows if r["backend"] == backend and _bar_key(r) == key]
                value = number(match[0].get(metric)) if match else None
                if value is None:
                    continue
                xs.append(n + (k - 1) * width)
                hs.append(value)
                tails.append(number(match[0].get(tail)))
                cis.append(interval(match[0], metric))
            if not xs:
                continue
            yerr = None
            if any(cis):  # repeats: the 95% t-interval of the mean p50 as an error bar
                yerr = [[h - c[0] if c else 0.0 for h, c in zip(hs, cis)], [c[1] - h if c else 0.0 for h, c in zip(hs, cis)]]
            ax.bar(xs, hs, width=width, color=COLORS[backend], label=backend, yerr=yerr, capsize=3 if yerr else 0)
            tx = [x for x, t in zip(xs, tails) if t is not None]
            ax.plot(tx, [t for t in tails if t is not None], linestyle="none", marker="_", markersize=12, color="black",
                    label="p99" if k == 0 else None)
        ax.set_xticks(range(len(keyed)))
        ax.set_xticklabels([_point_text(p, c, r, v) for p, c, r, v in keyed], fontsize=8)
        ax.set_ylabel(LABELS.get(metric, metric))
        ax.grid(True, axis="y", alpha=0.3)
    axes[-1][0].set_xlabel("load point (prompt tokens, concurrency)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    _suptitle(fig, title, simulated)
    return _render(fig)


def _per_user_speed(row: Row) -> float | None:
    tpot = number(row.get("median_tpot_ms"))
    return 1000.0 / tpot if tpot else None


def _pareto(rows: list[Row], title: str, simulated: bool) -> bytes | None:
    """Output tok/s per GPU against tok/s per user (1000 / TPOT p50): the serving trade-off curve."""
    points = [(r, _per_user_speed(r), number(r.get("output_throughput_per_gpu"))) for r in rows]
    points = [(r, x, y) for r, x, y in points if x is not None and y is not None]
    if not points:
        return None
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.subplots()
    for backend in BACKENDS:
        mine = sorted(((x, y, r) for r, x, y in points if r["backend"] == backend), key=lambda p: (p[0], p[1], p[2]["pattern_id"]))
        if not mine:
            continue
        ax.scatter([p[0] for p in mine], [p[1] for p in mine], color=COLORS[backend], marker=MARKERS[backend], label=backend)
        for x, y, r in mine:
            ax.annotate(_point_text(r["prompt_tokens"], r["concurrency"], float(r.get("request_rate") or 0.0), variant(r)), (x, y),
                        textcoords="offset points",
                        xytext=(4, 3), fontsize=7, color=COLORS[backend])
    ax.set_xlabel("output tok/s per user (1000 / TPOT p50)")
    ax.set_ylabel("output tok/s per GPU (all GPUs of the pattern)")
    ax.set_xlim(0, max(p[1] for p in points) * 1.15)
    _y_from_zero(ax, [p[2] for p in points])
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", ncols=len(BACKENDS))
    _suptitle(fig, title, simulated)
    return _render(fig)


def _topology_bars(rankings: list[Ranking], title: str, simulated: bool) -> bytes | None:
    """One panel per load point: a horizontal bar per configuration, best on top, with its 95% interval."""
    if not rankings:
        return None
    heights = [0.45 * len(k.entries) + 1.0 for k in rankings]
    fig = Figure(figsize=(8.0, sum(heights) + 1.2), layout="constrained")
    axes = fig.subplots(len(rankings), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, ranking in zip((a[0] for a in axes), rankings):
        entries = list(reversed(ranking.entries))  # barh draws bottom-up: best on top
        values = [float(r[RANKED_BY]) for r in entries]
        cis = [interval(r, RANKED_BY) for r in entries]
        yerr = None
        if any(cis):
            yerr = [[v - c[0] if c else 0.0 for v, c in zip(values, cis)], [c[1] - v if c else 0.0 for v, c in zip(values, cis)]]
        ax.barh(range(len(entries)), values, xerr=yerr, capsize=3 if yerr else 0,
                color=[COLORS.get(r["backend"], "#888888") for r in entries])
        ax.set_yticks(range(len(entries)))
        ax.set_yticklabels([f"{configuration(r)} ({r['gpus_used']} GPUs)" for r in entries], fontsize=8)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.0f}", (v, i), textcoords="offset points", xytext=(4, -3), fontsize=7)
        ax.set_title(ranking.point, fontsize=9)
        ax.set_xlim(0, max(values) * 1.18)
        ax.grid(True, axis="x", alpha=0.3)
    axes[-1][0].set_xlabel("output tok/s per GPU (all GPUs of the configuration)")
    _suptitle(fig, title, simulated)
    return _render(fig)


def _plot(name: str, title: str, caption: str, png: bytes | None, empty: str, simulated: bool) -> Plot:
    """Title, caption and alt text all say SIMULATED when the report holds a simulated result."""
    banner = f" {SIM_BANNER}." if simulated else ""
    return Plot(name, title + (f" - {SIM_BANNER}" if simulated else ""), caption + banner, f"{title}: {caption}{banner}",
                png, "" if png else empty)


def make_plots(rows: list[Row], simulated: bool) -> list[Plot]:
    """Every plot of the report, in a fixed order; one without data carries its reason instead of a PNG."""
    closed = _closed_loop(rows)
    low = min((r["concurrency"] for r in closed), default=None)
    at_low = [r for r in closed if r["concurrency"] == low]
    open_loop = [r for r in _plottable(rows) if r.get("request_rate")]
    valid = _plottable(rows)
    t = "TTFT vs prompt tokens" + (f" (concurrency {low})" if low is not None else "")
    plots = [
        _plot("ttft_vs_prompt_tokens", t,
              f"Time to first token, p50 (top) and p99 (bottom), against prompt length at the lowest concurrency measured ({low}), "
              "one line per backend. Closed-loop, valid results only.",
              _line_grid(at_low, "prompt_tokens", "prompt tokens", ["median_ttft_ms", "p99_ttft_ms"], None, t, simulated),
              "No valid closed-loop result yet, so there is no TTFT against prompt length to draw.", simulated),
        _plot("ttft_vs_concurrency", "TTFT vs concurrency",
              "TTFT p50 (top) and p99 (bottom) against concurrency, one panel per prompt length, one line per backend.",
              _line_grid(closed, "concurrency", "concurrency", ["median_ttft_ms", "p99_ttft_ms"], "prompt_tokens",
                         "TTFT vs concurrency", simulated, log2_x=True),
              "No valid closed-loop result yet, so there is no TTFT against concurrency to draw.", simulated),
        _plot("e2el_vs_concurrency", "E2E latency vs concurrency",
              "End-to-end request latency p50 (top) and p99 (bottom) against concurrency, per prompt length and backend.",
              _line_grid(closed, "concurrency", "concurrency", ["median_e2el_ms", "p99_e2el_ms"], "prompt_tokens",
                         "E2E latency vs concurrency", simulated, log2_x=True),
              "No valid closed-loop result yet, so there is no E2E latency against concurrency to draw.", simulated),
        _plot("throughput_vs_concurrency", "Output throughput vs concurrency",
              "Output tokens per second (top) and per GPU (bottom; divided by every GPU the pattern used: "
              "prefill + decode for tcp/efa) against concurrency, per prompt length and backend.",
              _line_grid(closed, "concurrency", "concurrency", ["output_throughput", "output_throughput_per_gpu"], "prompt_tokens",
                         "Output throughput vs concurrency", simulated, log2_x=True),
              "No valid closed-loop result yet, so there is no throughput against concurrency to draw.", simulated),
        _plot("itl_tpot_by_backend", "TPOT and ITL by backend",
              "Time per output token p50 (top) and inter-token latency p50 (bottom) per load point and backend; "
              "the black tick is the p99.",
              _bars(valid, ["median_tpot_ms", "median_itl_ms"], "TPOT and ITL by backend", simulated),
              "No valid result yet, so there is no TPOT or ITL to draw.", simulated),
        _plot("throughput_per_gpu_vs_user", "Throughput per GPU vs speed per user",
              "Output tok/s per GPU against output tok/s per user (1000 / TPOT p50), each point one valid pattern "
              "(labelled prompt tokens and concurrency). Up and right is better.",
              _pareto(valid, "Throughput per GPU vs speed per user", simulated),
              "No valid result yet, so there is no throughput/speed trade-off to draw.", simulated),
        _plot("throughput_per_gpu_by_topology", "Throughput per GPU by topology",
              "Output tok/s per GPU of every configuration (backend and prefill x decode servers, or unified replicas) "
              "at each load point that compares layouts, best on top; colour is the backend.",
              _topology_bars(topology_rankings(rows), "Throughput per GPU by topology", simulated),
              "No load point in this plan compares topologies with valid results (every pattern runs 1P1D or one "
              "unified server), so there is no per-GPU comparison by topology to draw.", simulated),
        _plot("latency_vs_request_rate", "Latency vs request rate (open loop)",
              "TTFT p50 (top) and E2E latency p50 (bottom) against the offered request rate, for open-loop patterns.",
              _line_grid(open_loop, "request_rate", "offered request rate (req/s)", ["median_ttft_ms", "median_e2el_ms"],
                         "prompt_tokens", "Latency vs request rate (open loop)", simulated),
              "No valid open-loop (request_rate) result in this plan, so there is no latency against request rate to draw.",
              simulated),
    ]
    return plots


PLOT_NAMES = ("ttft_vs_prompt_tokens", "ttft_vs_concurrency", "e2el_vs_concurrency", "throughput_vs_concurrency",
              "itl_tpot_by_backend", "throughput_per_gpu_vs_user", "throughput_per_gpu_by_topology",
              "latency_vs_request_rate")
