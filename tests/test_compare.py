"""Phase comparison flags a real regression (a slower decode step) and exits non-zero."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import Project


def test_an_injected_regression_is_flagged_and_fails_the_cli(project: Project) -> None:
    base = project.plan("phase14")
    base["layers"] = [{**base["layers"][0], "patterns": base["layers"][0]["patterns"][:2]}]  # unified + tcp, 1k
    project.write_plan("phase14", base)
    assert project.snakemake("results/phase14/L0.done").returncode == 0
    # phase16: the same workload on a "build" whose decode step is twice as slow
    new = {**base, "phase": 16, "layers": [{**base["layers"][0], "patterns": [
        {**p, "id": p["id"].replace("p14-", "p16-")} for p in base["layers"][0]["patterns"]]}]}
    project.write_plan("phase16", new)
    cfg = project.root / "config/config.yaml"
    cfg.write_text(cfg.read_text().replace("decode_ms_per_step: 25.0", "decode_ms_per_step: 50.0"))
    assert project.snakemake("results/phase16/L0.done").returncode == 0

    out = subprocess.run([sys.executable, "-m", "disagglab", "compare", "phase14", "phase16"], cwd=project.root,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "phase16 vs phase14: 2 matched patterns, threshold 10%"
    for backend in ("unified", "tcp"):
        line = next(ln for ln in lines if ln.strip().startswith(backend))
        assert "REGRESSION" in line and "median_tpot_ms" in line.split("REGRESSION")[1]

    # as a Snakemake target: an HTML page that marks the regression; the rule itself succeeds
    made = project.snakemake("results/compare/phase14_vs_phase16.html")
    assert made.returncode == 0, made.stderr[-2000:]
    page = (project.root / "results/compare/phase14_vs_phase16.html").read_text()
    assert 'class="regression"' in page and "p16-tcp-1k-c1" in page

    # the same results against themselves: nothing flagged, exit 0
    shutil.copytree(project.root / "results/phase14", project.root / "results/phase13")
    same = subprocess.run([sys.executable, "-m", "disagglab", "compare", "phase13", "phase14"], cwd=project.root,
                          capture_output=True, text=True, check=False)
    assert same.returncode == 0 and same.stdout.splitlines()[-1] == "0 regression(s)"


def test_two_results_of_the_same_workload_are_not_silently_merged(project: Project) -> None:
    doc = project.plan("phase14")
    doc["layers"] = [{**doc["layers"][0], "patterns": [doc["layers"][0]["patterns"][1],
                                                       {**doc["layers"][0]["patterns"][1], "id": "p14-tcp-1k-c1-pc", "prefix_cache": True}]}]
    project.write_plan("phase14", doc)
    assert project.snakemake("results/phase14/L0.done").returncode == 0
    shutil.copytree(project.root / "results/phase14", project.root / "results/phase13")
    out = subprocess.run([sys.executable, "-m", "disagglab", "compare", "phase13", "phase14"], cwd=project.root,
                         capture_output=True, text=True, check=False)
    assert out.stdout.splitlines()[0] == "phase14 vs phase13: 2 matched patterns, threshold 10%"  # prefix cache on/off kept apart
    dup = json.loads((project.root / "results/phase13/runs/p14-tcp-1k-c1.json").read_text())
    (project.root / "results/phase13/runs/p14-tcp-1k-c1-copy.json").write_text(json.dumps({**dup, "pattern_id": "p14-tcp-1k-c1-copy"}))
    out = subprocess.run([sys.executable, "-m", "disagglab", "compare", "phase13", "phase14"], cwd=project.root,
                         capture_output=True, text=True, check=False)
    assert out.stdout.splitlines()[0] == "phase14 vs phase13: 1 matched patterns, threshold 10%"
    assert "measures the same workload as p14-tcp-1k-c1" in out.stdout
