"""The answer section's pure parts on hand-made rows: the Pareto frontier, the recommendation, the
cost per million output tokens, workload names, and the summary.csv columns they add."""

from __future__ import annotations

from typing import Any

import pytest

from disagglab.report.answer import (
    GOODPUT,
    SLO_ATTAINMENT_TARGET_PCT,
    THROUGHPUT,
    annotate,
    recommend,
    recommendations,
)
from disagglab.report.answer_view import sentence
from disagglab.report.cost import cost_per_million_output_tokens, pricing
from disagglab.report.pareto import INTERACTIVITY, TTFT_P99, pareto_front, trade_off
from disagglab.report.rows import ANSWER_COLUMNS, PREFIX_CACHE_COLUMNS, _trial_intervals, columns, rows_to_csv
from disagglab.report.workloads import slo_text, workload_name

SLO = "TTFT <= 500 ms, TPOT <= 50 ms"
INFRA = {"instance_type": "g5.12xlarge", "gpu_count_per_node": 4}


def row(pid: str, *, backend: str = "tcp", gpus: int = 2, goodput: float | None = None, attainment: float | None = None,
        per_gpu: float = 100.0, slo: str = SLO, workload: str = "4000 in / 64 out", **extra: Any) -> dict[str, Any]:
    """A valid, current result row with what the answer reads (goodput and attainment only when given)."""
    r = {"pattern_id": pid, "backend": backend, "topology": "1P1D" if backend != "unified" else "1 replica", "gpus_used": gpus,
         "status": "done", "validity": "valid", "stale": "", "concurrency": 8, "request_rate": None, "measurement_type": "online",
         "prefix_cache": False, "workload": workload, "slo": slo, "request_goodput": goodput, "slo_attainment_pct": attainment,
         "output_throughput_per_gpu": per_gpu, "output_throughput": per_gpu * gpus, "median_tpot_ms": 20.0, "p99_ttft_ms": 300.0}
    return {**r, **extra}


def ci(r: dict[str, Any], metric: str, low: float, high: float) -> dict[str, Any]:
    return {**r, f"{metric}_ci_low": low, f"{metric}_ci_high": high}


# -- Pareto frontier --------------------------------------------------------------------------

def test_dominated_points_are_off_the_frontier() -> None:
    # (tok/s per user, tok/s per GPU), both higher is better
    points = [(10.0, 500.0), (20.0, 400.0), (15.0, 300.0), (30.0, 100.0), (5.0, 450.0)]
    assert pareto_front(points) == [0, 1, 3]  # (15, 300) is beaten by (20, 400); (5, 450) by (10, 500)


def test_lower_is_better_on_one_axis() -> None:
    # (TTFT p99 ms, tok/s per GPU): low latency and high throughput win
    points = [(100.0, 500.0), (50.0, 400.0), (120.0, 450.0), (40.0, 100.0)]
    assert pareto_front(points, (False, True)) == [0, 1, 3]  # (120, 450) is slower and lower than (100, 500)
    assert pareto_front(points, (True, True)) == [0, 2]  # the same points read the other way round


def test_ties_equal_points_both_stay_and_a_tie_on_one_axis_is_dominated() -> None:
    points = [(10.0, 500.0), (10.0, 500.0), (10.0, 400.0), (8.0, 500.0)]
    assert pareto_front(points) == [0, 1]
    assert pareto_front([]) == [] and pareto_front([(1.0, 1.0)]) == [0]


