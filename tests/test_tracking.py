"""MLflow tracking on a real sqlite store, fed by real results of a real Snakemake run.

The session's finished phase14 L0 (fast stand-in) is the source; each test logs a private
copy of three of its results into its own store, so tests can rewrite results freely.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from disagglab.hashing import sha256_file
from disagglab.plan.config import load_config_file
from disagglab.plan.model import Plan, load_plan
from disagglab.report import tracking
from disagglab.report.cost import COST_KEY

from conftest import ROOT, Project

PATTERNS = ["p14-unified-1k-c1", "p14-tcp-1k-c1", "p14-efa-1k-c1"]
EXPERIMENT = "disagglab-phase14"
TIMINGS = [f"{stat}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for stat in ("mean", "median", "std", "p50", "p90", "p99")]
VLLM_METRICS = ["completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput"]


@pytest.fixture
def proj(finished_l0: Project) -> Project:
    """The session's finished phase14 L0: only read here (tests log private copies)."""
    return finished_l0


@pytest.fixture
def plan(proj: Project) -> Plan:
    return load_plan(proj.root / "plans" / "phase14.json")


@pytest.fixture
def results(proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the `results` folder holding phase14's results and logs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dest = tmp_path / "results"
    shutil.copytree(proj.root / "results" / "phase14", dest / "phase14")
    for run in (dest / "phase14" / "runs").glob("*.json"):
        if run.stem not in PATTERNS:  # the rest of L0 stands for patterns without a result
            run.unlink()
    return dest


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def runs_of(uri: str, pid: str | None = None) -> list:
    c = client(uri)
    exp = c.get_experiment_by_name(EXPERIMENT)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if pid is None or r.data.tags["pattern_id"] == pid]


def test_tracking_uri_is_absolute_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri(Path("results")) == f"sqlite:///{tmp_path.resolve()}/results/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking.tracking_uri(Path("results")) == "sqlite:////elsewhere/x.db"


def test_one_run_per_result_with_params_metrics_tags_artifacts(plan: Plan, results: Path) -> None:
    uri = tracking.tracking_uri(results)
    summary = tracking.log_phase(plan, results / "phase14", uri, "rev-1")
    assert summary["created"] == PATTERNS  # plan order; patterns without a result are skipped
    assert summary["unchanged"] == summary["superseded"] == summary["reinstated"] == []
    assert (results / "mlflow.db").is_file() and (results / "mlflow.db.lock").is_file()

    c = client(uri)
    assert [e.name for e in c.search_experiments() if "phase14" in e.name] == [EXPERIMENT]
    runs = runs_of(uri)
    assert sorted(r.info.run_name for r in runs) == sorted(PATTERNS)
    for run in runs:
        pid = run.info.run_name
        path = results / "phase14" / "runs" / f"{pid}.json"
        result = json.loads(path.read_text())
        assert run.info.status == "FINISHED" and summary["runs"][pid] == run.info.run_id
        # params: exactly the flattened effective spec, nothing else
        params = run.data.params
        assert params == tracking.spec_params(result["spec"])
        assert params["infra.model"] == "Qwen/Qwen2.5-7B-Instruct" and params["infra.tp_size"] == "1"
        assert params["prompt_tokens"] == "1000" and params["backend"] == result["description"]["backend"]
        assert params["prefix_cache"] == "false" and params["slo"] == "null" and params["pattern_id"] == pid
        # metrics: the vLLM keys, every timing stat, KV counts, per-GPU throughput; no nulls, no settings
        metrics = run.data.metrics
        for key in VLLM_METRICS + TIMINGS:
            assert metrics[key] == pytest.approx(result[key]), key
        assert metrics["output_throughput_per_gpu"] == pytest.approx(result["output_throughput"] / result["description"]["gpus_used"])
        assert "request_goodput" not in metrics and result["request_goodput"] is None
        assert not {"concurrency", "seed", "schema_version", "prompt_tokens"} & set(metrics)
        if result["description"]["backend"] != "unified":
            assert metrics["kv_transfer.transfers"] == result["kv_transfer"]["transfers"] >= 30
            assert metrics["kv_transfer.failed_transfers"] == 0
        tags = run.data.tags
        expected = {"phase": "phase14", "layer": "L0", "backend": result["description"]["backend"], "engine": "sim",
                    "simulated": "true", "validity": "valid", "result_sha256": sha256_file(path), "git_revision": "rev-1",
                    "pattern_id": pid, "status": "current"}
        assert {k: tags.get(k) for k in expected} == expected
        # artifacts: the exact result bytes and the pattern's logs, under results/mlruns
        assert run.info.artifact_uri.startswith((results / "mlruns" / EXPERIMENT).resolve().as_uri())
        assert {a.path for a in c.list_artifacts(run.info.run_id)} == {f"{pid}.json", "logs"}
        logged = {a.path for a in c.list_artifacts(run.info.run_id, "logs")}
        assert {"logs/trial-1", "logs/aggregate.log"} <= logged
        trial_logs = {a.path for a in c.list_artifacts(run.info.run_id, "logs/trial-1")}
        assert {"logs/trial-1/run.log", "logs/trial-1/manifest.json", "logs/trial-1/node1"} <= trial_logs
        local = c.download_artifacts(run.info.run_id, f"{pid}.json", str(results.parent / "dl" / pid))
        assert Path(local).read_bytes() == path.read_bytes()


