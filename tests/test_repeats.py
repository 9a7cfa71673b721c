"""Repeats: N measured trials per pattern, interleaved across patterns, folded into one result with
95% t-intervals; raising `repeats` measures only the missing trials. Real Snakemake runs of the
stand-in; the tests share one project and run in order."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from disagglab.hashing import sha256_file

from conftest import Project, alive_groups, ledger_entries, make_project

PHASE = "phase90"
IDS = ["p90-unified-1k-c1", "p90-tcp-1k-c1"]
TARGET = f"results/{PHASE}/L0.done"
T_2DF = 4.303  # two-sided 95% Student t, 2 degrees of freedom (any t table)


def trial_files(proj: Project, pid: str) -> list[Path]:
    return sorted((proj.root / "results" / PHASE / "trials" / pid).glob("[0-9]*.json"), key=lambda p: int(p.stem))


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    p = make_project(tmp_path_factory.mktemp("repeats") / "proj")
    doc = p.plan("phase14")
    doc.update(phase=90, name="Repeats", description="Two backends at one load point, measured in repeated trials.")
    doc["common_settings"].update(warmup_iterations=2, measurement_iterations=10, repeats=3)
    doc["layers"] = [{"id": "L0", "name": "Repeats", "priority": "P0", "description": "unified vs tcp, 1k c1",
                      "patterns": [{"id": pid, "backend": pid.split("-")[1], "prompt_tokens": 1000, "concurrency": 1} for pid in IDS]}]
    p.write_plan(PHASE, doc)
    out = p.snakemake(TARGET)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    yield p
    assert alive_groups(ledger_entries(p.root)) == []


def test_each_pattern_has_three_trials_folded_with_t_intervals(proj: Project) -> None:
    for pid in IDS:
        files = trial_files(proj, pid)
        assert [f.stem for f in files] == ["1", "2", "3"]
        trials = [json.loads(f.read_text()) for f in files]
        assert [t["trial"] for t in trials] == [1, 2, 3]
        assert len({t["provenance"]["run_id"] for t in trials}) == 3, "each trial is its own run with its own servers"
        result = proj.result(PHASE, pid)
        assert result["repeats"] == 3 and result["simulated"] is True
        assert [t["sha256"] for t in result["trials"]] == [sha256_file(f) for f in files]
        values = [t["median_ttft_ms"] for t in trials]
        st = result["stats"]["median_ttft_ms"]
        assert result["median_ttft_ms"] == pytest.approx(statistics.fmean(values))
        assert st["n"] == 3 and st["std"] == pytest.approx(statistics.stdev(values))
        half = T_2DF * statistics.stdev(values) / math.sqrt(3)
        assert st["ci_low"] == pytest.approx(st["mean"] - half, rel=1e-3) and st["ci_high"] == pytest.approx(st["mean"] + half, rel=1e-3)
        assert st["cv"] == pytest.approx(st["std"] / st["mean"])
        assert len(result["requests"]) == 30 and {r["trial"] for r in result["requests"]} == {1, 2, 3}
        assert result["validity"]["valid"], result["validity"]


def test_trials_are_interleaved_across_patterns(proj: Project) -> None:
    """Trial k of every pattern runs before trial k+1 of any: drift spreads over all patterns."""
    runs = sorted((json.loads(f.read_text())["started_at"], json.loads(f.read_text())["trial"]) for pid in IDS for f in trial_files(proj, pid))
    order = [trial for _, trial in runs]
    assert order == sorted(order), f"trials ran in the order {order}"


def test_report_summary_and_status_show_the_intervals(proj: Project) -> None:
    out = proj.snakemake(f"results/{PHASE}/report.html")
    assert out.returncode == 0, out.stderr[-3000:]
    md = (proj.root / "results" / PHASE / "report.md").read_text()
    assert "significant (disjoint 95% CIs)" in md
    layer_rows = [line for line in md.splitlines() if line.startswith("| p90-")]
    assert len(layer_rows) == len(IDS) and all(" ±" in line for line in layer_rows), layer_rows
    with (proj.root / "results" / PHASE / "summary.csv").open() as fh:
        rows = {r["pattern_id"]: r for r in csv.DictReader(fh)}
    for pid in IDS:
        result = proj.result(PHASE, pid)
        assert rows[pid]["repeats"] == "3"
        assert float(rows[pid]["median_ttft_ms_ci_low"]) == pytest.approx(result["stats"]["median_ttft_ms"]["ci_low"])
        assert float(rows[pid]["output_throughput_per_gpu_ci_high"]) > float(rows[pid]["output_throughput_per_gpu"])
    status = proj.cli("status", PHASE)
    assert all("3 trials x 10 req" in line and "(95% CI)" in line for line in status.splitlines() if "p90-" in line and "done" in line)


def test_raising_repeats_measures_only_the_missing_trials(proj: Project) -> None:
    before = {pid: [sha256_file(f) for f in trial_files(proj, pid)] for pid in IDS}
    doc = proj.plan(PHASE)
    doc["common_settings"]["repeats"] = 5
    proj.write_plan(PHASE, doc)
    jobs = proj.dry_run_jobs(TARGET)
    assert sorted((j["pattern"], j["trial"]) for j in jobs["run_trial"]) == sorted((pid, k) for pid in IDS for k in ("4", "5"))
    assert sorted(j["pattern"] for j in jobs["fold_trials"]) == sorted(IDS)
    assert "render_task" not in jobs and "deploy_pattern" not in jobs

    # One new trial fails: the finished ones stay, the failure names the trial, and only it is retried.
    failing = f"results/{PHASE}/trials/{IDS[1]}/4.json"
    out = proj.snakemake(failing, env={"DISAGGLAB_FAULTS": json.dumps({IDS[1]: {"consumer": "crash_after=3"}})})
    assert out.returncode != 0
    record = json.loads((proj.root / "results" / PHASE / "failures" / f"{IDS[1]}.json").read_text())
    assert record["trial"] == 4 and record["repeats"] == 5 and "(trial 4 of 5)" in record["message"]
    line = next(line for line in proj.cli("status", PHASE).splitlines() if IDS[1] in line)
    assert "out-of-date" in line and "trial(s) 4, 5 of 5 not measured yet" in line and "last attempt failed: step bench" in line
    assert "(trial 4 of 5)" in line
    assert not (proj.root / failing).exists()

    out = proj.snakemake(TARGET)
    assert out.returncode == 0, out.stderr[-3000:]
    for pid in IDS:
        files = trial_files(proj, pid)
        assert [f.stem for f in files] == ["1", "2", "3", "4", "5"]
        assert [sha256_file(f) for f in files[:3]] == before[pid], "finished trials are never measured again"
        result = proj.result(PHASE, pid)
        assert result["repeats"] == 5 and result["stats"]["median_ttft_ms"]["n"] == 5
    assert not (proj.root / "results" / PHASE / "failures" / f"{IDS[1]}.json").exists()
    assert proj.dry_run_jobs(TARGET) == {}


def test_deleting_a_result_measures_that_pattern_again_and_keeps_its_old_trials(proj: Project) -> None:
    pid = IDS[0]
    old = [sha256_file(f) for f in trial_files(proj, pid)]
    (proj.root / "results" / PHASE / "runs" / f"{pid}.json").unlink()
    jobs = proj.dry_run_jobs(TARGET)
    assert sorted((j["pattern"], j["trial"]) for j in jobs["run_trial"]) == [(pid, str(k)) for k in range(1, 6)]
    (aside,) = (proj.root / "results" / PHASE / "trials" / pid).glob("superseded-*")
    assert sorted(sha256_file(f) for f in aside.glob("[0-9]*.json")) == sorted(old), "set aside, never deleted"