def test_trade_off_reads_interactivity_and_ttft_from_rows_with_intervals() -> None:
    fast = ci(row("fast", per_gpu=300.0, median_tpot_ms=10.0), "median_tpot_ms", 8.0, 12.5)
    slow = row("slow", per_gpu=200.0, median_tpot_ms=40.0)
    no_tpot = row("none", per_gpu=900.0, median_tpot_ms=None)
    t = trade_off([fast, slow, no_tpot], INTERACTIVITY)
    assert [r["pattern_id"] for r in t.rows] == ["fast", "slow"]  # no TPOT, no point
    assert t.values == ((100.0, 300.0), (25.0, 200.0)) and t.on_frontier(fast) and not t.on_frontier(slow)
    assert INTERACTIVITY.interval(fast) == (80.0, 125.0)  # 1000 / TPOT turns the interval over
    latency = trade_off([row("a", per_gpu=300.0, p99_ttft_ms=900.0), row("b", per_gpu=200.0, p99_ttft_ms=100.0)], TTFT_P99)
    assert len(latency.frontier) == 2


# -- the recommendation -----------------------------------------------------------------------

def test_the_most_goodput_per_gpu_among_those_meeting_the_slo() -> None:
    a = row("a", gpus=2, goodput=10.0, attainment=95.0)  # 5 per GPU
    b = row("b", gpus=1, goodput=20.0, attainment=80.0)  # 20 per GPU, but misses the SLO
    c = row("c", gpus=1, goodput=8.0, attainment=99.0)  # 8 per GPU
    rec = recommend([a, b, c], SLO, "w")
    assert rec.basis == GOODPUT and rec.best.row is c and rec.runner_up.row is a
    assert [x.row["pattern_id"] for x in rec.ranked] == ["c", "a", "b"]
    assert (rec.rank(c), rec.rank(a), rec.rank(b)) == (1, 2, None)
    assert rec.best.value == 8.0 and rec.runner_up.value == 5.0 and rec.lead == pytest.approx(1.6)
    assert rec.closest is None and rec.significant is None  # single trials are not judged
    text = sentence(rec, pricing(INFRA, {"g5.12xlarge": 5.672}))
    assert "deploy tcp 1P1D c=8 (c, 1 GPU)" in text and "Runner-up: tcp 1P1D c=8 (a, 2 GPUs)" in text
    assert "significance not judged" in text


def test_attainment_exactly_at_the_target_meets_it() -> None:
    assert SLO_ATTAINMENT_TARGET_PCT == 90.0
    at = row("at", goodput=5.0, attainment=90.0)
    below = row("below", goodput=50.0, attainment=89.99)
    rec = recommend([at, below], SLO)
    assert [c.meets for c in rec.ranked] == [True, False] and rec.best.row is at and rec.runner_up is None
    assert "It is the only configuration that meets the SLO." in sentence(rec, pricing(INFRA, {}))


def test_none_meets_the_slo_names_the_closest() -> None:
    rows = [row("far", goodput=30.0, attainment=40.0), row("near", goodput=1.0, attainment=85.0),
            row("nothing", goodput=None, attainment=None)]
    rec = recommend(rows, SLO, "4000 in / 64 out")
    assert rec.best is None and rec.runner_up is None and rec.significant is None
    assert rec.closest.row["pattern_id"] == "near"  # highest attainment, not highest goodput
    assert [c.row["pattern_id"] for c in rec.ranked] == ["near", "far", "nothing"]
    text = sentence(rec, pricing(INFRA, {}))
    assert "no configuration meets the SLO" in text and "Closest: tcp 1P1D c=8 (near, 2 GPUs) with 85.0% attainment" in text
    assert [rec.rank(r) for r in rows] == [None, None, None]


def test_overlapping_intervals_are_not_significant() -> None:
    a = ci(row("a", gpus=1, goodput=10.0, attainment=99.0), "request_goodput", 8.0, 12.0)
    b = ci(row("b", gpus=1, goodput=9.0, attainment=99.0), "request_goodput", 7.5, 10.5)
    rec = recommend([b, a], SLO)
    assert rec.best.row is a and rec.best.interval == (8.0, 12.0) and rec.significant is False
    assert "the lead is not significant (the 95% CIs overlap)" in sentence(rec, pricing(INFRA, {}))


