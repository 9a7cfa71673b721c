"""The answer users open the report for: did disaggregation over EFA beat TCP and unified?

Backends are compared only at the same load point (every effective parameter equal except
the backend), only on valid results, and throughput is divided by every GPU a pattern used
(prefill + decode for tcp/efa), as the peer study says a fair P/D comparison must. Every
ratio is oriented so that > 1 means the treatment is better than its baseline: for a latency
it is baseline / treatment, for a throughput treatment / baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from disagglab.plan.model import BACKENDS
from disagglab.report.rows import Row, comparable, interval, number, variant
from disagglab.results.fold import intervals_overlap

# metric -> (label, higher is better)
COMPARED: dict[str, tuple[str, bool]] = {
    "median_ttft_ms": ("TTFT p50", False),
    "median_tpot_ms": ("TPOT p50", False),
    "median_e2el_ms": ("E2EL p50", False),
    "output_throughput_per_gpu": ("output tok/s per GPU", True),
}
# (treatment, baseline): the question's order, EFA first.
PAIRS = (("efa", "tcp"), ("efa", "unified"), ("tcp", "unified"))
# Everything that must be equal for two patterns to be the same load point.
POINT_KEYS = ("prompt_tokens", "concurrency", "request_rate", "measurement_type", "max_tokens", "prefix_cache",
              "gpu_memory_utilization", "max_num_batched_tokens", "max_model_len", "tp_size", "model")


def usable(rows: list[Row]) -> list[Row]:
    """Rows with a valid, current result: the only ones a comparison may use."""
    return [r for r in rows if comparable(r)]


def point_label(row: Row) -> str:
    """A load point as people say it: '4000 tok c=8' (plus the rate of an open loop, and the variant)."""
    text = f"{row['prompt_tokens']} tok c={row['concurrency']}"
    text += f" {row['request_rate']:g} req/s" if row.get("request_rate") else ""
    return text + (f" ({variant(row)})" if variant(row) else "")


@dataclass(frozen=True)
class Ratio:
    metric: str
    baseline: float
    treatment: float
    baseline_ci: tuple[float, float] | None = None
    treatment_ci: tuple[float, float] | None = None

    @property
    def value(self) -> float:
        """> 1 means the treatment is better."""
        higher_better = COMPARED[self.metric][1]
        return self.treatment / self.baseline if higher_better else self.baseline / self.treatment

    @property
    def treatment_wins(self) -> bool:
        return self.value > 1.0

    @property
    def significant(self) -> bool | None:
        """True only when both sides have 95% intervals (repeats >= 2) and they are disjoint."""
        overlap = intervals_overlap(self.baseline_ci, self.treatment_ci)
        return None if overlap is None else not overlap

    def note(self) -> str:
        return {None: "", True: ", significant", False: ", 95% CIs overlap"}[self.significant]


@dataclass(frozen=True)
class PairPoint:
    """One load point where both backends of a pair have a valid result."""

    point: str
    treatment_id: str
    baseline_id: str
    ratios: dict[str, Ratio]


@dataclass(frozen=True)
class PairSummary:
    treatment: str
    baseline: str
    points: tuple[PairPoint, ...]

    def wins(self, metric: str) -> list[PairPoint]:
        return [p for p in self.points if metric in p.ratios and p.ratios[metric].treatment_wins]

    def compared(self, metric: str) -> list[PairPoint]:
        return [p for p in self.points if metric in p.ratios]

    def with_intervals(self, metric: str) -> list[PairPoint]:
        return [p for p in self.compared(metric) if p.ratios[metric].significant is not None]

    def significant_wins(self, metric: str) -> list[PairPoint]:
        return [p for p in self.wins(metric) if p.ratios[metric].significant]

    def geomean(self, metric: str) -> float | None:
        values = [p.ratios[metric].value for p in self.compared(metric)]
        return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


@dataclass(frozen=True)
class Best:
    """The best backend at one prompt length by one metric, with every backend's value."""

    prompt_tokens: int
    variant: str
    """'' for the plain online run; e.g. 'prefix cache' (variants are never mixed in one comparison)"""
    metric: str
    winner: str
    values: dict[str, tuple[float, str]]
    """backend -> (its best value, where: the pattern id for TTFT, 'c=N' for throughput)"""
    concurrency: int | None = None
    """the concurrency the TTFT comparison used (the lowest measured at this length)"""
    intervals: dict[str, tuple[float, float] | None] | None = None
    """backend -> 95% interval of its value (None for a single trial)"""

    @property
    def runner_up(self) -> str | None:
        others = [b for b in self.values if b != self.winner]
        if not others:
            return None
        higher_better = COMPARED[self.metric][1]
        return sorted(others, key=lambda b: self.values[b][0], reverse=higher_better)[0]

    @property
    def significant(self) -> bool | None:
        """Winner vs runner-up: True only with disjoint 95% intervals; None without intervals."""
        if self.runner_up is None or not self.intervals:
            return None
        overlap = intervals_overlap(self.intervals.get(self.winner), self.intervals.get(self.runner_up))
        return None if overlap is None else not overlap

    @property
    def margin(self) -> float | None:
        """Winner vs the runner-up, > 1 (None with one backend)."""
        others = sorted(v for b, (v, _) in self.values.items() if b != self.winner)
        if not others:
            return None
        win = self.values[self.winner][0]
        higher_better = COMPARED[self.metric][1]
        best_other = others[-1] if higher_better else others[0]
        return (win / best_other if higher_better else best_other / win) if win and best_other else None


