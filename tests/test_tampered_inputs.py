"""Files changed behind the pipeline's back: result files damaged on disk, and task definitions
edited by hand after they were deployed (in results/ on the control host, or in the store the
nodes fetch from). Each is named with what is wrong, skipped or refused, and a rerun repairs it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Project, alive_groups, ledger_entries, make_project

PATTERNS = ["p14-unified-1k-c1", "p14-unified-1k-c2", "p14-unified-2k-c1", "p14-unified-3k-c1", "p14-unified-4k-c1", "p14-unified-5k-c1"]
CORRUPT = {  # pattern -> (how the file is damaged, what the reader must say)
    "p14-unified-1k-c1": ("truncated", "invalid JSON at line"),
    "p14-unified-1k-c2": ("wrong type", "key 'completed' should be an integer, got a string"),
    "p14-unified-2k-c1": ("missing key", "missing key 'median_ttft_ms'"),
    "p14-unified-3k-c1": ("binary garbage", "not UTF-8 text"),
}
INTACT = "p14-unified-4k-c1"
BAD_TRIAL = "p14-unified-5k-c1"
"""Its result is intact, but the trial it was folded from is damaged."""


def small_plan(project: Project, pattern_ids: list[str]) -> None:
    doc = project.plan("phase14")
    doc["common_settings"].update(warmup_iterations=2, measurement_iterations=8)
    pats = []
    for pid in pattern_ids:
        _, _, tokens, conc = pid.split("-")
        pats.append({"id": pid, "backend": "unified", "prompt_tokens": int(tokens[:-1]) * 1000, "concurrency": int(conc[1:])})
    doc["layers"] = [{**doc["layers"][0], "patterns": pats}]
    project.write_plan("phase14", doc)


def damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:150])
    elif how == "wrong type":
        doc = json.loads(path.read_text())
        doc["completed"] = "thirty"
        path.write_text(json.dumps(doc))
    elif how == "missing key":
        doc = json.loads(path.read_text())
        del doc["median_ttft_ms"]
        path.write_text(json.dumps(doc))
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01garbage\x80\x81")


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = make_project(tmp_path_factory.mktemp("corrupt") / "proj")
    small_plan(project, PATTERNS)
    out = project.snakemake("results/phase14/L0.done")
    assert out.returncode == 0, out.stderr[-3000:]
    for pid, (how, _) in CORRUPT.items():
        damage(project.root / f"results/phase14/runs/{pid}.json", how)
    damage(project.root / f"results/phase14/trials/{BAD_TRIAL}/1.json", "truncated")
    return project


def test_status_names_each_corrupt_file_and_why(damaged: Project) -> None:
    states = {p["pattern_id"]: p for p in json.loads(damaged.cli("status", "phase14", "--json"))["patterns"]}
    for pid, (_, reason) in CORRUPT.items():
        assert states[pid]["state"] == "corrupt", states[pid]
        assert f"results/phase14/runs/{pid}.json" in states[pid]["detail"] and reason in states[pid]["detail"]
    assert states[INTACT]["state"] == "done" and states[INTACT]["metrics"]["completed"] == 8
    # the damaged trial is moved aside; the result folded from it is intact, so the pattern stays done
    assert states[BAD_TRIAL]["state"] == "done", states[BAD_TRIAL]
    assert (damaged.root / f"results/phase14/corrupt/trials/{BAD_TRIAL}/1.json").exists()
    assert not (damaged.root / f"results/phase14/trials/{BAD_TRIAL}/1.json").exists()
    assert damaged.cli("status", "phase14").splitlines()[0] == "phase14: 2 done, 4 corrupt"


def test_summary_report_and_mlflow_skip_corrupt_files_and_cover_the_rest(damaged: Project) -> None:
    out = damaged.snakemake("results/phase14/report.html")
    assert out.returncode == 0, out.stderr[-3000:]
    results = damaged.root / "results/phase14"
    with (results / "summary.csv").open() as fh:
        rows = {r["pattern_id"]: r for r in csv.DictReader(fh)}
    for pid, (_, reason) in CORRUPT.items():
        assert rows[pid]["status"] == "corrupt" and reason in rows[pid]["detail"] and pid in rows[pid]["result_file"]
        assert rows[pid]["median_ttft_ms"] == ""
    assert rows[INTACT]["status"] == "done" and float(rows[INTACT]["median_ttft_ms"]) > 0
    assert rows[BAD_TRIAL]["status"] == "done"
    html = (results / "report.html").read_text()
    md = (results / "report.md").read_text()
    for pid in CORRUPT:
        assert f"results/phase14/runs/{pid}.json" in html and f"results/phase14/runs/{pid}.json" in md
    assert "corrupt" in md.split("## Failed, missing and invalid patterns", 1)[1]
    tracked = json.loads((results / "mlflow.json").read_text())
    assert sorted(tracked["created"]) == sorted([INTACT, BAD_TRIAL]) and sorted(tracked["corrupt"]) == sorted(CORRUPT)
    assert "missing key 'median_ttft_ms'" in tracked["corrupt"]["p14-unified-2k-c1"]
    assert "4 corrupt (skipped)" in (results / "logs/mlflow.log").read_text()


def test_compare_skips_corrupt_files(damaged: Project) -> None:
    out = subprocess.run([sys.executable, "-m", "disagglab", "compare", "phase14", "phase14", "--no-fail"], cwd=damaged.root,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "2 matched patterns" in out.stdout
    for pid, (_, reason) in CORRUPT.items():
        assert f"results/phase14/runs/{pid}.json: corrupt ({reason}" in out.stdout


def test_a_corrupt_result_is_not_done_so_the_next_run_builds_exactly_it_again(damaged: Project) -> None:
    """A damaged result is folded again from its intact trial (nothing is measured again); intact
    results, including one whose trial file was damaged and moved aside, are left alone."""
    intact = {pid: damaged.root / f"results/phase14/runs/{pid}.json" for pid in (INTACT, BAD_TRIAL)}
    before = {pid: (p.read_bytes(), p.stat().st_mtime_ns) for pid, p in intact.items()}
    trial_before = {pid: (damaged.root / f"results/phase14/trials/{pid}/1.json").read_bytes() for pid in CORRUPT}
    jobs = damaged.dry_run_jobs("results/phase14/L0.done")
    assert sorted(j["pattern"] for j in jobs["fold_trials"]) == sorted(CORRUPT)
    assert "run_trial" not in jobs, jobs.get("run_trial")
    assert all("Missing output files" in j["reason"] for j in jobs["fold_trials"]), jobs["fold_trials"]
    for pid in CORRUPT:  # moved aside (kept), so the result counts as missing
        assert (damaged.root / f"results/phase14/corrupt/{pid}.json").exists()
        assert not (damaged.root / f"results/phase14/runs/{pid}.json").exists()
    out = damaged.snakemake("results/phase14/L0.done")
    assert out.returncode == 0, out.stderr[-3000:]
    for pid in CORRUPT:
        assert damaged.result("phase14", pid)["completed"] == 8
        assert (damaged.root / f"results/phase14/trials/{pid}/1.json").read_bytes() == trial_before[pid], "not measured again"
        assert not (damaged.root / f"results/phase14/corrupt/{pid}.json").exists(), "a rebuilt result's corrupt copy is removed"
    assert {pid: (p.read_bytes(), p.stat().st_mtime_ns) for pid, p in intact.items()} == before, "an intact result is never rebuilt"
    assert "fold_trials" not in damaged.dry_run_jobs("results/phase14/L0.done")
    assert {p["state"] for p in json.loads(damaged.cli("status", "phase14", "--json"))["patterns"]} == {"done"}


def test_hand_edited_task_definitions_are_refused(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    pid = "p14-unified-1k-c1"
    small_plan(project, [pid])
    deploy = f"results/phase14/deploy/{pid}.json"
    run = f"results/phase14/runs/{pid}.json"
    assert project.snakemake(deploy).returncode == 0

    # (a) edited on the control host after deploy: the deploy step refuses it, naming both hashes
    task = project.root / f"results/phase14/tasks/{pid}/unified.json"
    rendered = task.read_bytes()
    from disagglab.hashing import sha256_bytes

    doc = json.loads(rendered)
    doc["servers"][0]["argv"].append("--max-num-seqs=1")
    task.write_text(json.dumps(doc))
    out = project.snakemake(run)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert f"results/phase14/tasks/{pid}/unified.json: sha256 {sha256_bytes(task.read_bytes())}" in log, log[-3000:]
    assert f"the plan renders sha256 {sha256_bytes(rendered)}" in log
    assert not (project.root / run).exists() and ledger_entries(project.root) == []

    # (b) edited in the store (laid out as the bucket) after deploy: the node's fetch refuses it
    task.unlink()
    assert project.snakemake(deploy).returncode == 0
    assert task.read_bytes() == rendered
    key = f"phase14/tasks/{pid}/unified.json"
    stored = project.root / "results/.local/store" / key
    stored.write_bytes(stored.read_bytes().replace(b'"--port"', b'"--port", "9"', 1))
    out = project.snakemake(run)
    assert out.returncode != 0
    record = json.loads((project.root / f"results/phase14/failures/{pid}.json").read_text())
    assert record["step"] == "fetch" and record["node"] == "node1", record
    assert f"sha256 mismatch for {key!r}: expected {sha256_bytes(rendered)}, store has {sha256_bytes(stored.read_bytes())}" in record["cause"]
    assert ledger_entries(project.root) == [], "no process may start from a refused task"
    assert not (project.root / run).exists()

    # redeploy (the marker is what says "deployed"), then the pattern runs
    (project.root / deploy).unlink()
    out = project.snakemake(run)
    assert out.returncode == 0, out.stderr[-3000:]
    assert stored.read_bytes() == rendered and project.result("phase14", pid)["completed"] == 8
    assert not (project.root / f"results/phase14/failures/{pid}.json").exists()
    assert alive_groups(ledger_entries(project.root)) == []
