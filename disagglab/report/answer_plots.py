"""The answer section's figures: per workload, throughput per GPU against what a user gets.

Two trade-off plots per workload: output tok/s per GPU against tok/s per user (1000 / TPOT
p50) and against TTFT p99. Every configuration is a point with its 95% intervals as error bars
(repeats >= 2), the Pareto frontier is the line, and only frontier points carry a label, since
a dominated configuration is never the one to deploy. The recommended configuration is ringed.
Drawn like report/plots.py: the object API on Agg, no timestamp, same rows same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from disagglab.plan.model import BACKENDS
from disagglab.report.answer import configuration_name, workload_groups
from disagglab.report.pareto import INTERACTIVITY, TTFT_P99, Axis, TradeOff, trade_off
from disagglab.report.plots import COLORS, MARKERS, Plot, _plot, _render, _suptitle
from disagglab.report.rows import Row

PREFIX = "pareto"
"""Every answer plot file is report_plots/pareto_<axis>_<workload>.png (stale ones are removed by prefix)."""
AXES = (("interactivity", INTERACTIVITY), ("ttft_p99", TTFT_P99))


@dataclass(frozen=True)
class WorkloadFigures:
    """One workload's two trade-offs and their plots, in AXES order."""

    workload: str
    trade_offs: tuple[TradeOff, ...]
    plots: tuple[Plot, ...]


def slug(name: str) -> str:
    """A file-name part from a workload name: '4000 in / 64 out' -> '4000in_64out'."""
    text = re.sub(r"[^a-z0-9]+", "_", name.lower().replace(" in /", "in").replace(" out", "out")).strip("_")
    return text[:60].rstrip("_") or "workload"


def _errors(values: list[float], cis: list[tuple[float, float] | None]) -> list[list[float]] | None:
    """matplotlib's asymmetric error bars from intervals; None when no point has one."""
    if not any(cis):
        return None
    return [[v - c[0] if c else 0.0 for v, c in zip(values, cis)], [c[1] - v if c else 0.0 for v, c in zip(values, cis)]]


def _points(ax: Any, t: TradeOff) -> None:
    """Each configuration with its error bars; dominated ones faded. One legend entry per backend."""
    for backend in BACKENDS:
        labelled = False
        for front in (True, False):
            mine = [i for i, r in enumerate(t.rows) if r["backend"] == backend and (i in t.frontier) is front]
            if not mine:
                continue
            xs, ys = [t.values[i][0] for i in mine], [t.values[i][1] for i in mine]
            ax.errorbar(xs, ys, xerr=_errors(xs, [t.x.interval(t.rows[i]) for i in mine]),
                        yerr=_errors(ys, [t.y.interval(t.rows[i]) for i in mine]), linestyle="none", marker=MARKERS[backend],
                        color=COLORS[backend], alpha=1.0 if front else 0.4, capsize=3, label=None if labelled else backend)
            labelled = True


def _frontier(ax: Any, t: TradeOff) -> None:
    front = sorted(t.frontier, key=lambda i: t.values[i])
    ax.plot([t.values[i][0] for i in front], [t.values[i][1] for i in front], color="black", linestyle="--", linewidth=1,
            label="Pareto frontier", zorder=1)
    for n, i in enumerate(front):
        ax.annotate(configuration_name(t.rows[i]), t.values[i], textcoords="offset points", xytext=(5, 4 + 8 * (n % 2)), fontsize=7)
    for i, row in enumerate(t.rows):
        if row.get("recommended"):
            ax.scatter([t.values[i][0]], [t.values[i][1]], s=260, facecolors="none", edgecolors="#2ca02c", linewidths=2,
                       label="recommended", zorder=3)


def _limits(ax: Any, t: TradeOff) -> None:
    """Both axes from 0 (no exaggerated gaps), with room for labels and error bars."""
    def top(axis: Axis, k: int) -> float:
        highs = [max(v[k], (axis.interval(r) or (0.0, 0.0))[1]) for r, v in zip(t.rows, t.values)]
        return max(highs, default=1.0) or 1.0

    ax.set_xlim(0, top(t.x, 0) * 1.3)
    ax.set_ylim(0, top(t.y, 1) * 1.15)


def trade_off_png(t: TradeOff, title: str, simulated: bool) -> bytes | None:
    """One trade-off plot; None without a point to draw."""
    if not t.rows:
        return None
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.subplots()
    _points(ax, t)
    _frontier(ax, t)
    _limits(ax, t)
    better = "right" if t.x.higher_is_better else "left"
    ax.set_xlabel(f"{t.x.label}; better to the {better}")
    ax.set_ylabel(f"{t.y.label}; better up")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=min(len(seen), 5))
    _suptitle(fig, title, simulated)
    return _render(fig)


def _caption(axis_key: str, t: TradeOff) -> str:
    other = "tok/s per user (1000 / TPOT p50)" if axis_key == "interactivity" else "TTFT p99 (lower is better)"
    return (f"Output tok/s per GPU against {other}; each point one configuration ({len(t.rows)}), error bars the 95% intervals "
            f"where the pattern ran repeats. The dashed line is the Pareto frontier ({len(t.frontier)} labelled "
            f"point{'s' if len(t.frontier) != 1 else ''}): "
            "every other point is beaten on both axes by one on it. A green ring marks the recommendation.")


def answer_figures(rows: list[Row], simulated: bool) -> list[WorkloadFigures]:
    """Per workload with valid results (plan order), its two trade-off plots."""
    out, used = [], set()
    for name, members in workload_groups(rows).items():
        tag, n = slug(name), 1
        while tag in used:  # two names with one slug (they differ only in punctuation)
            n += 1
            tag = f"{slug(name)}_{n}"
        used.add(tag)
        offs, plots = [], []
        for key, axis in AXES:
            t = trade_off(members, axis)
            title = f"{name}: throughput per GPU vs {'speed per user' if key == 'interactivity' else 'TTFT p99'}"
            plots.append(_plot(f"{PREFIX}_{key}_{tag}", title, _caption(key, t), trade_off_png(t, title, simulated),
                               f"No configuration of {name} has both numbers, so there is no trade-off to draw.", simulated))
            offs.append(t)
        out.append(WorkloadFigures(name, tuple(offs), tuple(plots)))
    return out