PLAIN_TOPOLOGIES = frozenset({"1P1D", "1 replica"})
"""Today's layout at tp 1: a report about only these needs no topology in its labels."""


def _by_point(rows: list[Row]) -> dict[tuple[Any, ...], dict[str, list[Row]]]:
    """load point -> backend -> its rows, one per topology (the first in plan order when a point repeats)."""
    points: dict[tuple[Any, ...], dict[str, list[Row]]] = {}
    for row in rows:
        mine = points.setdefault(tuple(row.get(k) for k in POINT_KEYS), {}).setdefault(row["backend"], [])
        if all(r["topology"] != row["topology"] for r in mine):
            mine.append(row)
    return points


def _sort_point(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, str(v) if not isinstance(v, int | float) else v) for v in key)


def _baseline(treatment: Row, candidates: list[Row], disaggregated: bool) -> Row | None:
    """What a treatment row is compared with at its load point.

    efa vs tcp compares one topology with the same topology (2P1D with 2P1D): only the KV path
    differs. Against unified, the baseline is the replica count with the same GPUs when the plan
    has one (2P2D with 4 replicas), otherwise the first in plan order (today's plans: the only one).
    """
    if disaggregated:
        return next((c for c in candidates if c["topology"] == treatment["topology"]), None)
    return next((c for c in candidates if c["gpus_used"] == treatment["gpus_used"]), candidates[0] if candidates else None)


def _ratios(t: Row, b: Row) -> dict[str, Ratio]:
    ratios = {}
    for metric in COMPARED:
        tv, bv = number(t.get(metric)), number(b.get(metric))
        if tv is not None and bv is not None and tv > 0 and bv > 0:
            ratios[metric] = Ratio(metric, bv, tv, interval(b, metric), interval(t, metric))
    return ratios


def pair_summaries(rows: list[Row]) -> list[PairSummary]:
    """For efa vs tcp, efa vs unified and tcp vs unified: every shared load point, with ratios."""
    ok = usable(rows)
    points = _by_point(ok)
    named = any(r["topology"] not in PLAIN_TOPOLOGIES for r in ok)
    out = []
    for treatment, baseline in PAIRS:
        found = []
        for key in sorted(points, key=_sort_point):
            for t in points[key].get(treatment, []):
                b = _baseline(t, points[key].get(baseline, []), baseline != "unified")
                if b is None:
                    continue
                label = point_label(t) + (f" {t['topology']} vs {b['topology']}" if named else "")
                found.append(PairPoint(label, t["pattern_id"], b["pattern_id"], _ratios(t, b)))
        out.append(PairSummary(treatment, baseline, tuple(found)))
    return out


def _pick(candidates: dict[str, tuple[float, str]], higher_better: bool) -> str:
    order = {b: i for i, b in enumerate(BACKENDS)}
    return sorted(candidates, key=lambda b: ((-1 if higher_better else 1) * candidates[b][0], order.get(b, 99), b))[0]


def _groups(rows: list[Row]) -> list[tuple[int, str, list[Row]]]:
    """(prompt tokens, variant, rows) in order: like is compared only with like."""
    keys = sorted({(r["prompt_tokens"], variant(r)) for r in rows})
    return [(t, v, [r for r in rows if r["prompt_tokens"] == t and variant(r) == v]) for t, v in keys]


