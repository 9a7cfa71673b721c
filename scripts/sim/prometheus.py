"""Prometheus text exposition, byte for byte as prometheus_client writes it.

Clients of the stand-in parse vLLM's ``/metrics``; the stand-in has no
prometheus_client on the nodes, so it reproduces that library's formatting.
"""

from __future__ import annotations

import bisect
import math


def go_float(value: float) -> str:
    """Format a float the way prometheus_client does (Go style exponents)."""
    value = float(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6 and "e" not in text:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _labels(labels: dict[str, str]) -> str:
    """Prometheus label set, keys sorted so every series of a family reads the same way."""
    parts = []
    for key in sorted(labels):
        val = labels[key].replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{key}="{val}"')
    return "{" + ",".join(parts) + "}"


class Histogram:
    """A single-series Prometheus histogram (buckets are upper bounds, le)."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound (le) is >= it, as prometheus_client does."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def render(self, out: list[str], labels: dict[str, str], created: float) -> None:
        """Append the family in prometheus_client order: cumulative buckets, _count, _sum, _created."""
        out.append(f"# HELP {self.name} {self.doc}")
        out.append(f"# TYPE {self.name} histogram")
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts):
            running += n
            out.append(f"{self.name}_bucket{_labels({**labels, 'le': go_float(bound)})} {go_float(running)}")
        lab = _labels(labels)
        out.append(f"{self.name}_count{lab} {go_float(self.count)}")
        out.append(f"{self.name}_sum{lab} {go_float(self.total)}")
        _render_created(out, self.name, self.doc, [labels], created)


def _render_created(out: list[str], name: str, doc: str, series: list[dict[str, str]], created: float) -> None:
    """prometheus_client exports each counter/histogram's creation time as a separate gauge family."""
    out.append(f"# HELP {name}_created {doc}")
    out.append(f"# TYPE {name}_created gauge")
    for labels in series:
        out.append(f"{name}_created{_labels(labels)} {go_float(created)}")


def render_counter(
    out: list[str],
    name: str,
    doc: str,
    series: list[tuple[dict[str, str], float]],
    created: float,
) -> None:
    """A counter family exported with the _total suffix, plus its _created gauge family."""
    out.append(f"# HELP {name}_total {doc}")
    out.append(f"# TYPE {name}_total counter")
    for labels, value in series:
        out.append(f"{name}_total{_labels(labels)} {go_float(value)}")
    _render_created(out, name, doc, [labels for labels, _ in series], created)


def render_gauge(out: list[str], name: str, doc: str, labels: dict[str, str], value: float) -> None:
    """One gauge family with a single series."""
    out.append(f"# HELP {name} {doc}")
    out.append(f"# TYPE {name} gauge")
    out.append(f"{name}{_labels(labels)} {go_float(value)}")
