"""Which layout serves a workload best per GPU: every configuration at one load point, ranked.

The question topology users ask first (is 2P1D better than 1P2D, and better than as many
unified replicas) is a per-GPU question: a 4-GPU layout that doubles a 2-GPU one's throughput
has gained nothing. So configurations (backend x topology) are ranked by output tokens per second
per GPU at the same load point (every effective parameter equal), valid current results only,
and a lead is called significant only when 95% intervals exist and are disjoint, as elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from disagglab.plan.model import BACKENDS
from disagglab.report.backends import PLAIN_TOPOLOGIES, POINT_KEYS, point_label, usable
from disagglab.report.rows import Row, interval, number
from disagglab.results.fold import intervals_overlap

RANKED_BY = "output_throughput_per_gpu"


@dataclass(frozen=True)
class Ranking:
    """The configurations measured at one load point, best output tok/s per GPU first."""

    point: str
    entries: tuple[Row, ...]

    @property
    def best(self) -> Row:
        return self.entries[0]

    def share_of_best(self, row: Row) -> float:
        return float(row[RANKED_BY]) / float(self.best[RANKED_BY])

    def significant(self, row: Row) -> bool | None:
        """Does the best lead this row? None without intervals (single trials) on both."""
        overlap = intervals_overlap(interval(self.best, RANKED_BY), interval(row, RANKED_BY))
        return None if overlap is None else not overlap


def configuration(row: Row) -> str:
    """'efa 2P1D', 'unified 4 replicas': a backend and its layout."""
    return f"{row['backend']} {row['topology']}"


def _order(row: Row) -> tuple[Any, ...]:
    return (-float(row[RANKED_BY]), BACKENDS.index(row["backend"]) if row["backend"] in BACKENDS else 99, row["gpus_used"] or 0,
            row["pattern_id"])


def topology_rankings(rows: list[Row]) -> list[Ranking]:
    """Load points where the plan measured more than one layout, one of them not today's 1P1D / 1 replica."""
    ok = [r for r in usable(rows) if number(r.get(RANKED_BY)) is not None and r.get("gpus_used")]
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in ok:
        groups.setdefault(tuple(r.get(k) for k in POINT_KEYS), []).append(r)
    out = []
    for members in groups.values():
        layouts = {(r["backend"], r["topology"]) for r in members}
        if len(layouts) < 2 or all(topo in PLAIN_TOPOLOGIES for _, topo in layouts):
            continue
        firsts: dict[tuple[str, str], Row] = {}
        for r in members:
            firsts.setdefault((r["backend"], r["topology"]), r)
        out.append(Ranking(point_label(members[0]), tuple(sorted(firsts.values(), key=_order))))
    return sorted(out, key=lambda k: k.point)


def answer(ranking: Ranking) -> str:
    """One sentence: the best layout per GPU at this load point, and by how much it leads the next."""
    best = ranking.best
    text = f"At {ranking.point}, {configuration(best)} ({best['gpus_used']} GPUs) serves the most output tok/s per GPU: {float(best[RANKED_BY]):.1f}"
    if len(ranking.entries) < 2:
        return text + "."
    second = ranking.entries[1]
    lead = 1.0 / ranking.share_of_best(second)
    sig = {None: "", True: ", significant (disjoint 95% CIs)", False: ", but the 95% CIs overlap"}[ranking.significant(second)]
    return text + f", {lead:.2f}x the next best, {configuration(second)} ({second['gpus_used']} GPUs){sig}."
