"""The whole L0 of phase14 through real Snakemake runs, then the resume promises one by one.

The tests share one project copy and run in order: each edit is either undone at the end
of its test or, where a real run follows, left in place as the new baseline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import FINISHED_TARGET, Project, alive_groups, finished_copy, ledger_entries, make_project

L0 = ["p14-unified-1k-c1", "p14-tcp-1k-c1", "p14-efa-1k-c1", "p14-unified-4k-c1", "p14-tcp-4k-c1", "p14-efa-4k-c1"]
VLLM_KEYS = ["completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput"]
TARGET = "results/phase14/L0.done"


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory, finished_l0: Project) -> Iterator[Project]:
    assert TARGET == FINISHED_TARGET
    p = finished_copy(finished_l0, tmp_path_factory.mktemp("resume") / "proj")
    yield p
    assert alive_groups(ledger_entries(p.root)) == []


def run_ids(proj: Project) -> dict[str, str]:
    return {pid: proj.result("phase14", pid)["provenance"]["run_id"] for pid in L0}


def measured(jobs: dict) -> list[str]:
    return sorted(j["pattern"] for j in jobs.get("run_trial", []))


class Edit:
    """Change a file for the duration of a with-block."""

    def __init__(self, path: Path, fn):
        self.path, self.fn = path, fn

    def __enter__(self) -> None:
        self.old = self.path.read_text()
        self.path.write_text(self.fn(self.old))

    def __exit__(self, *exc: object) -> None:
        self.path.write_text(self.old)


def test_l0_has_a_result_for_every_pattern(proj: Project) -> None:
    marker = json.loads((proj.root / TARGET).read_text())
    assert sorted(marker["patterns"]) == sorted(L0)
    for pid in L0:
        r = proj.result("phase14", pid)
        assert r["engine"] == "sim" and r["simulated"] is True
        assert r["pattern_id"] == pid and r["layer"] == "L0" and r["phase"] == "phase14"
        for key in VLLM_KEYS:
            assert key in r
        for metric in ("ttft", "tpot", "itl", "e2el"):
            for stat in ("mean", "median", "std", "p99"):
                assert f"{stat}_{metric}_ms" in r
        assert r["completed"] == 30 and r["failed"] == 0
        assert len(r["requests"]) == 30
        assert all(req["prompt_tokens"] == r["spec"]["prompt_tokens"] for req in r["requests"])
        assert r["mean_ttft_ms"] > 0 and r["mean_tpot_ms"] > 0
        assert set(r["provenance"]["task_sha256"]) == ({"unified"} if "unified" in pid else {"producer", "consumer"})
        assert r["validity"]["valid"] is True


def test_disaggregated_results_carry_kv_transfer_evidence(proj: Project) -> None:
    for pid in L0:
        ev = proj.result("phase14", pid)["kv_transfer"]
        if "unified" in pid:
            assert ev["required"] is False
            continue
        assert ev["required"] and ev["valid"], ev
        assert ev["transfers"] >= ev["completed_requests"] == 30
        assert ev["failed_transfers"] == 0


def test_no_process_of_the_run_is_left(proj: Project) -> None:
    entries = ledger_entries(proj.root)
    names = {e["name"] for e in entries}
    assert {"unified", "producer", "consumer", "proxy", "benchmark"} <= names
    assert alive_groups(entries) == []


def test_nothing_to_do_after_a_full_run(proj: Project) -> None:
    assert proj.dry_run_jobs(TARGET) == {}


def test_adding_a_pattern_and_a_layer_reruns_nothing_finished(proj: Project) -> None:
    def add(text: str) -> str:
        doc = json.loads(text)
        doc["layers"][0]["patterns"].append({"id": "p14-tcp-2k-c1", "backend": "tcp", "prompt_tokens": 2000, "concurrency": 1})
        doc["layers"].append({"id": "L9", "name": "new", "priority": "P2", "description": "added later",
                              "patterns": [{"id": "p14-efa-2k-c2", "backend": "efa", "prompt_tokens": 2000, "concurrency": 2}]})
        return json.dumps(doc)

    with Edit(proj.root / "plans" / "phase14.json", add):
        assert measured(proj.dry_run_jobs(TARGET)) == ["p14-tcp-2k-c1"]
        assert measured(proj.dry_run_jobs("results/phase14/L9.done")) == ["p14-efa-2k-c2"]
    assert proj.dry_run_jobs(TARGET) == {}


def test_control_side_code_edits_rerun_nothing(proj: Project) -> None:
    edits = [
        Edit(proj.root / "disagglab" / "results" / "records.py", lambda t: t + "\n# edited\n"),
        Edit(proj.root / "disagglab" / "run" / "trial.py", lambda t: t + "\n# edited\n"),
        Edit(proj.root / "rules" / "run.smk", lambda t: t.replace("run-trial --phase", "run-trial  --phase")),
        Edit(proj.root / "Snakefile", lambda t: t + "\n# edited\n"),
    ]
    for e in edits:
        e.__enter__()
    try:
        jobs = proj.dry_run_jobs(TARGET)
    finally:
        for e in edits:
            e.__exit__()
    assert measured(jobs) == [], jobs


def test_template_edit_reruns_only_patterns_rendered_from_it(proj: Project) -> None:
    tmpl = proj.root / "templates" / "unified.json.jinja2"
    with Edit(tmpl, lambda t: t.replace('"kind": "task",', '"kind": "task",\n  "note": "edited",')):
        jobs = proj.dry_run_jobs(TARGET)
    assert measured(jobs) == ["p14-unified-1k-c1", "p14-unified-4k-c1"]
    assert sorted(j["pattern"] for j in jobs["render_task"]) == ["p14-unified-1k-c1", "p14-unified-4k-c1"]
    assert all("Params have changed" in j["reason"] for j in jobs["render_task"])
    with Edit(proj.root / "templates" / "disaggregated-consumer.json.jinja2", lambda t: t.replace('"kind": "task",', '"kind": "task",\n  "note": "edited",')):
        jobs = proj.dry_run_jobs(TARGET)
    assert measured(jobs) == sorted(p for p in L0 if "unified" not in p)


def test_editing_one_pattern_reruns_only_that_pattern(proj: Project) -> None:
    before = run_ids(proj)
    doc = proj.plan("phase14")
    doc["layers"][0]["patterns"][1]["max_num_batched_tokens"] = 2048  # p14-tcp-1k-c1
    proj.write_plan("phase14", doc)
    jobs = proj.dry_run_jobs(TARGET)
    assert measured(jobs) == ["p14-tcp-1k-c1"]
    assert {j["pattern"] for j in jobs["render_task"]} == {"p14-tcp-1k-c1"}
    assert all("Params have changed" in j["reason"] for j in jobs["render_task"])
    out = proj.snakemake(TARGET)
    assert out.returncode == 0, out.stderr[-3000:]
    after = run_ids(proj)
    assert [p for p in L0 if before[p] != after[p]] == ["p14-tcp-1k-c1"]
    assert proj.result("phase14", "p14-tcp-1k-c1")["spec"]["max_num_batched_tokens"] == 2048
    assert proj.dry_run_jobs(TARGET) == {}


def test_node_side_edit_makes_the_patterns_that_ran_it_out_of_date(proj: Project) -> None:
    before = run_ids(proj)
    proxy = proj.root / "scripts" / "disagg_proxy_server.py"
    proxy.write_text(proxy.read_text() + "\n# a node-side edit\n")
    jobs = proj.dry_run_jobs(TARGET)
    disagg = sorted(p for p in L0 if "unified" not in p)
    assert measured(jobs) == disagg
    for job in jobs["deploy_pattern"]:
        assert "Params have changed" in job["reason"] and "disagg_proxy_server.py" in job["reason"]
    assert sorted(j["pattern"] for j in jobs["deploy_pattern"]) == disagg
    out = proj.snakemake(TARGET)
    assert out.returncode == 0, out.stderr[-3000:]
    after = run_ids(proj)
    assert sorted(p for p in L0 if before[p] != after[p]) == disagg
    deployed = json.loads((proj.root / "results/phase14/deploy/p14-tcp-1k-c1.json").read_text())
    store = proj.root / "results/.local/store"
    entry = next(f for f in deployed["files"] if f["path"] == "scripts/disagg_proxy_server.py")
    assert (store / entry["key"]).read_text().endswith("# a node-side edit\n")


def test_deleting_a_result_reruns_exactly_that_pattern(proj: Project) -> None:
    before = run_ids(proj)
    (proj.root / "results/phase14/runs/p14-efa-4k-c1.json").unlink()
    jobs = proj.dry_run_jobs(TARGET)
    assert measured(jobs) == ["p14-efa-4k-c1"]
    out = proj.snakemake(TARGET)
    assert out.returncode == 0, out.stderr[-3000:]
    after = run_ids(proj)
    assert [p for p in L0 if before[p] != after[p]] == ["p14-efa-4k-c1"]
    assert proj.dry_run_jobs(TARGET) == {}


def test_dry_run_of_another_layer_plans_only_its_patterns(tmp_path: Path) -> None:
    p = make_project(tmp_path / "proj")
    jobs = p.dry_run_jobs("results/phase15/L1.done")
    plan = p.plan("phase15")
    l1 = sorted(pat["id"] for pat in plan["layers"][1]["patterns"])
    assert measured(jobs) == l1
    assert sorted({j["pattern"] for j in jobs["render_task"]}) == l1
    assert sorted(j["pattern"] for j in jobs["deploy_pattern"]) == l1
    assert [j["layer"] for j in jobs["layer_done"]] == ["L1"]
    assert set(jobs) == {"render_task", "deploy_pattern", "run_trial", "fold_trials", "layer_done"}
    assert not (p.root / "results").exists()


def test_the_phase_marker_is_not_swept_as_a_stale_layer_marker(tmp_path: Path) -> None:
    """all.done lists layers, not results: the layer-marker sweep once read it as unreadable and
    deleted it on every parse, so a finished phase's `all.done` was rebuilt on every run."""
    from disagglab.results.sweeps import sweep_stale_layer_markers

    phase = tmp_path / "results" / "phase5"
    (phase / "runs").mkdir(parents=True)
    result = phase / "runs" / "p5-a.json"
    result.write_text("{}")
    (phase / "L0.done").write_text(json.dumps({"patterns": {"p5-a": {"result": str(result)}}}))
    (phase / "all.done").write_text(json.dumps({"phase": "phase5", "layers": {"L0": {}}}))
    assert sweep_stale_layer_markers(tmp_path / "results") == []
    assert (phase / "all.done").exists() and (phase / "L0.done").exists()
    result.unlink()
    assert sweep_stale_layer_markers(tmp_path / "results") == [str(phase / "L0.done")]
    assert (phase / "all.done").exists()  # Snakemake rebuilds it after the newer L0.done
