"""MLflow tracking of finished patterns: one experiment per phase, one run per result file.

The result JSONs stay the source of truth; MLflow is a view on them for people who compare
runs in a UI. So logging is an idempotent upsert keyed by (pattern_id, sha256 of the result
bytes): the same bytes never make a second run, new bytes make one new run and mark the
older ones superseded. Nothing is ever deleted.

SQLite is MLflow 3's default store, and its first use runs alembic migrations that are not
safe to run from several processes at once (several crash with "table _alembic_tmp_...
already exists"). Every access here therefore holds an exclusive flock on `<db>.lock`,
which also serialises the search-then-create upsert so that concurrent callers never
create duplicate runs. `import mlflow` costs about a second, so it happens only inside the
functions, never when Snakemake imports the package to build the DAG.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from disagglab.hashing import sha256_bytes
from disagglab.paths import PhaseLayout
from disagglab.report.answer import annotate
from disagglab.report.cost import COST_KEY, price_table
from disagglab.report.rows import Row, collect_rows
from disagglab.results.read import CorruptResult, latest_acceptance_note, read_result, result_problem

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from disagglab.plan.model import Plan

DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlruns"
# MLflow accepts longer values (6000), but 500 keeps params readable in the UI and portable to
# older servers and other backends that still enforce 500.
MAX_PARAM_CHARS = 500
# Numeric top-level keys of a result that echo settings rather than measure anything: they
# are already params (from the spec), and as metrics they would only clutter comparisons.
NOT_METRICS = frozenset({
    "schema_version", "seed", "concurrency", "max_concurrency", "requested_concurrency", "warmup_concurrency",
    "warmup_requests", "num_prompts", "max_tokens", "prompt_tokens", "request_rate", "burstiness", "request_timeout_s",
})
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# Run lifecycle, as the `status` tag: a run is "incomplete" until all its data is logged, so a
# crash halfway leaves a run that the next call completes instead of counting as done.
CURRENT, SUPERSEDED, INCOMPLETE = "current", "superseded", "incomplete"


def tracking_uri(results_root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute sqlite URI for `<results_root>/mlflow.db`.

    results_root is the `results` folder. The path is made absolute because a relative
    sqlite URI resolves against the cwd, and Snakemake jobs do not all share one.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(Path(results_root).resolve() / DB_NAME)}"


def experiment_name(phase: str) -> str:
    """The experiment holding one phase's runs, e.g. `disagglab-phase14`."""
    return f"disagglab-{phase}"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def _lock_path(uri: str) -> Path:
    """`<db>.lock` beside a sqlite DB; for other stores a per-URI file in the temp folder."""
    db = _sqlite_path(uri)
    if db is not None:
        return db.with_name(db.name + ".lock")
    return Path(tempfile.gettempdir()) / f"disagglab-mlflow-{sha256_bytes(uri.encode())[:16]}.lock"


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Exclusive flock for the store. The lock file is never removed: unlinking races."""
    path = _lock_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mlflow() -> Any:
    """Import mlflow with telemetry off (set before the import; it reads the variable early)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow

    return mlflow


def _init_locked(uri: str) -> None:
    """Create or migrate a SQL store; the caller holds the store lock.

    Uses the same helpers as `mlflow db upgrade`: a DB left behind by an older MLflow would
    otherwise make every later call fail with "out-of-date database schema".
    """
    if uri.split(":", 1)[0].split("+", 1)[0] not in SQL_SCHEMES:
        return  # a tracking server or file store manages its own schema
    _mlflow()
    from mlflow.store.db import utils as db

    engine = db.create_sqlalchemy_engine_with_retry(uri)
    try:
        if not db._all_tables_exist(engine):
            db._initialize_tables(engine)
        elif db._get_schema_version(engine) != db._get_latest_schema_revision():
            db._upgrade_db(engine)
    finally:
        engine.dispose()


def init_store(uri: str) -> None:
    """Create/migrate the tracking DB once, under the store lock. Idempotent and concurrency-safe."""
    with _store_lock(uri):
        _init_locked(uri)


def _param_value(value: Any) -> str:
    """A param string: strings as-is, everything else as JSON; long values cut to 500 chars.

    The cut keeps a hash of the full value, so two long values that differ only past the
    cut still compare as different.
    """
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if len(text) <= MAX_PARAM_CHARS:
        return text
    suffix = f"...[sha256:{hashlib.sha256(text.encode()).hexdigest()[:12]}]"
    return text[: MAX_PARAM_CHARS - len(suffix)] + suffix


