"""The cost and time estimate (results/<phase>/plan.md, `python -m disagglab estimate`).

The accuracy test predicts a real Snakemake run of the stand-in *before* it runs, from the
model calibrated on an earlier, different run (other model, prompt lengths and load shape),
then runs it and compares wall times.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from disagglab.estimate import model as em
from disagglab.estimate.table import trials_to_run
from disagglab.plan.config import load_config_file
from disagglab.tasks.dag import Phases

from conftest import Project, make_project

CALIBRATION = [f"results/phase14/runs/p14-{b}-1k-c1.json" for b in ("unified", "tcp", "efa")]
PRICE_LINE = "    g5.12xlarge: 5.672\n"


def estimate_json(project: Project, *args: str) -> dict:
    return json.loads(project.cli("estimate", "phase15", "--json", *args))


def table(text: str) -> list[str]:
    """The per-layer table: the first markdown table of the estimate."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| layer |"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


def row(rows: list[str], label: str) -> list[str]:
    match = [r for r in rows if r.startswith(f"| {label}")]
    assert len(match) == 1, (label, rows)
    return [c.strip() for c in match[0].strip("|").split("|")]


def dollars(cell: str) -> float:
    assert cell.startswith("$"), cell
    return float(cell[1:].replace(",", ""))


# ------------------------------------------------------------------------------ the model
def test_model_replays_the_stand_in_timing_exactly() -> None:
    """Closed loop c=1, disaggregated c=1 and an offline batch against the stand-in's formulas."""
    t = em.sim_timing({"startup_s": 3.0, "prefill_tokens_per_s": 4000.0, "prefill_overhead_ms": 10.0, "decode_ms_per_step": 20.0,
                       "decode_batch_slowdown": 0.05, "kv_bytes_per_token": 100000, "bandwidth_gbps": {"tcp": 8.0},
                       "transfer_overhead_ms": {"tcp": 2.0}, "time_scale": 0.5})
    prefill = (0.010 + 2000 / 4000) * 0.5
    step = 0.020 * 0.5
    d = 0.003
    unified = em.simulate_load(t, "unified", 2000, 8, 5, "closed", 1, None, d)
    assert unified == pytest.approx(5 * (d + prefill + 7 * step))
    wire = 2000 * 100000 * 8 / (8e9 / 0.5)
    tcp = em.simulate_load(t, "tcp", 2000, 8, 5, "closed", 1, None, d)
    assert tcp == pytest.approx(5 * (d + prefill + 0.002 * 0.5 + wire + 8 * step))
    # offline: prefills go first, one at a time, then one batch decodes (slower per step)
    offline = em.simulate_load(t, "unified", 2000, 8, 4, "offline", 4, None, d)
    assert offline == pytest.approx(d + 4 * prefill + 7 * step * (1 + 0.05 * 3))
    # an open loop slower than the engine is paced by its rate
    assert em.simulate_load(t, "unified", 2000, 8, 4, "open", 0, 0.5, d) == pytest.approx(4 / 0.5 + d + prefill + 7 * step)


def test_fits_recover_the_per_request_overhead() -> None:
    pts = [(e, r, e + 0.02 * r) for e, r in ((1.0, 30), (2.0, 10), (5.0, 1))]
    assert em.fit_request_s(pts, 0.5)[1] == pytest.approx(0.02)
    pts = [(e, r, 1.7 * e + 0.004 * r) for e, r in ((1.0, 30), (2.0, 10), (5.0, 1))]
    k, d, n = em.fit_scale_and_request_s(pts, 0.5)
    assert (k, d, n) == (pytest.approx(1.7), pytest.approx(0.004), 3)
    assert em.fit_request_s([(3.0, 0.0, 3.5)], 0.5) == (1.0, 0.5, 0)  # engine bound: says nothing, prior kept


