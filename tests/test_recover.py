"""kill -9 of the whole pipeline mid-measurement (what a reboot or the OOM killer does).

Nothing of ours runs any cleanup: Snakemake and the control job die at once, the servers
on the nodes live on in their own process groups. The next run must refuse to start and
say what is left and the one command that cleans it up; that command stops every orphan,
clears Snakemake's stale state, and the run after it completes without re-measuring
anything that had finished.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
from moto_ssm import REGION, node_env, use_fake_ssm_nodes
from test_ssm import aws_env, moto_endpoint, online_node  # noqa: F401 - fixtures and helpers

from disagglab.guard import leftovers, phaselock, snakestate
from disagglab.guard import startup as guard
from disagglab.hashing import sha256_file
from disagglab.run import ledger as runledger

from conftest import SNAKEMAKE, Project, alive_groups, ledger_entries, make_project
from fake_ssm_agent import FakeAgent

KILLED = "p14-tcp-1k-c1"
FINISHED = "p14-unified-1k-c1"
TARGET = f"results/phase14/runs/{KILLED}.json"
TRIAL = f"results/phase14/trials/{KILLED}/1.json"
DONE = f"results/phase14/runs/{FINISHED}.json"


def pattern_entries(root: Path, pattern: str) -> list[dict]:
    entries = []
    for ledger in (root / "results" / ".local" / "nodes").glob(f"*/*/runs/{pattern}/procs.json"):
        entries.extend(json.loads(ledger.read_text()))
    return entries


def set_time_scale(project: Project, scale: str) -> None:
    cfg = project.root / "config" / "config.yaml"
    text = cfg.read_text()
    for old in ("  time_scale: 0.05\n", "  time_scale: 1.0\n"):
        text = text.replace(old, f"  time_scale: {scale}\n")
    cfg.write_text(text)


def finished_files(project: Project) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of everything the finished pattern produced."""
    base = project.root / "results" / "phase14"
    files = [base / "runs" / f"{FINISHED}.json", base / "trials" / FINISHED / "1.json", base / "deploy" / f"{FINISHED}.json",
             *sorted((base / "tasks" / FINISHED).glob("*.json"))]
    return {str(f): (sha256_file(f), f.stat().st_mtime_ns) for f in files}