def spec_params(spec: dict[str, Any]) -> dict[str, str]:
    """The effective spec flattened with dotted keys; `infrastructure.*` becomes `infra.*`."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
        else:
            out[prefix] = _param_value(value)

    for key in sorted(spec):
        walk("infra" if key == "infrastructure" else key, spec[key])
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Every numeric top-level measurement, the KV-transfer counts and output throughput per GPU.

    Nulls (e.g. request_goodput without an SLO) are left out rather than logged as 0.
    """
    out = {k: float(v) for k, v in result.items() if _number(v) and k not in NOT_METRICS}
    kv = result.get("kv_transfer") or {}
    for key in ("transfers", "failed_transfers"):
        if _number(kv.get(key)):
            out[f"kv_transfer.{key}"] = float(kv[key])
    gpus = (result.get("description") or {}).get("gpus_used")
    if "output_throughput" in out and _number(gpus) and gpus > 0:
        out["output_throughput_per_gpu"] = out["output_throughput"] / gpus
    # Repeated trials: the spread and the 95% t-interval of each headline mean (trials.py).
    for key, st in sorted((result.get("stats") or {}).items()):
        for name, field in (("std", "std"), ("cv", "cv"), ("ci95_low", "ci_low"), ("ci95_high", "ci_high")):
            if isinstance(st, dict) and _number(st.get(field)):
                out[f"{key}.{name}"] = float(st[field])
    return out


def _millis(iso: Any) -> int | None:
    try:
        return int(datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)  # never delete, and never fail on a UI deletion
    return exp.experiment_id


def _runs_by_pattern(client: MlflowClient, experiment_id: str) -> dict[str, list[Run]]:
    """All active runs of the experiment grouped by their pattern_id tag, oldest first."""
    runs: dict[str, list[Run]] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token, order_by=["attributes.start_time ASC"])
        for run in page:
            pid = run.data.tags.get("pattern_id")
            if pid:
                runs.setdefault(pid, []).append(run)
        token = page.token
        if not token:
            return runs


def _log_run(client: MlflowClient, run_id: str, result: dict[str, Any], data: bytes, pid: str, logs: Path) -> None:
    """Params, metrics and artifacts into a run; safe to repeat on an incomplete run."""
    from mlflow.entities import Metric, Param

    now = _millis(result.get("finished_at")) or int(time.time() * 1000)
    params = [Param(k, v) for k, v in spec_params(result.get("spec") or {}).items()]
    metrics = [Metric(k, v, now, 0) for k, v in sorted(result_metrics(result).items())]
    for i in range(0, max(len(params), 1), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=params[i:i + 100], metrics=metrics if i == 0 else [])
    with tempfile.TemporaryDirectory() as tmp:
        # The bytes that were hashed, not the file again: it may be rewritten meanwhile.
        copy = Path(tmp) / f"{pid}.json"
        copy.write_bytes(data)
        client.log_artifact(run_id, str(copy))
    if logs.is_dir():
        client.log_artifacts(run_id, str(logs), artifact_path="logs")
    client.set_terminated(run_id, "FINISHED", end_time=_millis(result.get("finished_at")))
    client.set_tag(run_id, "status", CURRENT)


def _new_run_tags(plan: Plan, pid: str, result: dict[str, Any], sha: str, git_revision: str | None) -> dict[str, str]:
    """The tags a run is created with: what it measured, where it stands, which result bytes it holds."""
    description = result.get("description") or {}
    tags = {
        "pattern_id": pid, "phase": str(result.get("phase", plan.phase_name)),
        "layer": str(result.get("layer", plan.patterns[pid].layer)),
        "backend": str(description.get("backend", plan.patterns[pid].backend)),
        "engine": str(result.get("engine")), "simulated": "true" if result.get("simulated") else "false",
        "validity": "valid" if (result.get("validity") or {}).get("valid") else "invalid",
        "result_sha256": sha, "git_revision": git_revision or "unknown", "status": INCOMPLETE,
    }
    accepted = latest_acceptance_note(result)
    if accepted:  # measured under older digests, accepted as current by `disagglab accept`
        tags["accepted"] = accepted[:5000]
    reasons = (result.get("validity") or {}).get("reasons")
    if reasons:
        tags["validity_reasons"] = "; ".join(map(str, reasons))[:5000]
    return tags


def _answer_tags(row: Row) -> dict[str, str]:
    """The answer section's verdict on one pattern, as tags: its workload, whether it is the one to deploy, its rank."""
    tags = {"workload": str(row.get("workload") or ""), "recommended": "true" if row.get("recommended") else "false"}
    if row.get("recommendation_rank"):
        tags["recommendation_rank"] = str(row["recommendation_rank"])
    return tags