def test_second_call_changes_nothing(plan: Plan, results: Path) -> None:
    uri = tracking.tracking_uri(results)
    first = tracking.log_phase(plan, results / "phase14", uri, "rev-1")
    second = tracking.log_phase(plan, results / "phase14", uri, "rev-2")
    assert second["created"] == second["superseded"] == [] and second["unchanged"] == PATTERNS
    assert second["runs"] == first["runs"] and len(runs_of(uri)) == len(PATTERNS)
    assert {r.data.tags["git_revision"] for r in runs_of(uri)} == {"rev-1"}


def test_changed_result_makes_one_new_run_and_supersedes_the_old(plan: Plan, results: Path) -> None:
    uri = tracking.tracking_uri(results)
    pid = "p14-tcp-1k-c1"
    old_id = tracking.log_phase(plan, results / "phase14", uri, "rev-1")["runs"][pid]
    path = results / "phase14" / "runs" / f"{pid}.json"
    original = path.read_bytes()
    doc = json.loads(original)
    doc["mean_ttft_ms"] += 1.0
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    summary = tracking.log_phase(plan, results / "phase14", uri, "rev-2")
    assert summary["created"] == [pid] and summary["superseded"] == [old_id]
    assert summary["unchanged"] == [p for p in PATTERNS if p != pid]
    new_id = summary["runs"][pid]
    assert len(runs_of(uri)) == len(PATTERNS) + 1
    by_id = {r.info.run_id: r for r in runs_of(uri, pid)}
    assert set(by_id) == {old_id, new_id}
    assert by_id[old_id].data.tags["status"] == "superseded" and by_id[old_id].data.tags["superseded_by"] == new_id
    assert by_id[new_id].data.tags["status"] == "current" and by_id[new_id].data.tags["result_sha256"] == sha256_file(path)
    assert by_id[new_id].data.metrics["mean_ttft_ms"] == pytest.approx(doc["mean_ttft_ms"])

    again = tracking.log_phase(plan, results / "phase14", uri, "rev-2")
    assert again["created"] == again["superseded"] == [] and len(runs_of(uri)) == len(PATTERNS) + 1

    # Back to the original bytes: the original run is current again, no run is added.
    path.write_bytes(original)
    back = tracking.log_phase(plan, results / "phase14", uri, "rev-3")
    assert back["reinstated"] == [pid] and back["superseded"] == [new_id] and back["created"] == []
    by_id = {r.info.run_id: r for r in runs_of(uri, pid)}
    assert by_id[old_id].data.tags["status"] == "current" and "superseded_by" not in by_id[old_id].data.tags
    assert by_id[new_id].data.tags["status"] == "superseded" and len(runs_of(uri)) == len(PATTERNS) + 1


def test_the_recommended_run_is_tagged_and_its_cost_logged_once(plan: Plan, results: Path) -> None:
    """phase14 has no SLO, so the run with the most output tok/s per GPU of the workload is the recommended one."""
    uri = tracking.tracking_uri(results)
    docs = {pid: json.loads((results / "phase14" / "runs" / f"{pid}.json").read_text()) for pid in PATTERNS}
    per_gpu = {pid: d["output_throughput"] / d["description"]["gpus_used"] for pid, d in docs.items()}
    order = sorted(PATTERNS, key=per_gpu.__getitem__, reverse=True)
    first = tracking.log_phase(plan, results / "phase14", uri, "rev-1")
    assert first["recommended"] == [order[0]]
    runs = {r.info.run_name: r for r in runs_of(uri)}
    assert {pid: r.data.tags["recommended"] for pid, r in runs.items()} == {pid: str(pid == order[0]).lower() for pid in PATTERNS}
    assert {pid: r.data.tags["recommendation_rank"] for pid, r in runs.items()} == {pid: str(order.index(pid) + 1) for pid in PATTERNS}
    assert {r.data.tags["workload"] for r in runs.values()} == {"1000 in / 10 out"}
    price = load_config_file()["estimate"]["prices_usd_per_hour"]["g5.12xlarge"] / 4  # per GPU of a 4-GPU g5.12xlarge
    for pid, run in runs.items():
        cost = price * docs[pid]["description"]["gpus_used"] / (docs[pid]["output_throughput"] * 3600) * 1e6
        assert run.data.metrics[COST_KEY] == pytest.approx(cost)

    again = tracking.log_phase(plan, results / "phase14", uri, "rev-2")
    assert again["created"] == [] and again["recommended"] == [order[0]] and len(runs_of(uri)) == len(PATTERNS)
    assert all(len(client(uri).get_metric_history(r.info.run_id, COST_KEY)) == 1 for r in runs.values()), "nothing logged twice"

    # The recommended result is gone: its run keeps no recommendation, the runner-up gets it.
    (results / "phase14" / "runs" / f"{order[0]}.json").unlink()
    third = tracking.log_phase(plan, results / "phase14", uri, "rev-3")
    assert third["recommended"] == [order[1]]
    tags = {r.info.run_name: r.data.tags for r in runs_of(uri)}
    assert (tags[order[0]]["recommended"], tags[order[1]]["recommended"], tags[order[1]]["recommendation_rank"]) == ("false", "true", "1")


