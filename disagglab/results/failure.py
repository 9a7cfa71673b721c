"""The one failure record: what a failed trial, deploy or killed run leaves in failures/<pattern>.json.

Status, the report, MLflow and the rerun logic read these records, so the deploy step, a trial
and `recover` all build them here, with the same keys and the same message form.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from disagglab.errors import Interrupted, StepFailed
from disagglab.hashing import atomic_write_json
from disagglab.results.outcome import TrialOutcome

SCHEMA_VERSION = 1


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def failure_record(phase: str, layer: str | None, pattern_id: str, engine: str | None, step: str, node: str, cause: str, *,
                   exit_status: int | None = None, log_tail: list[str] | None = None, trial: tuple[int, int] | None = None,
                   run_id: str | None = None, started: float | None = None, finished: float | None = None,
                   logs: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """`trial` is (k, repeats) for a trial's record; a deploy is not a trial and records neither."""
    label = f" (trial {trial[0]} of {trial[1]})" if trial and trial[1] > 1 else ""
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "phase": phase, "layer": layer, "pattern_id": pattern_id}
    if trial is not None:
        record.update(trial=trial[0], repeats=trial[1])
    record.update({
        "engine": engine, "step": step, "node": node, "cause": cause, "exit_status": exit_status, "log_tail": list(log_tail or []),
        "message": f"{pattern_id}{label}: step '{step}' on {node} failed: {cause}",
        "run_id": run_id, "started_at": iso(started), "finished_at": iso(finished), "logs": logs or {},
    })
    return record


def trial_failure(outcome: TrialOutcome) -> dict[str, Any]:
    """The record of a trial that ended in `outcome.error`, naming the step and node it cut short."""
    error = outcome.error
    assert error is not None
    if isinstance(error, StepFailed):
        step, node, cause, status, tail = error.step, error.node, error.cause, error.exit_status, error.log_tail
    elif isinstance(error, Interrupted):
        step, node = outcome.at
        cause, status, tail = f"interrupted by {error} during step '{step}' on {node}", None, []
    else:  # an API or control-side error: say which step and node it interrupted
        step, node = outcome.at
        cause, status, tail = f"{type(error).__name__}: {error}", None, []
    pattern = outcome.pattern
    return failure_record(
        outcome.phase, pattern.layer, pattern.id, outcome.cfg["engine"], step, node, cause, exit_status=status,
        log_tail=tail or outcome.log_lines[-20:],  # e.g. a command that never reached the node
        trial=(outcome.trial, pattern.repeats), run_id=outcome.run_id, started=outcome.started, finished=outcome.finished,
        logs={n: sorted(str(p) for p in files.values()) for n, files in outcome.collected.items()})


def write_failure(path: Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, record)