def _mark_answer(client: MlflowClient, runs: dict[str, str], existing: dict[str, list[Run]], rows: list[Row]) -> list[str]:
    """Tag every current run with the answer (recommended=true on one run per workload and SLO) and log its cost.

    Only what differs is written, so a rebuilt report adds nothing. Runs that are no longer
    current (superseded, or their result is gone) lose a recommendation they once had.
    Returns the recommended pattern ids.
    """
    from mlflow.entities import Metric

    by_id = {r["pattern_id"]: r for r in rows}
    for pid, run_id in runs.items():
        data = client.get_run(run_id).data
        want = _answer_tags(by_id[pid]) if pid in by_id else {"recommended": "false"}
        for key, value in want.items():
            if data.tags.get(key) != value:
                client.set_tag(run_id, key, value)
        if "recommendation_rank" in data.tags and "recommendation_rank" not in want:
            client.delete_tag(run_id, "recommendation_rank")
        cost = by_id.get(pid, {}).get(COST_KEY)
        if cost is not None and data.metrics.get(COST_KEY) != cost:
            client.log_batch(run_id, metrics=[Metric(COST_KEY, float(cost), int(time.time() * 1000), 0)])
    current = set(runs.values())
    for old in (r for rs in existing.values() for r in rs):
        if old.info.run_id not in current and old.data.tags.get("recommended") == "true":
            client.set_tag(old.info.run_id, "recommended", "false")
    return [pid for pid in runs if by_id.get(pid, {}).get("recommended")]


def log_phase(plan: Plan, results_dir: Path, uri: str, git_revision: str | None,
              prices: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Log every pattern of the plan that has a result in `results_dir` (= results/<phase>).

    Returns {"experiment_id", "created": [pattern ids], "unchanged": [pattern ids],
    "superseded": [old run ids], "reinstated": [pattern ids whose bytes went back to an
    older run, which is made current again], "runs": {pattern id: current run id},
    "recommended": [pattern ids tagged recommended=true]}. prices: instance type -> USD per
    hour for the cost metric (default: the configuration's).
    """
    results_dir = Path(results_dir)
    rows = collect_rows(plan, results_dir)
    annotate(rows, plan.infrastructure, price_table(prices))
    layout = PhaseLayout(results_dir)
    found = {pid: layout.result(pid) for pid in plan.patterns}
    found = {pid: path for pid, path in found.items() if path.is_file()}
    summary: dict[str, Any] = {"created": [], "unchanged": [], "superseded": [], "reinstated": [], "runs": {}, "corrupt": {}}
    mlflow = _mlflow()
    with _store_lock(uri):
        _init_locked(uri)
        client = mlflow.MlflowClient(tracking_uri=uri)
        name = experiment_name(plan.phase_name)
        db = _sqlite_path(uri)
        # Beside the DB (results/mlruns/<experiment>/<run id>/artifacts), absolute; a tracking
        # server (no sqlite path) keeps its own artifact root.
        artifacts = (db.parent / ARTIFACT_DIR / name).as_uri() if db else None
        summary["experiment_id"] = _experiment(client, name, artifacts)
        existing = _runs_by_pattern(client, summary["experiment_id"])
        for pid in plan.patterns:
            if pid not in found and PhaseLayout(results_dir).corrupt_result(pid).exists():
                moved = PhaseLayout(results_dir).corrupt_result(pid)
                summary["corrupt"][pid] = f"{layout.result(pid)}: {result_problem(moved, pid)} (moved to {moved})"
        for pid, path in found.items():
            data = path.read_bytes()
            sha = sha256_bytes(data)
            try:
                result = read_result(path, pid)
            except CorruptResult as exc:  # never logged; listed, and the next run measures it again
                summary["corrupt"][pid] = str(exc)
                print(f"MLflow: skipped corrupt result {exc}", file=sys.stderr)
                continue
            runs = existing.get(pid, [])
            same = [r for r in runs if r.data.tags.get("result_sha256") == sha]
            keep = next((r for r in same if r.data.tags.get("status") == CURRENT), same[0] if same else None)
            if keep is None or keep.data.tags.get("status") == INCOMPLETE:
                if keep is None:
                    keep = client.create_run(summary["experiment_id"], start_time=_millis(result.get("started_at")),
                                             tags=_new_run_tags(plan, pid, result, sha, git_revision), run_name=pid)
                _log_run(client, keep.info.run_id, result, data, pid, layout.logs(pid))
                summary["created"].append(pid)
            elif keep.data.tags.get("status") == SUPERSEDED:
                client.set_tag(keep.info.run_id, "status", CURRENT)
                client.delete_tag(keep.info.run_id, "superseded_by")
                summary["reinstated"].append(pid)
            else:
                summary["unchanged"].append(pid)
            new_id = keep.info.run_id
            summary["runs"][pid] = new_id
            for old in runs:
                if old.info.run_id != new_id and old.data.tags.get("status") != SUPERSEDED:
                    client.set_tag(old.info.run_id, "status", SUPERSEDED)
                    client.set_tag(old.info.run_id, "superseded_by", new_id)
                    summary["superseded"].append(old.info.run_id)
        summary["recommended"] = _mark_answer(client, summary["runs"], existing, rows)
    return summary