def test_sigkill_leaves_orphans_the_next_run_names_them_and_recover_cleans_up(project: Project) -> None:
    first = project.snakemake(DONE)
    assert first.returncode == 0, first.stderr[-3000:]
    before = finished_files(project)

    set_time_scale(project, "1.0")  # the benchmark is still running when the kill comes
    env = {k: v for k, v in os.environ.items() if k != "DISAGGLAB_CONFIG"}
    proc = subprocess.Popen([SNAKEMAKE, TARGET], cwd=project.root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "benchmark" not in {e["name"] for e in pattern_entries(project.root, KILLED)}:
            assert proc.poll() is None and time.monotonic() < deadline, "the benchmark never started"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake, its job shells and the control job: no cleanup runs
        proc.wait()
    set_time_scale(project, "0.05")

    orphans = alive_groups(pattern_entries(project.root, KILLED))
    assert {"producer", "consumer"} <= {e["name"] for e in orphans}, "servers live in their own process groups"
    assert list((project.root / ".snakemake" / "locks").glob("*.lock")), "Snakemake's lock is left behind"

    # The next run refuses before touching anything, naming every leftover and the command.
    refused = project.snakemake(TARGET)
    assert refused.returncode != 0
    msg = refused.stdout + refused.stderr
    assert "phase14: an earlier pipeline run was killed and left things behind (Snakemake pid" in msg, msg[-3000:]
    assert f"- {KILLED} (started" in msg
    producer = next(e for e in orphans if e["name"] == "producer")
    consumer = next(e for e in orphans if e["name"] == "consumer")
    assert f"orphaned on node1: producer pid {producer['pid']}" in msg
    assert f"consumer pid {consumer['pid']}" in msg
    assert "a stale Snakemake lock: .snakemake/locks/" in msg
    assert f"incomplete outputs: {TRIAL}" in msg
    assert "-m disagglab recover phase14" in msg
    assert "LockException" not in msg and "IncompleteFilesException" not in msg
    assert alive_groups(pattern_entries(project.root, KILLED)) == orphans, "a refused run stops nothing"

    # A dry run and `status` show it too, and change nothing.
    dry = project.snakemake("-n", TARGET)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "WARNING: phase14: an earlier pipeline run was killed" in dry.stderr and "recover phase14" in dry.stderr
    status = project.cli("status", "phase14")
    assert "phase14: orphaned run from " in status and "-m disagglab recover phase14`" in status, status
    line = next(ln for ln in status.splitlines() if ln.strip().startswith(KILLED))
    assert " incomplete " in line and "cut short when its run was killed" in line, line

    # One command cleans up, and says what it did.
    out = project.cli("recover", "phase14")
    assert f"{KILLED}: node1: stopped producer (pid {producer['pid']}, SIGTERM)" in out, out
    assert "removed the stale Snakemake lock" in out and f"removed the incomplete marker of {TRIAL}" in out
    assert alive_groups(ledger_entries(project.root)) == [], out
    assert not list((project.root / ".snakemake" / "locks").glob("*.lock"))
    assert not list((project.root / ".snakemake" / "incomplete").rglob("*"))
    assert not list((project.root / "results" / "phase14").rglob(".ledger/*.json"))
    record = json.loads((project.root / f"results/phase14/failures/{KILLED}.json").read_text())
    assert record["step"] == "bench" and record["node"] == "node2" and "was killed" in record["cause"], record
    assert project.cli("recover", "phase14").strip() == "phase14: nothing to recover (no killed run left anything behind)"
    status = project.cli("status", "phase14")
    assert "orphaned" not in status and "failed" in next(ln for ln in status.splitlines() if ln.strip().startswith(KILLED))

    # The next run completes; what had finished is neither re-measured nor rewritten.
    rerun = project.snakemake(TARGET, DONE)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((project.root / TARGET).read_text())["completed"] == 30
    assert finished_files(project) == before
    assert not (project.root / f"results/phase14/failures/{KILLED}.json").exists()
    assert alive_groups(ledger_entries(project.root)) == []


def test_recover_keeps_lock_files_of_a_live_run_and_decodes_every_incomplete_marker(tmp_path: Path) -> None:
    """Only lock files of dead runs go: one that also locks a phase held by a live run stays."""
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/phase14/runs/a.json\nresults/phase14/L0.done\n")
    (locks / "1.output.lock").write_text("results/phase14/report.html\nresults/phase15/runs/b.json\n")
    (locks / "2.input.lock").write_text("results/phase16/tasks/c/unified.json\n")
    phaselock.acquire(tmp_path / "results" / "phase15", "phase15", "test", ["pytest"])  # phase15 is live (this process)
    try:
        assert sorted(p.name for p in leftovers.stale_locks("phase14", tmp_path)) == ["0.output.lock"]
    finally:
        phaselock.release(tmp_path / "results" / "phase15")
    assert sorted(p.name for p in leftovers.stale_locks("phase14", tmp_path)) == ["0.output.lock", "1.output.lock"]

    # Snakemake names a marker by the urlsafe base64 of the path, split into @-folders past 255 chars.
    long_path = "results/phase14/runs/" + "p14-" + "x" * 300 + ".json"
    inc = tmp_path / ".snakemake" / "incomplete"
    encoded = base64.urlsafe_b64encode(long_path.encode()).decode()
    marker = inc / ("@" + encoded[:254]) / encoded[254:]
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    short = inc / base64.urlsafe_b64encode(b"results/phase15/runs/b.json").decode()
    short.write_text("{}")
    assert snakestate.phase_incomplete(tmp_path, "phase14") == {marker: long_path}
    snakestate.remove_marker(marker, inc)
    assert sorted(p.name for p in inc.iterdir()) == [short.name]


def test_sigkill_on_ssm_nodes_recover_stops_the_orphans_through_the_ssm_stop_step(aws_env, seaweed, tmp_path: Path) -> None:  # noqa: F811
    """The same kill -9 with executor: ssm (moto + a fake agent running each command for real):
    the refusal names the instances, and `recover` stops the servers with SSM `stop` commands."""
    proj = make_project(tmp_path / "proj", time_scale=1.0)
    ids = [online_node("node1").instance_id, online_node("node2").instance_id]
    use_fake_ssm_nodes(proj, tmp_path / "noderoot")
    bucket = seaweed.create_bucket(f"ssm-kill-{uuid.uuid4().hex[:6]}")
    env = {**os.environ, **aws_env, "SCRIPTS_BUCKET": bucket, "NODE1_ID": ids[0], "NODE2_ID": ids[1],
           "NODE1_PRIVATE": "127.0.0.1", "NODE2_PRIVATE": "127.0.0.1"}
    env.pop("DISAGGLAB_CONFIG", None)
    s3 = boto3.client("s3", endpoint_url=seaweed.endpoint, region_name=REGION)

    def node_procs() -> list[dict]:
        return [e for f in (tmp_path / "noderoot").glob(f"*/phase14/runs/{KILLED}/procs.json") for e in json.loads(f.read_text())]

    with FakeAgent(REGION, s3, node_env(aws_env)):
        proc = subprocess.Popen([SNAKEMAKE, TARGET], cwd=proj.root, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while "benchmark" not in {e["name"] for e in node_procs()}:
                assert proc.poll() is None and time.monotonic() < deadline, "the benchmark never started"
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert {"producer", "consumer"} <= {e["name"] for e in alive_groups(node_procs())}

        refused = proj.snakemake(TARGET, env=env)
        msg = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert f"its servers may still run on node1 ({ids[0]}), node2 ({ids[1]})" in msg, msg[-3000:]
        assert "-m disagglab recover phase14" in msg

        out = subprocess.run([sys.executable, "-m", "disagglab", "recover", "phase14"], cwd=proj.root, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"{KILLED}: node1: stopped producer" in out.stdout, out.stdout
        deadline = time.monotonic() + 30  # the cut-short bench command ends once its benchmark is stopped
        while alive_groups(node_procs()) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert alive_groups(node_procs()) == [], out.stdout
    assert not list((proj.root / "results" / "phase14" / ".ledger").glob("*.json"))
    assert not list((proj.root / ".snakemake" / "locks").glob("*.lock"))


def test_the_guard_reads_snakemakes_own_command_line() -> None:
    """Parse time knows neither targets nor -n: the command line is read with Snakemake's parser."""
    sm = "/x/.venv/bin/snakemake"
    run = guard.snakemake_args([sm, "results/phase14/L0.done", "results/compare/phase14_vs_phase15.html", "--cores", "2"])
    assert guard.runs_jobs(run) and guard.target_phases(run.targets) == ["phase14"]  # compare only reads phases
    for no_jobs in (["-np", "results/phase14/L0.done"], ["--dry-run", "results/phase14/L0.done"],
                    ["results/phase14/all.done", "--summary", "--nolock"], ["--unlock"]):
        assert not guard.runs_jobs(guard.snakemake_args([sm, *no_jobs])), no_jobs
    assert guard.snakemake_args(["/usr/bin/pytest", "-q"]) is None  # not the Snakemake CLI: never lock
    assert guard.target_phases(["/abs/proj/results/phase15/runs/p15-x.json", "results/phase14/logs/a.log"]) == ["phase14", "phase15"]


PARENT = """
import os, subprocess, sys, time
from disagglab.run import ledger as runledger
os.environ[runledger.OWNER_ENV] = runledger.identity_text(runledger.identity())
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print(child.pid, flush=True)
time.sleep(600)
"""
CHILD = """
import signal, sys, time
from pathlib import Path
from disagglab.run import ledger as runledger
def on_term(signum, frame):
    Path(sys.argv[1]).write_text("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
assert runledger.stop_when_orphaned(poll_s=0.05)
Path(sys.argv[1] + ".ready").touch()
time.sleep(60)
"""


def test_a_control_job_whose_snakemake_is_killed_interrupts_itself(tmp_path: Path) -> None:
    """`kill -9 <snakemake pid>` alone: the control job notices and stops (its servers with it)."""
    mark = tmp_path / "child-got"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(mark)], stdout=subprocess.PIPE, text=True, env=env)
    child_pid = int(parent.stdout.readline())
    child_start = runledger.proc_starttime(child_pid)
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{mark}.ready").exists():
            assert time.monotonic() < deadline, "the child never started its watch"
            time.sleep(0.02)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mark.read_text() == "SIGTERM"
    finally:
        if runledger.alive(child_pid, child_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)
        parent.stdout.close()
