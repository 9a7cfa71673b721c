"""The answer users bring a report for: for my workload and my latency targets, what do I deploy?

Per workload (report/workloads.py) and SLO, every valid configuration measured for it (a
pattern: backend, topology and load point) is a candidate. With an SLO, the recommendation is
the candidate with the most goodput per GPU (requests per second that met the SLO, divided by
every GPU the pattern held) among those that meet the SLO; without one, the candidate with the
most output tokens per second per GPU. The runner-up is the next one, and the lead counts as
significant only when both have 95% intervals and they are disjoint, as everywhere in the
report. One pure function decides (`recommend`); the rest only groups rows and writes the
decision into them for summary.csv and MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from disagglab.report.backends import usable
from disagglab.report.cost import Pricing, add_costs, pricing
from disagglab.report.rows import Row, interval, number, variant
from disagglab.results.fold import intervals_overlap

SLO_ATTAINMENT_TARGET_PCT = 90.0
"""A configuration meets the SLO when at least this share of its requests met every target.

DistServe (Zhong et al., OSDI 2024) defines goodput as the highest load at which 90% of
requests meet the SLO: a tail above that is what users of an interactive service notice, and
asking for 100% would let one slow request disqualify a configuration. We use the same target.
"""
GOODPUT = "request_goodput_per_gpu"
THROUGHPUT = "output_throughput_per_gpu"


@dataclass(frozen=True)
class Candidate:
    """One configuration as the recommendation sees it."""

    row: Row
    value: float
    """goodput per GPU (with an SLO) or output tok/s per GPU (without)"""
    interval: tuple[float, float] | None
    attainment: float | None
    """slo_attainment_pct; None without an SLO, or when the result has none"""
    meets: bool | None
    """attainment >= SLO_ATTAINMENT_TARGET_PCT; None without an SLO"""


@dataclass(frozen=True)
class Recommendation:
    """The decision for one workload and SLO: who is recommended, who follows, and how sure that is."""

    workload: str
    slo: str
    basis: str
    """GOODPUT with an SLO, THROUGHPUT without"""
    ranked: tuple[Candidate, ...]
    """those that meet the SLO first, best value first; then the rest, closest to the SLO first"""

    @property
    def eligible(self) -> tuple[Candidate, ...]:
        """Candidates that may be recommended: all without an SLO, else those meeting it."""
        return tuple(c for c in self.ranked if c.meets is not False)

    @property
    def best(self) -> Candidate | None:
        return self.eligible[0] if self.eligible else None

    @property
    def runner_up(self) -> Candidate | None:
        return self.eligible[1] if len(self.eligible) > 1 else None

    @property
    def closest(self) -> Candidate | None:
        """When none meets the SLO: the candidate with the highest attainment."""
        return self.ranked[0] if self.ranked and self.best is None else None

    @property
    def lead(self) -> float | None:
        """best / runner-up on the basis (> 1), None when there is no runner-up or it is at zero."""
        if self.best is None or self.runner_up is None or self.runner_up.value <= 0:
            return None
        return self.best.value / self.runner_up.value

    @property
    def significant(self) -> bool | None:
        """True for disjoint 95% intervals, False for overlapping ones, None when either is a single trial."""
        if self.best is None or self.runner_up is None:
            return None
        overlap = intervals_overlap(self.best.interval, self.runner_up.interval)
        return None if overlap is None else not overlap

    def rank(self, row: Row) -> int | None:
        """1 for the recommendation, 2 for the runner-up, ...; None for a row that does not meet the SLO."""
        return next((i for i, c in enumerate(self.eligible, 1) if c.row is row), None)


def _per_gpu(row: Row, metric: str) -> tuple[float | None, tuple[float, float] | None]:
    gpus = row.get("gpus_used")
    value = number(row.get(metric))
    if not isinstance(gpus, int) or gpus <= 0 or value is None:
        return None, None
    ci = interval(row, metric)
    return value / gpus, (ci[0] / gpus, ci[1] / gpus) if ci else None


def _candidate(row: Row, with_slo: bool) -> Candidate | None:
    if not with_slo:
        value, ci = number(row.get(THROUGHPUT)), interval(row, THROUGHPUT)
        return None if value is None else Candidate(row, value, ci, None, None)
    value, ci = _per_gpu(row, "request_goodput")
    attainment = number(row.get("slo_attainment_pct"))
    meets = attainment is not None and value is not None and attainment >= SLO_ATTAINMENT_TARGET_PCT
    return Candidate(row, value if value is not None else 0.0, ci, attainment, meets)


def _best_first(c: Candidate) -> tuple[Any, ...]:
    return (-c.value, -(c.attainment or 0.0), c.row.get("gpus_used") or 0, str(c.row.get("pattern_id")))


def _closest_first(c: Candidate) -> tuple[Any, ...]:
    return (c.attainment is None, -(c.attainment or 0.0), -c.value, str(c.row.get("pattern_id")))


def recommend(rows: Sequence[Row], slo: str, workload: str = "") -> Recommendation:
    """Rank one workload's configurations against its SLO ('' for none) and pick the one to deploy.

    rows are the workload's valid results. With an SLO, a row meets it when its
    slo_attainment_pct is at least SLO_ATTAINMENT_TARGET_PCT; those are ranked by goodput per
    GPU (request_goodput / gpus_used, interval likewise), the rest follow by attainment. Without
    an SLO every row is ranked by output tok/s per GPU. Ties: higher attainment, fewer GPUs,
    then pattern id, so the same rows always give the same answer.
    """
    with_slo = bool(slo)
    found = [c for c in (_candidate(r, with_slo) for r in rows) if c is not None]
    meeting = sorted((c for c in found if c.meets is not False), key=_best_first)
    missing = sorted((c for c in found if c.meets is False), key=_closest_first)
    return Recommendation(workload, slo, GOODPUT if with_slo else THROUGHPUT, tuple(meeting + missing))


def workload_groups(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """workload name -> its valid rows, workloads in plan order (the first row of each)."""
    groups: dict[str, list[Row]] = {}
    for row in usable(list(rows)):
        if row.get("gpus_used"):
            groups.setdefault(str(row.get("workload") or ""), []).append(row)
    return groups


def recommendations(rows: Sequence[Row]) -> list[Recommendation]:
    """One recommendation per workload and SLO (patterns of one workload may carry different SLOs)."""
    out = []
    for name, members in workload_groups(rows).items():
        slos = list(dict.fromkeys(str(r.get("slo") or "") for r in members))
        out += [recommend([r for r in members if (r.get("slo") or "") == slo], slo, name) for slo in slos]
    return out


def annotate(rows: list[Row], infrastructure: Mapping[str, Any], prices: Mapping[str, Any] | None) -> tuple[Pricing, list[Recommendation]]:
    """Fill the rows' cost and recommendation columns; return the pricing and the recommendations.

    `recommended` is true for the one row per workload and SLO to deploy, false for every other
    candidate, and empty for rows that are no candidate (missing, failed, invalid, stale).
    """
    price = pricing(infrastructure, prices)
    add_costs(rows, price)
    for row in rows:
        row["recommended"] = row["recommendation_rank"] = None
    recs = recommendations(rows)
    for rec in recs:
        for cand in rec.ranked:
            rank = rec.rank(cand.row)
            cand.row["recommendation_rank"] = rank
            cand.row["recommended"] = rank == 1
    return price, recs


def configuration_name(row: Row) -> str:
    """'tcp 2P1D c=8', 'unified 1 replica c=4 at 2 req/s (prefix cache)': what one would deploy, and at what load."""
    text = f"{row['backend']} {row['topology']} c={row['concurrency']}"
    text += f" at {row['request_rate']:g} req/s" if row.get("request_rate") else ""
    return text + (f" ({variant(row)})" if variant(row) else "")
