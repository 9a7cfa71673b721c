"""Per-GPU comparison by topology, on hand-made rows: the ranking, its sentence, and which pairs compare."""

from __future__ import annotations

from typing import Any

from disagglab.plan.model import load_plan
from disagglab.plan.topology import topology_label
from disagglab.report.backends import pair_summaries
from disagglab.report.topologies import answer, topology_rankings

from conftest import ROOT


def row(pid: str, backend: str, topology: str, gpus: int, per_gpu: float, ci: tuple[float, float] | None = None,
        **extra: Any) -> dict[str, Any]:
    r = {"pattern_id": pid, "backend": backend, "topology": topology, "gpus_used": gpus, "status": "done", "validity": "valid",
         "stale": "", "prompt_tokens": 4000, "concurrency": 8, "request_rate": None, "measurement_type": "online", "max_tokens": 64,
         "prefix_cache": False, "gpu_memory_utilization": 0.9, "max_num_batched_tokens": 4096, "max_model_len": 8192, "tp_size": 1,
         "model": "m", "output_throughput_per_gpu": per_gpu, "median_ttft_ms": 100.0 / per_gpu, "median_tpot_ms": 2.0,
         "median_e2el_ms": 200.0, **extra}
    if ci:
        r["output_throughput_per_gpu_ci_low"], r["output_throughput_per_gpu_ci_high"] = ci
    return r


def test_topology_labels_of_the_shipped_plans() -> None:
    plan = load_plan(ROOT / "plans/phase16.json")
    labels = {pid: topology_label(plan.pattern(pid).spec, plan.pattern(pid).roles) for pid in plan.patterns}
    assert labels["p16-tcp-4k-c8-2p1d"] == "2P1D" and labels["p16-efa-4k-c8-1p2d"] == "1P2D"
    assert labels["p16-unified-4k-c8-ui4.ts1"] == "4 replicas"
    p14 = load_plan(ROOT / "plans/phase14.json")
    assert {topology_label(p14.pattern(pid).spec, p14.pattern(pid).roles) for pid in p14.patterns} == {"1P1D", "1 replica"}
    spec = {**p14.pattern("p14-tcp-1k-c1").spec, "topology": {"prefill": {"instances": 1, "tp_size": 2}, "decode": {"instances": 3, "tp_size": 1}}}
    assert topology_label(spec, ("producer", "consumer")) == "1P3D tp2/1"


def test_configurations_are_ranked_per_gpu_best_first_with_the_lead_stated() -> None:
    rows = [row("t11", "tcp", "1P1D", 2, 1000.0), row("t21", "tcp", "2P1D", 3, 1200.0), row("u2", "unified", "2 replicas", 2, 1100.0),
            row("bad", "efa", "2P2D", 4, 9999.0, validity="invalid"), row("other", "tcp", "1P2D", 3, 5000.0, concurrency=16)]
    [ranking] = topology_rankings(rows)  # the c=16 row has nothing to compare with; the invalid one is left out
    assert [r["pattern_id"] for r in ranking.entries] == ["t21", "u2", "t11"]
    assert round(ranking.share_of_best(ranking.entries[2]), 3) == round(1000 / 1200, 3)
    assert ranking.significant(ranking.entries[1]) is None  # single trials are not tested
    assert answer(ranking) == ("At 4000 tok c=8, tcp 2P1D (3 GPUs) serves the most output tok/s per GPU: 1200.0, "
                               "1.09x the next best, unified 2 replicas (2 GPUs).")


def test_a_lead_is_significant_only_with_disjoint_intervals() -> None:
    apart = [row("a", "efa", "2P1D", 3, 1200.0, (1150.0, 1250.0)), row("b", "tcp", "2P1D", 3, 1000.0, (950.0, 1050.0))]
    assert "significant (disjoint 95% CIs)" in answer(topology_rankings(apart)[0])
    close = [row("a", "efa", "2P1D", 3, 1200.0, (1000.0, 1400.0)), row("b", "tcp", "2P1D", 3, 1000.0, (950.0, 1050.0))]
    assert answer(topology_rankings(close)[0]).endswith("but the 95% CIs overlap.")


def test_todays_layouts_alone_are_not_a_topology_comparison() -> None:
    assert topology_rankings([row("u", "unified", "1 replica", 1, 900.0), row("t", "tcp", "1P1D", 2, 700.0)]) == []


def test_efa_meets_tcp_at_the_same_layout_and_unified_at_the_same_gpus_or_the_first() -> None:
    rows = [row("t11", "tcp", "1P1D", 2, 1000.0), row("t22", "tcp", "2P2D", 4, 900.0), row("t12", "tcp", "1P2D", 3, 800.0),
            row("e22", "efa", "2P2D", 4, 950.0), row("e11", "efa", "1P1D", 2, 1010.0),
            row("u2", "unified", "2 replicas", 2, 1100.0), row("u4", "unified", "4 replicas", 4, 850.0)]
    pairs = {(p.treatment, p.baseline): [(pt.treatment_id, pt.baseline_id) for pt in p.points] for p in pair_summaries(rows)}
    assert pairs[("efa", "tcp")] == [("e22", "t22"), ("e11", "t11")]  # plan order within the point; never 2P2D vs 1P1D
    assert pairs[("tcp", "unified")] == [("t11", "u2"), ("t22", "u4"), ("t12", "u2")]  # 3 GPUs: no 3 replicas, so the first
    label = next(p for p in pair_summaries(rows) if p.treatment == "efa" and p.baseline == "unified").points[0].point
    assert label == "4000 tok c=8 2P2D vs 4 replicas"


def test_todays_plans_keep_their_pairs_and_labels() -> None:
    rows = [row("u", "unified", "1 replica", 1, 900.0), row("t", "tcp", "1P1D", 2, 700.0), row("e", "efa", "1P1D", 2, 720.0)]
    by = {(p.treatment, p.baseline): p.points for p in pair_summaries(rows)}
    assert [(pt.point, pt.treatment_id, pt.baseline_id) for pt in by[("tcp", "unified")]] == [("4000 tok c=8", "t", "u")]
    assert [pt.baseline_id for pt in by[("efa", "tcp")]] == ["t"]