def best_ttft(rows: list[Row]) -> list[Best]:
    """Per prompt length: which backend has the lowest TTFT p50 at the lowest concurrency measured there.

    Closed-loop results only: under an open loop, concurrency is a cap, not the load.
    """
    out = []
    closed = [r for r in usable(rows) if not r.get("request_rate") and number(r.get("median_ttft_ms")) is not None]
    for tokens, var, at in _groups(closed):
        low = min(r["concurrency"] for r in at)
        values: dict[str, tuple[float, str]] = {}
        cis: dict[str, tuple[float, float] | None] = {}
        for r in (r for r in at if r["concurrency"] == low):
            v = float(r["median_ttft_ms"])
            if r["backend"] not in values or v < values[r["backend"]][0]:
                values[r["backend"]] = (v, r["pattern_id"])
                cis[r["backend"]] = interval(r, "median_ttft_ms")
        out.append(Best(tokens, var, "median_ttft_ms", _pick(values, False), values, low, cis))
    return out


def best_throughput_per_gpu(rows: list[Row]) -> list[Best]:
    """Per prompt length: which backend reaches the highest output tok/s per GPU at any load measured."""
    out = []
    ok = [r for r in usable(rows) if number(r.get("output_throughput_per_gpu")) is not None]
    for tokens, var, at in _groups(ok):
        values: dict[str, tuple[float, str]] = {}
        cis: dict[str, tuple[float, float] | None] = {}
        for r in at:
            v = float(r["output_throughput_per_gpu"])
            if r["backend"] not in values or v > values[r["backend"]][0]:
                where = f"c={r['concurrency']}" + ("" if r["topology"] in PLAIN_TOPOLOGIES else f" {r['topology']}")
                values[r["backend"]] = (v, where)
                cis[r["backend"]] = interval(r, "output_throughput_per_gpu")
        out.append(Best(tokens, var, "output_throughput_per_gpu", _pick(values, True), values, intervals=cis))
    return out


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def significance(pair: PairSummary, metric: str) -> str:
    """'k of n' significant wins among the points with intervals on both sides, or why there is no test."""
    tested = pair.with_intervals(metric)
    if not tested:
        return "not tested (single trials: set repeats >= 2)"
    return f"{len(pair.significant_wins(metric))} of {len(tested)}"


def verdict(pairs: list[PairSummary]) -> list[tuple[str, str, str, str, str, str, str]]:
    """Per pair and metric: (pair, metric, 'better at k of n', significant, geometric mean, range, where better)."""
    rows = []
    for pair in pairs:
        name = f"{pair.treatment} vs {pair.baseline}"
        if not pair.points:
            rows.append((name, "-", "no shared load point with valid results yet", "-", "-", "-", "-"))
            continue
        for metric, (label, _) in COMPARED.items():
            compared = pair.compared(metric)
            if not compared:
                continue
            ratios = [p.ratios[metric].value for p in compared]
            wins = pair.wins(metric)
            rows.append((name, label, f"{len(wins)} of {len(compared)}", significance(pair, metric), _fmt_ratio(pair.geomean(metric)),
                         f"{min(ratios):.2f}x to {max(ratios):.2f}x", ", ".join(p.point for p in wins) or "nowhere"))
    return rows


def _sig(pair: PairSummary, metric: str) -> str:
    tested = pair.with_intervals(metric)
    return f"; significant at {len(pair.significant_wins(metric))} of {len(tested)} with 95% CIs" if tested else ""


def headline(pairs: list[PairSummary]) -> str:
    """One sentence answering the question by TTFT p50 and output tok/s per GPU."""
    by = {(p.treatment, p.baseline): p for p in pairs}
    bits = []
    for baseline in ("tcp", "unified"):
        pair = by[("efa", baseline)]
        name = "TCP" if baseline == "tcp" else "the unified baseline"
        if not pair.points:
            bits.append(f"EFA vs {name}: not comparable yet (no shared load point with valid results)")
            continue
        ttft, tput = "median_ttft_ms", "output_throughput_per_gpu"
        bits.append(f"EFA beat {name} on TTFT p50 at {len(pair.wins(ttft))} of {len(pair.compared(ttft))} load points "
                    f"({_fmt_ratio(pair.geomean(ttft))} geometric-mean speedup{_sig(pair, ttft)}) and on output tok/s per GPU at "
                    f"{len(pair.wins(tput))} of {len(pair.compared(tput))} ({_fmt_ratio(pair.geomean(tput))}{_sig(pair, tput)})")
    return "; ".join(bits) + "."