def test_disjoint_intervals_are_significant_and_scale_per_gpu() -> None:
    a = ci(row("a", gpus=2, goodput=40.0, attainment=99.0), "request_goodput", 38.0, 42.0)  # 19..21 per GPU
    b = ci(row("b", gpus=1, goodput=15.0, attainment=99.0), "request_goodput", 14.0, 16.0)
    rec = recommend([b, a], SLO)
    assert rec.best.row is a and rec.best.interval == (19.0, 21.0) and rec.significant is True
    assert "the lead is significant (disjoint 95% CIs)" in sentence(rec, pricing(INFRA, {}))
    c = ci(row("c", gpus=1, goodput=15.0, attainment=99.0), "request_goodput", 14.0, 20.0)  # reaches into a's interval
    assert recommend([a, c], SLO).significant is False


def test_without_an_slo_throughput_per_gpu_decides() -> None:
    rows = [row("low", per_gpu=100.0, slo="", goodput=None), row("high", per_gpu=250.0, slo="", goodput=None),
            ci(row("mid", per_gpu=200.0, slo=""), "output_throughput_per_gpu", 150.0, 260.0)]
    rec = recommend(rows, "")
    assert rec.basis == THROUGHPUT and [c.row["pattern_id"] for c in rec.ranked] == ["high", "mid", "low"]
    assert all(c.meets is None for c in rec.ranked) and rec.lead == pytest.approx(1.25)
    assert "no SLO in the plan, so configurations are ranked by output tok/s per GPU" in sentence(rec, pricing(INFRA, {}))


def test_ties_go_to_higher_attainment_then_fewer_gpus() -> None:
    rows = [row("two", gpus=2, goodput=20.0, attainment=95.0), row("one", gpus=1, goodput=10.0, attainment=95.0),
            row("sure", gpus=2, goodput=20.0, attainment=99.0)]
    assert [c.row["pattern_id"] for c in recommend(rows, SLO).ranked] == ["sure", "one", "two"]
    assert [c.row["pattern_id"] for c in recommend(list(reversed(rows)), SLO).ranked] == ["sure", "one", "two"]


def test_recommendations_per_workload_and_slo_valid_rows_only() -> None:
    rows = [row("a", goodput=10.0, attainment=99.0), row("b", goodput=30.0, attainment=99.0, validity="invalid"),
            row("c", goodput=5.0, attainment=99.0, workload="1000 in / 64 out"),
            row("d", goodput=5.0, attainment=99.0, slo="TTFT <= 100 ms")]
    recs = recommendations(rows)
    assert [(r.workload, r.slo, [c.row["pattern_id"] for c in r.ranked]) for r in recs] == [
        ("4000 in / 64 out", SLO, ["a"]), ("4000 in / 64 out", "TTFT <= 100 ms", ["d"]), ("1000 in / 64 out", SLO, ["c"])]


def test_annotate_marks_one_row_per_workload_and_prices_it() -> None:
    rows = [row("a", gpus=2, goodput=10.0, attainment=99.0, per_gpu=100.0), row("b", gpus=1, goodput=8.0, attainment=99.0),
            row("x", goodput=99.0, attainment=99.0, status="failed"), row("m", goodput=1.0, attainment=10.0)]
    price, recs = annotate(rows, INFRA, {"g5.12xlarge": 8.0})
    assert price.usd_per_gpu_hour == 2.0 and len(recs) == 1
    assert [(r["recommended"], r["recommendation_rank"]) for r in rows] == [(False, 2), (True, 1), (None, None), (False, None)]
    # $2 per GPU-hour x 2 GPUs / (200 tok/s x 3600) x 1e6
    assert rows[0]["cost_usd_per_m_output_tokens"] == pytest.approx(2.0 * 2 / (200.0 * 3600) * 1e6)
    text = sentence(recs[0], price)
    assert "deploy tcp 1P1D c=8 (b, 1 GPU)" in text and "$5.56 per million output tokens" in text  # 2 x 1 / (100 x 3600) x 1e6


# -- cost ---------------------------------------------------------------------------------------

