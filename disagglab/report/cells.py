"""Table cells as both documents print them: one table type, one number format, one interval style.

The HTML and Markdown renderers draw the same `Table`, and every section formats its numbers
with `fmt` and `with_interval`, so a value reads the same wherever it appears.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from disagglab.report.rows import Row, interval, number


@dataclass(frozen=True)
class Table:
    """A table both renderers draw the same way; cells are already formatted text."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...] = ()

    def align(self, i: int) -> str:
        return "right" if i < len(self.numeric) and self.numeric[i] else "left"


def fmt(value: Any, unit: str = "") -> str:
    """Numbers at a precision a reader can compare: 3 significant digits, never exponent notation."""
    v = number(value)
    if v is None:
        return "-"
    text = f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return f"{text} {unit}".rstrip()


def with_ci(value: Any, ci: tuple[float, float] | None, unit: str = "") -> str:
    """'12.3 ms' without an interval; '12.3 ±0.4 ms' (half-width of the 95% t-interval) with one."""
    if ci is None or number(value) is None:
        return fmt(value, unit)
    return f"{fmt(value)} ±{fmt((ci[1] - ci[0]) / 2, unit)}"


def with_interval(row: Row, key: str, unit: str) -> str:
    """A row's metric as with_ci shows it: '12.3 ms' for one trial, '12.3 ±0.4 ms' over repeats."""
    return with_ci(row.get(key), interval(row, key), unit)