# ------------------------------------------------------------------------------ end to end
@pytest.mark.serial
def test_estimate_predicts_a_real_run_and_follows_results_and_prices(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    before = project.cli("estimate", "phase15")
    assert "not calibrated" in before
    assert row(table(before), "L2")[1] == "6 of 6"

    # calibrate: three phase14 patterns (7B, 1k prompts, closed loop c=1), one Snakemake run
    out = project.snakemake(*CALIBRATION)
    assert out.returncode == 0, out.stdout + out.stderr
    est = estimate_json(project)
    assert est["calibration"]["calibrated"] and est["calibration"]["results"] == 3
    predicted = est["layers"]["L2"]["wall_s"] + est["once_per_run_s"]

    # the prediction is fixed; now run what it predicted: phase15 L2 (14B TP2, 10k/20k, offline c=8)
    t0 = time.monotonic()
    out = project.snakemake("results/phase15/L2.done")
    actual = time.monotonic() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"phase15 L2: predicted {predicted:.1f} s, actual {actual:.1f} s")
    # A factor of 2 either way: CI once measured 1.34x on a machine this test had alone (30% was
    # too tight to hold by chance), while an estimate missing a term or mis-scaling the engine
    # (10k/20k-token prompts on a 14B TP2 model from 1k-token 7B calibration) is off by far more.
    assert 0.5 <= predicted / actual <= 2.0, f"predicted {predicted:.1f} s, actual {actual:.1f} s"

    # the target prints the table and writes the same one; finished patterns are not counted
    out = project.snakemake("results/phase15/plan.md")
    assert out.returncode == 0, out.stdout + out.stderr
    printed = table(out.stdout)
    written = (project.root / "results/phase15/plan.md").read_text()
    assert printed == table(written)
    assert [row(printed, lid)[1] for lid in ("L0", "L1", "L2")] == ["3 of 3", "8 of 8", "0 of 6"]
    assert row(printed, "**total**")[1] == "11 of 17"
    assert row(printed, "L2")[3] == "0:00:00"
    assert "calibrated from 9 results" in written  # the L2 results calibrate too
    again = project.snakemake("results/phase15/plan.md")
    assert "Nothing to be done" in again.stdout + again.stderr

    # a price edit reruns the estimate and scales the dollars, not the instance-hours
    cfg = project.root / "config/config.yaml"
    total = row(printed, "**total**")
    cfg.write_text(cfg.read_text().replace(PRICE_LINE, "    g5.12xlarge: 11.344\n"))
    out = project.snakemake("results/phase15/plan.md")
    assert out.returncode == 0, out.stdout + out.stderr
    doubled = row(table(out.stdout), "**total**")
    assert total[4] == doubled[4] == "17 of 17"  # local stand-in results never count for an AWS run
    assert doubled[6] == total[6]
    assert dollars(doubled[7]) == pytest.approx(2 * dollars(total[7]), abs=0.02)

    # an instance type without a price is unknown, never $0
    cfg.write_text(cfg.read_text().replace("    g5.12xlarge: 11.344\n", ""))
    for r in table(project.cli("estimate", "phase15"))[2:]:
        assert r.rstrip(" |").endswith("unknown (add g5.12xlarge to estimate.prices_usd_per_hour)"), r

    # an edited pattern counts again
    plan = project.plan("phase15")
    plan["layers"][2]["patterns"][0]["concurrency"] = 4
    project.write_plan("phase15", plan)
    assert estimate_json(project)["layers"]["L2"]["patterns_to_run"] == 1

    # trials: a finished pattern holds its up-to-date trial 1; with repeats 3 it has 2 left
    results = project.root / "results"
    phases = Phases(project.root / "plans", load_config_file(cfg))
    pid = "p15-L2-tcp-10k-c8"
    assert (results / "phase15/trials" / pid / "1.json").exists()
    assert trials_to_run(phases, "phase15", SimpleNamespace(id=pid, repeats=1), results) == (0, 1)
    assert trials_to_run(phases, "phase15", SimpleNamespace(id=pid, repeats=3), results) == (2, 3)
    edited = "p15-L2-unified-10k-c8"  # its concurrency changed above: its trial is stale
    assert trials_to_run(phases, "phase15", SimpleNamespace(id=edited, repeats=3), results) == (3, 3)


