"""`disagglab accept`: finished results stay current through a node-side refactor, without re-measuring.

One real L0 run of phase14 (module scope), copied into other project folders: moved as it is,
after a node-file edit (accepted), and from the pipeline of the commit before the restructuring.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FINISHED_TARGET, ROOT, SNAKEMAKE, TEST_TIME_SCALE, Project, copy_state, make_project, parse_dry_run

PHASE = "phase14"
TARGET = f"results/{PHASE}/L0.done"
EDITED = "scripts/benchmark_common.py"
OLD_COMMIT = "99214f1"  # the last commit before the control side was restructured
NOTHING = "Nothing to be done"


def run_accept(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "disagglab", "accept", PHASE, *args], cwd=project.root, capture_output=True,
                          text=True, timeout=600, check=False)


def l0_patterns(project: Project) -> list[str]:
    layer = next(layer for layer in project.plan(PHASE)["layers"] if layer["id"] == "L0")
    return [p if isinstance(p, str) else p["id"] for p in layer["patterns"]]


def trial_files(root: Path) -> dict[str, dict]:
    files = sorted((root / "results" / PHASE / "trials").glob("*/*.json"))
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in files if p.stem.isdigit()}


def without_provenance(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "provenance"}


def git_commit(root: Path) -> str:
    """Make the project copy a checkout of its own: the revision accept must record."""
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A", "--", ":!results", ":!.snakemake"], ["commit", "-qm", "refactor"]):
        subprocess.run([*git, *args], capture_output=True, check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def dry_run(project: Project) -> str:
    out = project.snakemake("-n", TARGET)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def assert_accepted(after: dict[str, dict], before: dict[str, dict], shas: tuple[str, str], revision: str) -> None:
    """Each trial: measured data unchanged, measured digests kept, one entry naming old and new sha256 of EDITED."""
    old_sha, new_sha = shas
    assert after.keys() == before.keys() and after
    for name, doc in after.items():
        assert without_provenance(doc) == without_provenance(before[name]), f"{name}: measured data changed"
        prov = doc["provenance"]
        assert prov["node_files_sha256"][EDITED] == old_sha, f"{name}: the measured digests must stay"
        (entry,) = prov["accepted"]
        assert entry["old"]["node_files_sha256"][EDITED] == old_sha and entry["new"]["node_files_sha256"][EDITED] == new_sha
        assert entry["old"]["task_sha256"] == entry["new"]["task_sha256"] == prov["task_sha256"]
        assert entry["git_revision"] == revision and entry["by"] == "disagglab accept"


@pytest.fixture
def finished(finished_l0: Project) -> Project:
    """The session's finished phase14 L0: only read here, every test copies its state."""
    assert TARGET == FINISHED_TARGET
    return finished_l0


def test_moved_phase_is_not_remeasured(finished: Project, tmp_path: Path) -> None:
    moved = make_project(tmp_path / "moved")
    copy_state(finished.root, moved)
    text = dry_run(moved)
    assert NOTHING in text, text