def test_a_missing_price_is_unknown_never_zero() -> None:
    rows = [row("a", goodput=1.0, attainment=99.0)]
    price, recs = annotate(rows, INFRA, {"g6.12xlarge": 4.6})
    assert price.usd_per_hour is None and rows[0]["cost_usd_per_m_output_tokens"] is None
    text = sentence(recs[0], price)
    assert "unknown (add g5.12xlarge to estimate.prices_usd_per_hour) per million output tokens" in text and "$0" not in text
    assert pricing(INFRA, {"g5.12xlarge": 0}).usd_per_hour is None  # a zero price is no price
    assert cost_per_million_output_tokens(None, 2, 100.0) is None
    assert cost_per_million_output_tokens(1.0, 2, 0.0) is None and cost_per_million_output_tokens(1.0, 0, 10.0) is None
    assert cost_per_million_output_tokens(1.0, 1, 1e6 / 3600) == pytest.approx(1.0)


# -- names and columns ----------------------------------------------------------------------------

def test_workload_names() -> None:
    assert workload_name(4000, 64, None) == "4000 in / 64 out"
    assert workload_name(4000, 64, {"kind": "random"}) == "4000 in / 64 out"
    assert workload_name(4000, 64, {"kind": "shared_prefix", "prefix_tokens": 768, "num_prefixes": 2}) == (
        "4000 in / 64 out, shared_prefix 768x2")
    trace = {"kind": "trace", "file": "traces/s.jsonl", "format": "mooncake", "time_scale": 2.0, "max_requests": 20, "sha256": "ab" * 32}
    assert workload_name(8000, 512, trace) == "trace traces/s.jsonl (mooncake), max_requests 20, time_scale 2"
    assert workload_name(1000, 64, trace) == workload_name(8000, 512, trace), "a trace replays its own lengths"
    lengths = {"kind": "lengths", "input": {"distribution": "lognormal", "mean": 900, "sigma": 0.5},
               "output": {"distribution": "uniform", "min": 16, "max": 64}, "seed": 3}
    assert workload_name(4000, 64, lengths) == "lengths lognormal(mean 900, sigma 0.5) in / uniform 16-64 out, seed 3, at most 4000 in / 64 out"
    assert slo_text({"ttft_ms": 500, "tpot_ms": 50}) == SLO and slo_text(None) == ""


def test_answer_columns_come_last_in_summary_csv() -> None:
    rows = [row("a", goodput=1.0, attainment=99.0, median_ttft_ms=5.0, zz_metric=1.0)]
    annotate(rows, INFRA, {"g5.12xlarge": 8.0})
    cols = columns(rows)
    last = [*ANSWER_COLUMNS, *PREFIX_CACHE_COLUMNS]
    assert cols[-len(last):] == last and "zz_metric" in cols[:-len(last)]
    header, line = rows_to_csv(rows).splitlines()[:2]
    assert header.endswith(",recommended,recommendation_rank," + ",".join(PREFIX_CACHE_COLUMNS)) and line.endswith(",true,1,,,")


def test_goodput_intervals_come_from_the_trials_the_fold_kept() -> None:
    r: dict[str, Any] = {}
    _trial_intervals(r, {"trials": [{"metrics": {"request_goodput": v}} for v in (10.0, 12.0, 14.0)]})
    half = 4.302652729 * 2.0 / 3 ** 0.5  # t(0.975, 2) x sample std / sqrt(n)
    assert r["request_goodput_ci_low"] == pytest.approx(12.0 - half) and r["request_goodput_ci_high"] == pytest.approx(12.0 + half)
    single: dict[str, Any] = {}
    _trial_intervals(single, {"trials": [{"metrics": {"request_goodput": 10.0}}]})
    gap: dict[str, Any] = {}
    _trial_intervals(gap, {"trials": [{"metrics": {"request_goodput": 10.0}}, {"metrics": {}}]})
    assert single == {} and gap == {}