def test_aws_estimate_counts_instance_hours_and_dollars(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    text = project.cli("estimate", "phase15", "--configfile", "config/aws.yaml")
    rows = table(text)
    assert rows[0].split("|")[5:7] == [" instance-hours ", " cost (USD) "]
    total = row(rows, "**total**")
    hours = float(total[4])
    assert hours > 0
    assert dollars(total[5]) == pytest.approx(hours * 5.672, rel=0.01)
    assert "vllm/ssm/g5.12xlarge: not calibrated" in text and "roofline prior" in text
    # the layers add up to the total (plus the per-run part)
    doc = json.loads(project.cli("estimate", "phase15", "--configfile", "config/aws.yaml", "--json"))
    layers = sum(doc["layers"][lid]["wall_s"] for lid in ("L0", "L1", "L2"))
    assert doc["total"]["wall_s"] == pytest.approx(layers + doc["once_per_run_s"], abs=0.01)
    assert doc["total"]["instance_hours"] == pytest.approx(doc["total"]["wall_s"] * 2 / 3600, abs=1e-3)

    plan = project.plan("phase15")
    plan["infrastructure"]["instance_type"] = "p5e.48xlarge"
    project.write_plan("phase15", plan)
    text = project.cli("estimate", "phase15", "--configfile", "config/aws.yaml")
    assert re.search(r"\| \*\*total\*\* .*\| unknown \(add p5e\.48xlarge to estimate\.prices_usd_per_hour\) \|", text), text
    assert "$0.00" not in text


def test_calibration_recovers_a_slower_engine_and_its_overheads() -> None:
    """Results made by a known truth (real vLLM 2x slower than its prior, other overheads) are fitted back."""
    from disagglab.estimate.table import Fit, Observation, _overheads, calibrate, timing_for, trial_time
    from disagglab.plan.model import load_plan

    from conftest import ROOT

    cfg = load_config_file(ROOT / "config" / "config.yaml")
    plan = load_plan(ROOT / "plans" / "phase15.json")
    key = ("vllm", "ssm", "g5.12xlarge")
    prior = _overheads(cfg, "ssm")
    truth = Fit(*key, values={**prior, "server_process_s": 12.0, "client_start_s": 4.0, "gap_s": 6.0,
                              "request_s": {"unified": 0.004, "disaggregated": 0.009}},
                k=2.0, pipeline_ratio={"unified": 1.5, "disaggregated": 2.0})
    obs, clock = [], 1.8e9
    for pid in ("p15-L0-unified-4k-c1", "p15-L1-unified-4k-c8", "p15-L0-tcp-4k-c1", "p15-L1-efa-4k-c4", "p15-L2-unified-10k-c8"):
        spec = plan.pattern(pid).spec
        timing = timing_for(cfg, "vllm", "ssm", spec)
        tt = trial_time(timing, spec, truth)
        _, meas = em.bench_engine_s(timing.scaled(2.0), spec, truth.values["request_s"][("unified" if spec["backend"] == "unified" else "disaggregated")])
        obs.append(Observation(key, spec, timing, clock, clock + tt.startup_s + tt.bench_s + tt.pipeline_s, tt.startup_s, tt.bench_s, meas))
        clock += tt.total_s
    fit = calibrate(cfg, obs, key, [])
    assert fit.calibrated and fit.results == 5 and not fit.borrowed
    assert fit.k == pytest.approx(2.0, rel=0.02)
    assert fit.values["server_process_s"] == pytest.approx(12.0, rel=0.02)
    assert fit.values["gap_s"] == pytest.approx(6.0)
    assert fit.pipeline_ratio == {"unified": pytest.approx(1.5), "disaggregated": pytest.approx(2.0)}
    for pid in ("p15-L2-tcp-20k-c8", "p15-L1-tcp-4k-c8"):  # not among the calibration results
        spec = plan.pattern(pid).spec
        timing = timing_for(cfg, "vllm", "ssm", spec)
        assert trial_time(timing, spec, fit).total_s == pytest.approx(trial_time(timing, spec, truth).total_s, rel=0.03)
    # another instance type borrows, and says so
    other = calibrate(cfg, obs, ("vllm", "ssm", "g6e.12xlarge"), [])
    assert other.borrowed and "other instance types" in other.describe()
