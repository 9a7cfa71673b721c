"""Plans written for the seed tool load as they are: its example plan and its id convention.

The seed names patterns `p{phase}-{layer-optional}-{backend}-{tokens}-c{concurrency}` with the
layer in upper case (`p15-L0-efa-4k-c1`). Such ids load, keep their case in every path, key
and wildcard, and two ids that differ only in case are refused (tests/test_bad_plans.py).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from disagglab.paths import PhaseLayout, phase_key
from disagglab.plan.model import load_plan

from conftest import ROOT, make_project

SEED_PLAN = ROOT / "tests" / "data" / "seed_readme_plan" / "phase16.json"
SEED_EXAMPLES = {"p14-unified-4k": "unified", "p15-L0-efa-4k-c1": "efa", "p16-tcp-20k-c4": "tcp"}  # the seed README's


def test_the_seed_readme_plan_validates() -> None:
    plan = load_plan(SEED_PLAN)
    assert plan.phase_name == "phase16"
    assert [lay.id for lay in plan.layers] == ["L0"]
    assert list(plan.patterns) == ["p16-unified-4k-c1"]


@pytest.mark.parametrize(("pid", "backend"), SEED_EXAMPLES.items())
def test_the_seed_naming_examples_load_and_keep_their_case(tmp_path: Path, pid: str, backend: str) -> None:
    phase = int(pid.split("-")[0][1:])
    doc = copy.deepcopy(json.loads(SEED_PLAN.read_text()))
    doc["phase"] = phase
    pattern = doc["layers"][0]["patterns"][0]
    pattern.update(id=pid, backend=backend)
    path = tmp_path / f"phase{phase}.json"
    path.write_text(json.dumps(doc))
    plan = load_plan(path)
    assert list(plan.patterns) == [pid]
    layout = PhaseLayout.of(plan.phase_name)
    assert layout.result(pid).name == f"{pid}.json"
    assert layout.task(pid, plan.pattern(pid).roles[0]).parent.name == pid
    assert phase_key(plan.phase_name, "tasks", pid, "unified.json") == f"phase{phase}/tasks/{pid}/unified.json"


def test_the_node_runner_accepts_upper_case_ids_and_refuses_a_trailing_newline(tmp_path: Path) -> None:
    from test_twins import node_module

    runner = node_module("remote/task_runner.py")
    assert runner.run_dir_for(tmp_path, "p15-L0-efa-4k-c1") == tmp_path / "runs" / "p15-L0-efa-4k-c1"
    for bad in ("p15-L0-efa\n", "p15/../x", "-p15"):
        with pytest.raises(runner.StepError):
            runner.run_dir_for(tmp_path, bad)


@pytest.fixture(scope="module")
def seed_project(tmp_path_factory: pytest.TempPathFactory):
    project = make_project(tmp_path_factory.mktemp("seed") / "proj")
    shutil.copy(SEED_PLAN, project.root / "plans" / "phase16.json")
    return project


def test_the_seed_readme_plan_dry_runs(seed_project) -> None:
    jobs = seed_project.dry_run_jobs("results/phase16/L0.done")
    assert {j["pattern"] for j in jobs["run_trial"]} == {"p16-unified-4k-c1"}
    assert not (seed_project.root / "results").exists()


def test_upper_case_ids_are_snakemake_wildcards_as_spelled(seed_project) -> None:
    jobs = seed_project.dry_run_jobs("results/phase15/L0.done")
    assert {j["pattern"] for j in jobs["run_trial"]} == {"p15-L0-unified-4k-c1", "p15-L0-tcp-4k-c1", "p15-L0-efa-4k-c1"}
    one = seed_project.dry_run_jobs("results/phase15/runs/p15-L0-efa-4k-c1.json")
    assert {j["pattern"] for j in one["fold_trials"]} == {"p15-L0-efa-4k-c1"}
    assert not (seed_project.root / "results").exists()


def test_the_seed_naming_examples_run_locally(tmp_path: Path) -> None:
    """Each seed example id, in a plan of its own phase, measured by the stand-in end to end:
    the result, its trial and its logs keep the id exactly as spelled."""
    project = make_project(tmp_path / "proj")
    targets = []
    for pid, backend in SEED_EXAMPLES.items():
        phase = int(pid.split("-")[0][1:])
        doc = copy.deepcopy(json.loads(SEED_PLAN.read_text()))
        doc["phase"] = phase
        doc["common_settings"].update(warmup_iterations=2, measurement_iterations=6)
        doc["layers"][0]["patterns"] = [{"id": pid, "backend": backend, "prompt_tokens": 1000, "concurrency": 2}]
        project.write_plan(f"phase{phase}", doc)
        targets.append(f"results/phase{phase}/L0.done")
    out = project.snakemake(*targets)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for pid, backend in SEED_EXAMPLES.items():
        layout = PhaseLayout.of(f"phase{int(pid.split('-')[0][1:])}", project.root / "results")
        result = json.loads(layout.result(pid).read_text())
        assert (result["pattern_id"], result["description"]["backend"], result["completed"]) == (pid, backend, 6)
        assert result["validity"]["valid"], result["validity"]
        assert layout.trial(pid, 1).is_file() and layout.trial_logs(pid, 1).is_dir()