def test_accept_after_node_file_edit(finished: Project, tmp_path: Path) -> None:
    project = make_project(tmp_path / "edited")
    copy_state(finished.root, project)
    node_file = project.root / EDITED
    from disagglab.hashing import sha256_file

    old_sha = sha256_file(node_file)
    node_file.write_text(node_file.read_text() + "# a comment: the refactor moved nothing that measures\n")
    new_sha = sha256_file(node_file)
    before = trial_files(project.root)
    assert len(before) >= len(l0_patterns(project))
    assert json.loads(project.cli("estimate", PHASE, "--json"))["layers"]["L0"]["trials_to_run"] == len(before)
    jobs = project.dry_run_jobs(TARGET)
    assert jobs.get("run_trial") and jobs.get("deploy_pattern"), jobs
    # Snakemake names the first reason: the deploy's params name the file, the trials follow their deploy.
    assert all(EDITED in job["reason"] for job in jobs["deploy_pattern"]), jobs["deploy_pattern"]
    assert all(EDITED in job["reason"] or job["reason"] == f"Input files updated by another job: results/{PHASE}/deploy/{job['pattern']}.json"
               for job in jobs["run_trial"]), jobs["run_trial"]

    refused = run_accept(project, "--pattern", "p14-unified-4k-c2")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "p14-unified-4k-c2" in refused.stderr and "missing" in refused.stderr, refused.stderr
    assert trial_files(project.root) == before  # a refusal changes nothing

    revision = git_commit(project.root)
    out = run_accept(project)
    assert out.returncode == 0, out.stdout + out.stderr
    assert NOTHING in dry_run(project)

    assert_accepted(trial_files(project.root), before, (old_sha, new_sha), revision)
    for pid in l0_patterns(project):
        result = project.result(PHASE, pid)
        assert result["provenance"]["accepted"][-1]["new"]["node_files_sha256"][EDITED] == new_sha, pid
        deployed = (project.root / "results" / PHASE / "deploy" / f"{pid}.json").read_text()
        assert new_sha in deployed and old_sha not in deployed, f"{pid}: deploy marker lists the old {EDITED}"

    # The estimate counts the accepted digests: nothing of L0 is left to measure.
    assert json.loads(project.cli("estimate", PHASE, "--json"))["layers"]["L0"]["trials_to_run"] == 0
    status = project.cli("status", PHASE)
    assert "accepted " in status and f"(node files changed: {EDITED})" in status, status
    assert "out-of-date" not in status, status

    again = run_accept(project)  # nothing new to accept: no second entry
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(len(d["provenance"]["accepted"]) == 1 for d in trial_files(project.root).values())

    # The fold step never measures: when a trial would still run, it stops before running anything.
    from disagglab.results.accept import AcceptFailed, rebuild_cheaply

    node_file.write_text(node_file.read_text() + "# a second edit, not accepted\n")
    kept = trial_files(project.root)
    with pytest.raises(AcceptFailed, match="run_trial"):
        rebuild_cheaply(project.root, [TARGET], None)
    assert trial_files(project.root) == kept


def test_results_of_the_old_checkout(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(f"git -C {ROOT} archive {OLD_COMMIT} | tar -x -C {old}", shell=True, capture_output=True, text=True, check=False)
    assert archive.returncode == 0, (f"`git archive {OLD_COMMIT}` failed: this test needs the history of the repository "
                                     f"(a full clone): {archive.stderr}")
    cfg = old / "config" / "config.yaml"
    assert "\nsim:\n" in cfg.read_text(), "the old config has no sim: section to scale"
    cfg.write_text(cfg.read_text().replace("\nsim:\n", f"\nsim:\n  time_scale: {TEST_TIME_SCALE}\n"))
    out = subprocess.run([SNAKEMAKE, TARGET], cwd=old, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout + out.stderr

    project = make_project(tmp_path / "new")
    copy_state(old, project)
    jobs = parse_dry_run(dry_run(project))
    reasons = [job.get("reason", "") for job in jobs.get("run_trial", [])]
    allowed = ("Params have changed", "Set of input files has changed", "Input files updated by another job")
    assert all(r and all(part.strip().startswith(allowed) for part in r.split(";")) for r in reasons), "\n".join(reasons)

    accepted = run_accept(project)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert NOTHING in dry_run(project)
    from disagglab.results.read import measured_under

    # Every trial counts as measured under what its deploy marker now lists; an entry says so
    # exactly when that differs from what really ran (the old checkout may run the same files).
    for name, doc in trial_files(project.root).items():
        deploy = json.loads((project.root / "results" / PHASE / "deploy" / f"{doc['pattern_id']}.json").read_text())
        deployed = {f["path"]: f["sha256"] for f in deploy["files"] if f["path"].startswith(("scripts/", "remote/"))}
        assert measured_under(doc)["node_files_sha256"] == deployed, name
        assert bool(doc["provenance"].get("accepted")) == (doc["provenance"]["node_files_sha256"] != deployed), name