def test_a_crash_mid_run_is_completed_not_duplicated(plan: Plan, results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = tracking.tracking_uri(results)

    def crash(*args: object) -> None:
        raise RuntimeError("killed while logging")

    with monkeypatch.context() as m:
        m.setattr(tracking, "_log_run", crash)
        with pytest.raises(RuntimeError):
            tracking.log_phase(plan, results / "phase14", uri, "rev-1")
    assert [r.data.tags["status"] for r in runs_of(uri)] == ["incomplete"]
    summary = tracking.log_phase(plan, results / "phase14", uri, "rev-1")
    assert summary["created"] == PATTERNS
    runs = runs_of(uri)
    assert len(runs) == len(PATTERNS) and {r.data.tags["status"] for r in runs} == {"current"}
    assert {r.info.status for r in runs} == {"FINISHED"}


CHILD = """
import json, sys, time
from pathlib import Path
from disagglab.report import tracking
from disagglab.plan.model import load_plan
tracking._mlflow()
import mlflow.store.db.utils  # noqa: F401  (imports done before the barrier: all start together)
plan_path, results, uri, barrier, me = sys.argv[1:]
plan = load_plan(plan_path)
Path(barrier, f"ready-{me}").touch()
while not Path(barrier, "go").exists():
    time.sleep(0.001)
tracking.init_store(uri)
print(json.dumps(tracking.log_phase(plan, Path(results), uri, "rev-" + me)))
"""


def test_four_processes_on_a_fresh_store_all_succeed_without_duplicates(plan: Plan, results: Path, tmp_path: Path) -> None:
    uri = tracking.tracking_uri(results)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(plan.path), str(results / "phase14"), uri, str(barrier), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(4)]
    deadline = time.time() + 120
    while len(list(barrier.glob("ready-*"))) < 4 and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    (barrier / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(err[-3000:] for _, err in outs)
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    created = sorted(pid for s in summaries for pid in s["created"])
    assert created == sorted(PATTERNS)  # each pattern created by exactly one process
    assert all(sorted(s["created"] + s["unchanged"]) == sorted(PATTERNS) for s in summaries)
    assert [e.name for e in client(uri).search_experiments() if "phase14" in e.name] == [EXPERIMENT]
    assert sorted(r.info.run_name for r in runs_of(uri)) == sorted(PATTERNS)


def test_env_uri_override_and_no_secrets_in_the_store(plan: Plan, results: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sentinel-secret-4f1c9a"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere/track.db")
    uri = tracking.tracking_uri(results)
    assert uri == f"sqlite:///{tmp_path}/elsewhere/track.db"
    tracking.log_phase(plan, results / "phase14", uri, "rev-1")
    assert not (results / "mlflow.db").exists() and len(runs_of(uri)) == len(PATTERNS)
    assert all(r.info.artifact_uri.startswith((tmp_path / "elsewhere" / "mlruns").as_uri()) for r in runs_of(uri))
    stored = [tmp_path / "elsewhere" / "track.db", *(p for p in (tmp_path / "elsewhere" / "mlruns").rglob("*") if p.is_file())]
    assert not [p for p in stored if secret.encode() in p.read_bytes()]


def test_long_param_values_are_cut_to_500_chars_and_stay_distinct() -> None:
    a = tracking.spec_params({"note": "x" * 600 + "a", "infrastructure": {"model": "m"}, "slo": {"ttft_ms": 200}})
    b = tracking.spec_params({"note": "x" * 600 + "b"})
    assert len(a["note"]) == 500 and a["note"] != b["note"] and a["note"].startswith("x" * 400)
    assert a["infra.model"] == "m" and a["slo.ttft_ms"] == "200"
