"""A pattern that fails leaves a failure record (never a result), stops every process it
started, and is retried by the next run."""

from __future__ import annotations

import json

from conftest import Project, alive_groups, ledger_entries

PATTERN = "p14-tcp-1k-c1"
TARGET = f"results/phase14/runs/{PATTERN}.json"


def test_stand_in_crash_mid_benchmark_fails_cleanly_and_is_retried(project: Project) -> None:
    out = project.snakemake(TARGET, env={"DISAGGLAB_FAULTS": json.dumps({PATTERN: {"consumer": "crash_after=5"}})})
    assert out.returncode != 0
    result = project.root / TARGET
    failure = project.root / "results/phase14/failures" / f"{PATTERN}.json"
    assert not result.exists(), "a failed pattern must not leave a result file"
    record = json.loads(failure.read_text())
    assert record["pattern_id"] == PATTERN and record["step"] == "bench" and record["node"] == "node2"
    assert "requests failed" in record["cause"]
    assert record["log_tail"], "the failure record carries the last log lines"
    assert PATTERN in (project.root / f"results/phase14/logs/{PATTERN}/trial-1/run.log").read_text()
    # the crashed server's log came back through the store
    logs = set(record["logs"].get("node1", [])) | set(record["logs"].get("node2", []))
    assert any(p.endswith("consumer.log") for p in logs) and any(p.endswith("producer.log") for p in logs)
    entries = ledger_entries(project.root)
    assert {"producer", "consumer", "proxy", "benchmark"} <= {e["name"] for e in entries}
    assert alive_groups(entries) == [], "no process of the failed run may be left"
    assert not list((project.root / "results").rglob("*.tmp")), "no half-written file"
    status = project.cli("status", "phase14")
    line = next(ln for ln in status.splitlines() if PATTERN in ln)
    assert "failed" in line and "step bench on node2" in line and "requests failed" in line
    assert "p14-unified-1k-c1" in status and "pending" in status

    # The next run retries exactly this pattern and clears the failure record.
    out = project.snakemake(TARGET)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(result.read_text())["completed"] == 30
    assert not failure.exists()
    assert alive_groups(ledger_entries(project.root)) == []
    line = next(ln for ln in project.cli("status", "phase14").splitlines() if PATTERN in ln)
    assert " done " in line and "30 req" in line and "valid simulated" in line


def test_server_that_never_gets_healthy_is_a_start_failure(project: Project) -> None:
    cfg = project.root / "config" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("health_timeout_s: 120", "health_timeout_s: 0.5").replace("startup_s: 2.0", "startup_s: 200.0"))
    out = project.snakemake("results/phase14/runs/p14-unified-1k-c1.json")
    assert out.returncode != 0
    record = json.loads((project.root / "results/phase14/failures/p14-unified-1k-c1.json").read_text())
    assert record["step"] == "start" and record["node"] == "node1"
    assert "not healthy" in record["cause"] and "after 0.5 s" in record["cause"]
    assert not (project.root / "results/phase14/runs/p14-unified-1k-c1.json").exists()
    assert alive_groups(ledger_entries(project.root)) == []
