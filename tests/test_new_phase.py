"""Adding plans/phase16.json needs no code change: it validates, plans and runs."""

from __future__ import annotations

import json

from conftest import Project


def test_a_new_phase_runs_without_code_changes(project: Project) -> None:
    doc = project.plan("phase14")
    doc["phase"] = 16
    doc["layers"] = [{"id": "L0", "name": "smoke", "priority": "P0", "description": "new phase",
                      "patterns": [{"id": "p16-unified-2k-c2", "backend": "unified", "prompt_tokens": 2000, "concurrency": 2},
                                   {"id": "p16-efa-2k-c2", "backend": "efa", "prompt_tokens": 2000, "concurrency": 2,
                                    "measurement_type": "offline"}]}]
    project.write_plan("phase16", doc)
    out = project.snakemake("results/phase16/L0.done")
    assert out.returncode == 0, out.stderr[-3000:]
    for pid in ("p16-unified-2k-c2", "p16-efa-2k-c2"):
        r = project.result("phase16", pid)
        assert r["phase"] == "phase16" and r["spec"]["prompt_tokens"] == 2000
    offline = project.result("phase16", "p16-efa-2k-c2")
    assert offline["measurement_type"] == "offline" and offline["kv_transfer"]["valid"]
    marker = json.loads((project.root / "results/phase16/L0.done").read_text())
    assert sorted(marker["patterns"]) == ["p16-efa-2k-c2", "p16-unified-2k-c2"]
    # phase14 was never touched
    assert not (project.root / "results/phase14").exists()
