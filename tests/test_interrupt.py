"""Ctrl-C during a measurement: every server of the pattern stops, nothing is half-written,
and the next run completes the pattern."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import SNAKEMAKE, Project, alive_groups, ledger_entries

PATTERN = "p14-tcp-4k-c1"
TARGET = f"results/phase14/runs/{PATTERN}.json"


def _interrupt_mid_benchmark(project: Project, send) -> tuple[subprocess.Popen[bytes], str]:
    """Start the pattern with real timing, call send(proc) once its benchmark runs; wait for the end."""
    env = {k: v for k, v in os.environ.items() if k != "DISAGGLAB_CONFIG"}
    # Real timing (no time scale) so the benchmark is still running when the signal arrives.
    cfg = project.root / "config" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("  time_scale: 0.05\n", "  time_scale: 1.0\n"))
    proc = subprocess.Popen([SNAKEMAKE, TARGET], cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            names = {e["name"] for e in ledger_entries(project.root)}
            if "benchmark" in names:
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.1)
        else:
            raise AssertionError("the benchmark never started")
        time.sleep(1.0)
        send(proc)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    cfg.write_text(cfg.read_text().replace("  time_scale: 1.0\n", "  time_scale: 0.05\n"))
    return proc, out.decode()


def _assert_stopped_recorded_and_rerun_completes(project: Project, proc: subprocess.Popen[bytes], out: str, signame: str) -> None:
    assert proc.returncode != 0
    entries = ledger_entries(project.root)
    assert {"producer", "consumer", "proxy", "benchmark"} <= {e["name"] for e in entries}
    assert alive_groups(entries) == [], out[-3000:]
    assert not (project.root / TARGET).exists()
    assert not list((project.root / "results").rglob("*.tmp"))
    assert not list((project.root / "results" / "phase14" / ".ledger").glob("*.json")), "the stop steps ran: nothing to recover"
    record = json.loads((project.root / f"results/phase14/failures/{PATTERN}.json").read_text())
    assert record["step"] == "bench" and record["node"] == "node2", record
    assert record["cause"] == f"interrupted by {signame} during step 'bench' on node2"

    rerun = project.snakemake(TARGET)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((project.root / TARGET).read_text())["completed"] == 30
    assert alive_groups(ledger_entries(project.root)) == []


def test_sigint_to_snakemake_stops_the_pattern_and_a_rerun_completes(project: Project) -> None:
    proc, out = _interrupt_mid_benchmark(project, lambda p: os.killpg(p.pid, signal.SIGINT))  # what a terminal's Ctrl-C does
    _assert_stopped_recorded_and_rerun_completes(project, proc, out, "SIGINT")


def test_sigterm_to_snakemake_alone_stops_the_pattern_at_once_and_a_rerun_completes(project: Project) -> None:
    """`kill <snakemake pid>` (also what `timeout` and process supervisors send): Snakemake by
    itself would wait for the measurement to finish; it passes SIGTERM on to its jobs."""
    started = []

    def send(p: subprocess.Popen[bytes]) -> None:
        started.append(time.monotonic())
        os.kill(p.pid, signal.SIGTERM)

    proc, out = _interrupt_mid_benchmark(project, send)
    assert "Will exit after finishing currently running jobs" in out, out[-3000:]
    _assert_stopped_recorded_and_rerun_completes(project, proc, out, "SIGTERM")
