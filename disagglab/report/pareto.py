"""The serving trade-off: which configurations no other configuration beats on both axes.

Output tokens per second per GPU (what a deployment costs) trades against what each user gets:
tokens per second per user (1000 / TPOT p50, higher is better) or the p99 time to first token
(lower is better). A configuration is worth considering only when no other one is at least as
good on both axes and better on one: those are the Pareto frontier, and every other point is
dominated. The frontier is computed on the means; the plot shows the 95% intervals beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from disagglab.report.rows import Row, interval, number

THROUGHPUT = "output_throughput_per_gpu"


@dataclass(frozen=True)
class Axis:
    """One axis of a trade-off plot: how a row's value and interval are read, and which way is better."""

    name: str
    label: str
    higher_is_better: bool

    def value(self, row: Row) -> float | None:
        if self.name == "interactivity":
            tpot = number(row.get("median_tpot_ms"))
            return 1000.0 / tpot if tpot and tpot > 0 else None
        return number(row.get(self.name))

    def interval(self, row: Row) -> tuple[float, float] | None:
        """The 95% interval on this axis; for interactivity, TPOT's interval turned over (1000/x is monotone)."""
        if self.name != "interactivity":
            return interval(row, self.name)
        ci = interval(row, "median_tpot_ms")
        return (1000.0 / ci[1], 1000.0 / ci[0]) if ci and ci[0] > 0 and ci[1] > 0 else None


INTERACTIVITY = Axis("interactivity", "output tok/s per user (1000 / TPOT p50)", True)
TTFT_P99 = Axis("p99_ttft_ms", "TTFT p99 (ms)", False)
PER_GPU = Axis(THROUGHPUT, "output tok/s per GPU", True)


def _at_least_as_good(a: float, b: float, higher: bool) -> bool:
    return a >= b if higher else a <= b


def dominates(a: tuple[float, float], b: tuple[float, float], higher: tuple[bool, bool]) -> bool:
    """a is at least as good as b on both axes and strictly better on one (equal points dominate neither)."""
    both = all(_at_least_as_good(a[i], b[i], higher[i]) for i in (0, 1))
    return both and a != b


def pareto_front(points: Sequence[tuple[float, float]], higher: tuple[bool, bool] = (True, True)) -> list[int]:
    """Indices of the points no other point dominates, in input order.

    higher says, per axis, whether a larger value is better. Ties stay: two equal points are both
    on the frontier (neither is better), and a point equal to a frontier point on one axis but
    worse on the other is dominated. O(n^2), for the tens of configurations a plan measures.
    """
    return [i for i, p in enumerate(points) if not any(dominates(q, p, higher) for j, q in enumerate(points) if j != i)]


@dataclass(frozen=True)
class TradeOff:
    """The points of one workload on one pair of axes, and which of them form the frontier."""

    x: Axis
    y: Axis
    rows: tuple[Row, ...]
    values: tuple[tuple[float, float], ...]
    frontier: tuple[int, ...]

    def on_frontier(self, row: Row) -> bool:
        return any(self.rows[i] is row for i in self.frontier)


def trade_off(rows: Sequence[Row], x: Axis, y: Axis = PER_GPU) -> TradeOff:
    """Every row with a value on both axes, and its frontier."""
    kept = [(r, x.value(r), y.value(r)) for r in rows]
    points = [(r, (xv, yv)) for r, xv, yv in kept if xv is not None and yv is not None]
    values = tuple(v for _, v in points)
    front = pareto_front(values, (x.higher_is_better, y.higher_is_better))
    return TradeOff(x, y, tuple(r for r, _ in points), values, tuple(front))
