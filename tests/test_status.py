"""`status` for a phase with done, failed, pending, out-of-date and incomplete patterns, and `list`."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from conftest import Project, finished_copy


def states(project: Project) -> dict[str, dict]:
    doc = json.loads(project.cli("status", "phase14", "--json"))
    assert doc["phase"] == "phase14"
    return {p["pattern_id"]: p for p in doc["patterns"]}


def forget(project: Project, pid: str) -> None:
    """The pattern never ran: no result, no trial, no deploy marker."""
    results = project.root / "results" / "phase14"
    for path in (results / "runs" / f"{pid}.json", results / "deploy" / f"{pid}.json"):
        path.unlink()
    shutil.rmtree(results / "trials" / pid)


def test_status_reports_every_state_with_reasons(finished_l0: Project, tmp_path: Path) -> None:
    project = finished_copy(finished_l0, tmp_path / "proj")
    for pid in ("p14-unified-4k-c1", "p14-tcp-4k-c1", "p14-efa-1k-c1"):
        forget(project, pid)
    crashed = project.snakemake("results/phase14/runs/p14-efa-1k-c1.json", env={"DISAGGLAB_FAULTS": '{"p14-efa-1k-c1": {"consumer": "crash_after=3"}}'})
    assert crashed.returncode != 0
    doc = project.plan("phase14")
    doc["layers"][0]["patterns"][0]["prefix_cache"] = True  # p14-unified-1k-c1 now out of date
    project.write_plan("phase14", doc)
    # a run killed while measuring leaves Snakemake's incomplete marker and no lock
    inc = project.root / ".snakemake" / "incomplete"
    inc.mkdir(parents=True, exist_ok=True)
    (inc / base64.urlsafe_b64encode(b"results/phase14/runs/p14-efa-4k-c1.json").decode()).write_text("{}")

    s = states(project)
    assert len(s) == 30
    assert s["p14-tcp-1k-c1"]["state"] == "done" and s["p14-tcp-1k-c1"]["metrics"]["completed"] == 30
    assert s["p14-unified-1k-c1"]["state"] == "out-of-date" and "params changed" in s["p14-unified-1k-c1"]["detail"]
    assert s["p14-efa-1k-c1"]["state"] == "failed" and "step bench on node2" in s["p14-efa-1k-c1"]["detail"]
    assert s["p14-efa-4k-c1"]["state"] == "incomplete" and "--rerun-incomplete" in s["p14-efa-4k-c1"]["detail"]
    assert s["p14-unified-20k-c1"]["state"] == "pending"
    assert sum(1 for p in s.values() if p["state"] == "pending") == 26

    text = project.cli("status", "phase14")
    assert text.splitlines()[0] == "phase14: 1 done, 1 out-of-date, 1 incomplete, 1 failed, 26 pending"
    assert "L0 [P0] Baseline comparison: 1 done, 1 out-of-date, 1 incomplete, 1 failed, 2 pending" in text
    assert "L1 [P1] Concurrency sweep: 12 pending" in text


def test_list_shows_layers_and_patterns(project: Project) -> None:
    text = project.cli("list", "phase15")
    assert text.startswith("phase15: Prefix caching and offline load")
    assert "L2 [P2] Offline long context" in text
    line = next(ln for ln in text.splitlines() if "p15-L2-efa-20k-c8" in ln)
    assert "efa" in line and "20000 tok" in line and "offline" in line


def test_list_without_a_phase_lists_every_plan(project: Project) -> None:
    text = project.cli("list")
    assert text.splitlines() == [
        "phase14: TCP vs EFA KV transfer, Qwen2.5-7B: L0 (6), L1 (12), L2 (12)",
        "phase15: Prefix caching and offline load, Qwen2.5-14B TP2: L0 (3), L1 (8), L2 (6)",
        "phase16: Prefill:decode ratio per GPU: L0 (8), L1 (2)",
        "phase17: Workloads: shared prefixes, traces, length mixes: L0 (4), L1 (3), L2 (2)",
    ]


def test_status_names_a_config_file_it_cannot_read(project: Project) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "disagglab", "status", "phase14", "--configfile", "/nonexistent.yaml"],
                         cwd=project.root, capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "/nonexistent.yaml: cannot read" in out.stderr, out.stderr


def test_status_fails_loudly_when_snakemake_cannot_plan(finished_l0: Project, tmp_path: Path) -> None:
    """Snakemake is asked only about patterns with a result; when it cannot answer, status says
    so instead of calling them current."""
    import subprocess
    import sys

    project = finished_copy(finished_l0, tmp_path / "proj")
    snakefile = project.root / "Snakefile"
    snakefile.write_text(snakefile.read_text() + "\nthis is not python\n")
    out = subprocess.run([sys.executable, "-m", "disagglab", "status", "phase14"],
                         cwd=project.root, capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "snakemake --summary failed" in out.stderr, out.stderr
