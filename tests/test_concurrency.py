"""Two pipeline runs at once in one project folder.

On the same phase the second is refused at once, naming the phase and the run that holds
it (and so is `recover`, which never touches a live run); on different phases both run side by side and complete (their DAGs share no output:
the store keys, node folders and results are per phase); and MLflow logging from several
processes at once into the one sqlite store leaves every run exactly once and the store
intact.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, SNAKEMAKE, Project, alive_groups, ledger_entries

SLOW = "results/phase14/runs/p14-unified-4k-c1.json"
SAME_PHASE = "results/phase14/runs/p14-unified-1k-c1.json"
OTHER_PHASE = "results/phase15/runs/p15-L0-unified-4k-c1.json"

TRACK = """
import json, sys, time
from pathlib import Path
from disagglab.report import tracking
from disagglab.plan.model import load_plan
plan_path, results, uri, barrier, me = sys.argv[1:]
plan = load_plan(Path(plan_path))
tracking._mlflow()
Path(barrier, "ready-" + me).touch()
while not Path(barrier, "go").exists():
    time.sleep(0.001)
print(json.dumps(tracking.log_phase(plan, Path(results), uri, "rev-" + me)))
"""


def test_same_phase_is_refused_other_phases_run_side_by_side_and_mlflow_stays_intact(project: Project) -> None:
    # The first run measures with real timing (a few seconds), so it is still running below.
    (project.root / "config" / "slow.yaml").write_text("sim:\n  time_scale: 0.5\n")
    env = {k: v for k, v in os.environ.items() if k != "DISAGGLAB_CONFIG"}
    first = subprocess.Popen([SNAKEMAKE, SLOW, "--configfile", "config/slow.yaml"], cwd=project.root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list((project.root / "results" / "phase14" / ".ledger").glob("*.json")):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never started its servers"
            time.sleep(0.05)
        other = subprocess.Popen([SNAKEMAKE, OTHER_PHASE], cwd=project.root, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        second = project.snakemake(SAME_PHASE)
        recover = subprocess.run([sys.executable, "-m", "disagglab", "recover", "phase14"], cwd=project.root, env=env,
                                 capture_output=True, text=True, timeout=60, check=False)
        live_locks = sorted((project.root / ".snakemake" / "locks").glob("*.lock"))
        assert first.poll() is None, "the first run must still be running for this test to mean anything"
        other_out, _ = other.communicate(timeout=300)
        first_out, _ = first.communicate(timeout=300)
    finally:
        for p in (first, locals().get("other")):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    assert second.returncode != 0
    msg = second.stdout + second.stderr
    assert f"phase14 is locked by another pipeline run: Snakemake pid {first.pid}, started " in msg, msg[-3000:]
    assert f"`snakemake {SLOW} --configfile config/slow.yaml`" in msg
    assert "Only one run per phase at a time" in msg and "LockException" not in msg
    assert not (project.root / SAME_PHASE).exists()
    assert recover.returncode == 2, recover.stdout + recover.stderr
    assert f"phase14 is locked by another pipeline run: Snakemake pid {first.pid}" in recover.stderr
    assert "it never touches a live run" in recover.stderr
    assert live_locks, "recover left the live run's Snakemake lock alone"

    assert first.returncode == 0, first_out[-3000:]
    assert other.returncode == 0, other_out[-3000:]
    # Side by side: phase15's run was started while phase14's held its lock (first.poll() above)
    # and was neither refused nor made to wait for it. Whether its measurement began before
    # phase14's ended depends on machine load, so it is not asserted (it failed a CI run at 4
    # workers on 2 cores, 4 s apart).
    assert "locked by another pipeline run" not in other_out, other_out[-3000:]
    assert json.loads((project.root / OTHER_PHASE).read_text())["completed"] > 0
    assert alive_groups(ledger_entries(project.root)) == []
    assert not list((project.root / ".snakemake" / "locks").glob("*.lock"))
    assert all((project.root / ".snakemake" / "disagglab-locks" / f"{ph}.lock").read_text() == "" for ph in ("phase14", "phase15"))

    # MLflow: four processes released at once, two per phase, one sqlite store.
    results = project.root / "results"
    uri = f"sqlite:///{results / 'mlflow.db'}"
    barrier = project.root / "barrier"
    barrier.mkdir()
    jobs = [("phase14", 0), ("phase15", 1), ("phase14", 2), ("phase15", 3)]
    procs = [subprocess.Popen([sys.executable, "-c", TRACK, str(project.root / "plans" / f"{ph}.json"), str(results / ph), uri, str(barrier), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, "PYTHONPATH": str(ROOT)})
             for ph, i in jobs]
    deadline = time.monotonic() + 120
    while len(list(barrier.glob("ready-*"))) < len(procs) and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    (barrier / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(err[-3000:] for _, err in outs)
    created = sorted(pid for out, _ in outs for pid in json.loads(out.strip().splitlines()[-1])["created"])
    assert created == ["p14-unified-4k-c1", "p15-L0-unified-4k-c1"], created  # each logged once, by one process

    with sqlite3.connect(results / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    for phase, pid in (("phase14", "p14-unified-4k-c1"), ("phase15", "p15-L0-unified-4k-c1")):
        exp = client.get_experiment_by_name(f"disagglab-{phase}")
        runs = client.search_runs([exp.experiment_id])
        assert [r.data.tags["pattern_id"] for r in runs] == [pid]
        assert runs[0].data.tags["status"] == "current" and runs[0].data.metrics["completed"] == 30
    assert Path(results / "mlflow.db").stat().st_size > 0
