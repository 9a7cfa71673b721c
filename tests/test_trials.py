"""Statistics of repeated trials: the t-interval, the aggregated result, and what the report calls significant."""

from __future__ import annotations

import math

import pytest

from disagglab.report.backends import Best, Ratio
from disagglab.results.fold import aggregate, intervals_overlap, summarize, t_cdf, t_critical


@pytest.mark.parametrize(
    ("df", "expected"),
    # Two-sided 95% critical values from any Student t table (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2).
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (19, 2.093), (29, 2.045), (99, 1.984)],
)
def test_t_critical_matches_the_table(df: int, expected: float) -> None:
    assert t_critical(df) == pytest.approx(expected, abs=5e-4)


def test_t_cdf_is_symmetric_and_monotone() -> None:
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(-2.0, 5) == pytest.approx(1 - t_cdf(2.0, 5))
    assert t_cdf(1.0, 3) < t_cdf(2.0, 3) < t_cdf(3.0, 3) < 1.0
    assert t_critical(4, 0.99) == pytest.approx(4.604, abs=5e-4)


def test_summarize_three_values() -> None:
    st = summarize([10.0, 12.0, 14.0])
    assert st["n"] == 3 and st["mean"] == pytest.approx(12.0) and st["std"] == pytest.approx(2.0)
    assert st["cv"] == pytest.approx(2.0 / 12.0)
    half = 4.303 * 2.0 / math.sqrt(3)
    assert st["ci_low"] == pytest.approx(12.0 - half, abs=1e-3) and st["ci_high"] == pytest.approx(12.0 + half, abs=1e-3)


def test_one_trial_has_no_interval() -> None:
    st = summarize([5.0])
    assert st["mean"] == 5.0 and st["std"] is None and st["ci_low"] is None and st["ci_high"] is None


def test_overlap() -> None:
    assert intervals_overlap((1.0, 2.0), (1.5, 3.0)) is True
    assert intervals_overlap((1.0, 2.0), (2.5, 3.0)) is False
    assert intervals_overlap((1.0, 2.0), None) is None


def _trial(k: int, ttft: float, valid: bool = True) -> dict:
    return {
        "schema_version": 1, "pattern_id": "p1-x", "trial": k, "completed": 30, "median_ttft_ms": ttft,
        "output_throughput": 100.0 + k, "validity": {"valid": valid, "reasons": [] if valid else ["KV never moved"]},
        "provenance": {"run_id": f"r{k}"}, "started_at": f"2026-01-01T00:00:0{k}.000Z", "finished_at": f"2026-01-01T00:01:0{k}.000Z",
        "requests": [{"index": 0}], "description": {"backend": "tcp"},
    }


def test_aggregate_means_spread_trials_and_validity() -> None:
    trials = [_trial(1, 10.0), _trial(2, 12.0, valid=False), _trial(3, 14.0)]
    files = [{"file": f"t/{k}.json", "sha256": f"s{k}"} for k in (1, 2, 3)]
    r = aggregate(trials, files)
    assert r["repeats"] == 3 and "trial" not in r
    assert r["median_ttft_ms"] == pytest.approx(12.0) and r["completed"] == 30 and isinstance(r["completed"], int)
    assert r["stats"]["median_ttft_ms"]["std"] == pytest.approx(2.0)
    assert [t["run_id"] for t in r["trials"]] == ["r1", "r2", "r3"] and r["trials"][1]["sha256"] == "s2"
    assert r["validity"] == {"valid": False, "reasons": ["trial 2: KV never moved"]}
    assert [q["trial"] for q in r["requests"]] == [1, 2, 3]
    assert r["started_at"].endswith("01.000Z") and r["finished_at"].endswith("03.000Z")
    with pytest.raises(ValueError, match="different patterns"):
        aggregate([_trial(1, 1.0), {**_trial(2, 1.0), "pattern_id": "p1-y"}], files[:2])


def test_a_win_with_overlapping_intervals_is_never_significant() -> None:
    # the treatment is faster on the point estimate, but the intervals overlap
    r = Ratio("median_ttft_ms", baseline=10.0, treatment=9.0, baseline_ci=(8.0, 12.0), treatment_ci=(8.5, 9.5))
    assert r.treatment_wins and r.significant is False and "overlap" in r.note()
    disjoint = Ratio("median_ttft_ms", baseline=10.0, treatment=5.0, baseline_ci=(9.0, 11.0), treatment_ci=(4.0, 6.0))
    assert disjoint.significant is True
    single = Ratio("median_ttft_ms", baseline=10.0, treatment=5.0)
    assert single.significant is None and single.note() == ""
    best = Best(4000, "", "median_ttft_ms", "efa", {"efa": (5.0, "a"), "tcp": (6.0, "b"), "unified": (9.0, "c")},
                intervals={"efa": (4.0, 6.5), "tcp": (5.5, 6.5), "unified": (8.0, 10.0)})
    assert best.runner_up == "tcp" and best.significant is False
