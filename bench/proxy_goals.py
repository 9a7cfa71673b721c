"""The proxy's goals (issue 14, item 6), checked for ours and for the floor measured in the same run.

The floor (bench/proxy_floor.py) is the least any Python proxy pays on this machine for the same
work; a goal the floor itself misses cannot be met by ours either, and the table says by how much.
"""

from __future__ import annotations

import json
import sys
import timeit
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from proxy.splice import check_deferred, decode_body, kv_member_of, parse_members, prefill_body  # noqa: E402


@dataclass(frozen=True)
class Goal:
    key: str  # the RESULT line's name
    what: str
    limit: float
    unit: str


GOALS = (
    Goal("cpu_us_per_request", "CPU per proxied request (c64, 1-chunk streams)", 120.0, "us"),
    Goal("cpu_us_per_chunk", "CPU per relayed stream chunk (c64)", 20.0, "us"),
    Goal("added_ttft_p50_ms_c64", "added TTFT p50 at c64", 5.0, "ms"),
    Goal("own_ms_c1", "own part at c1 (added TTFT p50 minus its P round trip)", 0.2, "ms"),
)


def json_work_us(body: dict[str, Any], p_answer: bytes) -> float:
    """CPU our proxy spends on JSON per request, in-process: checking the client's body (which the
    floor does not do), splicing P's and D's bodies and finding P's kv_transfer_params."""
    raw = json.dumps(body).encode()

    def once() -> None:
        text = raw.decode()
        deferred: list[tuple[int, int]] = []
        members = parse_members(text, deferred)
        prefill_body(text, members)
        check_deferred(text, deferred)
        decode_body(raw, text, members, kv_member_of(p_answer))

    runs = 2000
    return min(timeit.repeat(once, number=runs, repeat=3)) / runs * 1e6


def table(figures: dict[str, dict[str, float]]) -> list[str]:
    """One row per goal: each proxy's figure, the limit, and whether ours and the floor meet it."""
    names = list(figures)
    header = f"{'goal':<56} " + " ".join(f"{n:>9}" for n in names) + f" {'limit':>9}  verdict"
    lines = [
        "Goals (issue 14, item 6). floor: the least a Python proxy pays here for the same relaying (bench/proxy_floor.py);",
        "floor+json: the same floor that also parses the client's body and P's answer, as ours must to check them",
        header,
    ]
    lines.append("-" * len(header))
    for goal in GOALS:
        cells = " ".join(f"{figures[n][goal.key]:>9.3f}" for n in names)
        lines.append(f"{goal.what:<56} {cells} {goal.limit:>6g} {goal.unit:<2}  {verdict(goal, figures)}")
    return lines


def verdict(goal: Goal, figures: dict[str, dict[str, float]]) -> str:
    name = "floor+json" if "floor+json" in figures else "floor"
    ours, floor = figures["ours"][goal.key], figures[name][goal.key]
    if ours <= goal.limit:
        return "met"
    if floor > goal.limit:
        return f"not met; below the {name} ({floor:.3g} {goal.unit}, {floor / goal.limit:.1f}x the limit); ours {ours / floor:.2f}x it"
    return f"not met; the {name} meets it, ours is {ours / floor:.2f}x it"


def result_fields(figures: dict[str, dict[str, float]]) -> str:
    ours, floor = figures["ours"], figures["floor+json"]
    fields = [f"{g.key}={ours[g.key]:.3f}" for g in GOALS] + [f"floor_json_{g.key}={floor[g.key]:.3f}" for g in GOALS]
    met = sum(ours[g.key] <= g.limit for g in GOALS)
    fields.append(f"goals_met={met}/{len(GOALS)}")
    return " ".join(fields)
