"""Engine and node faults through the whole pipeline (DISAGGLAB_FAULTS, test-only).

One real `snakemake --keep-going` run over a layer in which every pattern but two gets a
different fault. Then, per fault: the pattern ends as a failure record naming step, node,
cause and the last log lines; no process of the run is left (ledger pids and process
groups); no result and no half-written file; the clean patterns completed; and a rerun
without faults retries exactly the failed patterns, and completes. The producer that sends
no kv_transfer_params is the one fault that yields a result: marked INVALID, never a success.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Project, alive_groups, ledger_entries, make_project

PHASE = "phase90"
LAYER = "L0"
HEALTH_TIMEOUT_S = 5
REQUEST_TIMEOUT_S = 2
# Local nodes are 127.0.0.1 with fresh ports per pattern, so patterns may overlap; most of a
# faulted pattern is waiting (health and request timeouts, the open-loop schedule).
PARALLEL = ("--cores", "3", "--resources", "node_pair=3")  # after the targets (--resources takes several values)
CLEAN = "p90-unified-clean"
NO_KV = "p90-tcp-no-kv"
# pattern -> (backend, role -> fault, extra pattern fields)
FAULTED: dict[str, tuple[str, dict[str, str], dict]] = {
    "p90-unified-never-healthy": ("unified", {"unified": "never_healthy"}, {}),
    "p90-tcp-slow-start": ("tcp", {"consumer": "slow_start=60"}, {}),
    "p90-tcp-crash": ("tcp", {"consumer": "crash_after=4"}, {}),
    "p90-unified-hang": ("unified", {"unified": "hang_mid_stream=5"}, {}),
    "p90-unified-http500": ("unified", {"unified": "http_500=5"}, {}),
    "p90-tcp-bad-sse": ("tcp", {"consumer": "malformed_sse=5"}, {}),
    # open loop at 2 requests/s: 8 measured requests take ~4 s, so a kill at 1.5 s lands mid-run
    "p90-tcp-proxy-killed": ("tcp", {"proxy": "kill_after_s=1.5"}, {"request_rate": 2, "concurrency": 4}),
    "p90-unified-bench-killed": ("unified", {"benchmark": "kill_after_s=1.5"}, {"request_rate": 2, "concurrency": 4}),
}
# pattern -> (step, node, substrings of the cause)
EXPECTED = {
    "p90-unified-never-healthy": ("start", "node1", ["unified not healthy at http://127.0.0.1:", f"after {HEALTH_TIMEOUT_S} s", "(last: HTTP 503)"]),
    "p90-tcp-slow-start": ("start", "node2", ["consumer not healthy at http://127.0.0.1:", f"after {HEALTH_TIMEOUT_S} s"]),
    "p90-tcp-crash": ("bench", "node2", ["consumer (pid ", "is no longer running; ", "of 8 measured requests failed"]),
    "p90-unified-hang": ("bench", "node1", ["1 of 8 measured requests failed", f"TimeoutError: no complete response within --request-timeout {REQUEST_TIMEOUT_S}"]),
    "p90-unified-http500": ("bench", "node1", ["6 of 8 measured requests failed (allowed: 0): 6x HTTP 500 Internal Server Error:",
                                                "DISAGG_SIM_FAULT http_500: simulated engine error"]),
    "p90-tcp-bad-sse": ("bench", "node2", ["6 of 8 measured requests failed (allowed: 0): 6x ValueError: invalid JSON in SSE event"]),
    "p90-tcp-proxy-killed": ("bench", "node2", ["proxy (pid ", "was killed by SIGKILL (exit status -9) during the benchmark"]),
    "p90-unified-bench-killed": ("bench", "node1", ["benchmark was killed by SIGKILL (exit status -9) and wrote no result"]),
}


def _plan() -> dict:
    def pattern(pid: str, backend: str, **extra: object) -> dict:
        return {"id": pid, "backend": backend, "prompt_tokens": 256, "concurrency": 1, **extra}

    patterns = [pattern(CLEAN, "unified"), pattern(NO_KV, "tcp")]
    patterns += [pattern(pid, backend, **extra) for pid, (backend, _, extra) in FAULTED.items()]
    return {
        "phase": 90, "name": "faults", "description": "fault injection test plan",
        "infrastructure": {"instance_type": "g5.12xlarge", "node_count": 2, "model": "Qwen/Qwen2.5-7B-Instruct",
                           "vllm_version": "v0.15.1", "venv_path": "/opt/venv", "gpu_count_per_node": 4, "tp_size": 1},
        "common_settings": {"max_tokens": 8, "warmup_iterations": 2, "measurement_iterations": 8, "gpu_memory_utilization": 0.9,
                            "max_num_batched_tokens": 4096, "measurement_type": "online"},
        "layers": [{"id": LAYER, "name": "faults", "priority": "P0", "description": "one fault per pattern", "patterns": patterns}],
    }


def _faults_env() -> dict[str, str]:
    faults = {pid: roles for pid, (_, roles, _) in FAULTED.items()} | {NO_KV: {"producer": "no_kv_params"}}
    return {"DISAGGLAB_FAULTS": json.dumps(faults)}


@pytest.fixture(scope="module")
def faulted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, subprocess.CompletedProcess[str]]:
    project = make_project(tmp_path_factory.mktemp("faults") / "proj")
    cfg = project.root / "config" / "config.yaml"
    text = cfg.read_text()
    for old, new in ((" health_timeout_s: 120", f" health_timeout_s: {HEALTH_TIMEOUT_S}"), (" stop_grace_s: 10", " stop_grace_s: 3"),
                     (" request_timeout_s: 600", f" request_timeout_s: {REQUEST_TIMEOUT_S}")):
        assert old in text
        text = text.replace(old, new)
    cfg.write_text(text)
    project.write_plan(PHASE, _plan())
    out = project.snakemake("--keep-going", f"results/{PHASE}/{LAYER}.done", *PARALLEL, env=_faults_env())
    return project, out


def _results(project: Project) -> Path:
    return project.root / "results" / PHASE


@pytest.mark.parametrize("pid", sorted(EXPECTED))
def test_each_fault_ends_as_a_failure_record_with_nothing_left_behind(faulted, pid: str) -> None:
    project, out = faulted
    assert out.returncode != 0
    step, node, causes = EXPECTED[pid]
    record = json.loads((_results(project) / "failures" / f"{pid}.json").read_text())
    assert (record["pattern_id"], record["step"], record["node"]) == (pid, step, node), record
    for text in causes:
        assert text in record["cause"], record["cause"]
    assert record["log_tail"] and all(isinstance(line, str) for line in record["log_tail"])
    if "killed" in pid:  # the runner's kill is written into the killed process's log, which the record shows
        assert any("fault injection (DISAGGLAB_FAULTS)" in line for line in record["log_tail"]), record["log_tail"]
    assert not (_results(project) / "runs" / f"{pid}.json").exists(), "a failed pattern leaves no result"
    ledgers = list((project.root / "results/.local/nodes").glob(f"*/{PHASE}/runs/{pid}/procs.json"))
    entries = [e for ledger in ledgers for e in json.loads(ledger.read_text())]
    assert entries, "the processes this pattern started were recorded"
    assert alive_groups(entries) == [], f"{pid}: processes left running"


def test_the_clean_patterns_complete_and_the_silent_re_prefill_is_invalid(faulted) -> None:
    project, out = faulted
    assert f"{CLEAN}.json" in {p.name for p in (_results(project) / "runs").iterdir()}
    assert project.result(PHASE, CLEAN)["validity"] == {"valid": True, "reasons": []}
    nokv = project.result(PHASE, NO_KV)
    assert nokv["completed"] == 8 and nokv["kv_transfer"]["transfers"] == 0
    assert nokv["validity"]["valid"] is False
    assert nokv["validity"]["reasons"] == ["only 0 KV transfers for 8 completed requests: the decode server re-prefilled locally"]
    assert not (_results(project) / "failures" / f"{NO_KV}.json").exists()
    # every pattern has either a result or a failure record, and nothing is half-written
    runs = {p.stem for p in (_results(project) / "runs").glob("*.json")}
    failures = {p.stem for p in (_results(project) / "failures").glob("*.json")}
    assert runs == {CLEAN, NO_KV} and failures == set(EXPECTED)
    assert not list((project.root / "results").rglob("*.tmp")) and not list((project.root / "results").rglob(".*.tmp"))
    assert alive_groups(ledger_entries(project.root)) == []
    assert not (_results(project) / f"{LAYER}.done").exists()


def test_faults_never_reach_a_task_definition(faulted) -> None:
    project, _ = faulted
    tasks = list((_results(project) / "tasks").rglob("*.json")) + list((project.root / "results/.local").rglob("tasks/*/*.json"))
    assert len(tasks) >= 2 * 10
    for task in tasks:
        assert "DISAGG" not in task.read_text(), task


def test_status_shows_failures_and_the_invalid_result(faulted) -> None:
    project, _ = faulted
    states = {p["pattern_id"]: p for p in json.loads(project.cli("status", PHASE, "--json"))["patterns"]}
    assert states[CLEAN]["state"] == "done"
    assert states[NO_KV]["state"] == "invalid"
    assert "INVALID: only 0 KV transfers for 8 completed requests" in states[NO_KV]["detail"]
    for pid, (step, node, _) in EXPECTED.items():
        assert states[pid]["state"] == "failed" and f"step {step} on {node}" in states[pid]["detail"]


def test_rerun_without_faults_retries_exactly_the_failed_patterns(faulted) -> None:
    project, _ = faulted
    jobs = project.dry_run_jobs(f"results/{PHASE}/{LAYER}.done")
    assert sorted(j["pattern"] for j in jobs["fold_trials"]) == sorted(EXPECTED)
    kept = {pid: (_results(project) / "runs" / f"{pid}.json").read_bytes() for pid in (CLEAN, NO_KV)}
    out = project.snakemake(f"results/{PHASE}/{LAYER}.done", f"results/{PHASE}/summary.csv", *PARALLEL)
    assert out.returncode == 0, out.stderr[-3000:]
    for pid, data in kept.items():  # no result was lost or redone
        assert (_results(project) / "runs" / f"{pid}.json").read_bytes() == data, pid
    for pid in EXPECTED:
        assert project.result(PHASE, pid)["validity"]["valid"], pid
        assert not (_results(project) / "failures" / f"{pid}.json").exists()
    marker = json.loads((_results(project) / f"{LAYER}.done").read_text())
    assert marker["invalid"] == [NO_KV] and len(marker["patterns"]) == 10
    with (_results(project) / "summary.csv").open() as fh:
        rows = {r["pattern_id"]: r for r in csv.DictReader(fh)}
    assert rows[NO_KV]["validity"] == "invalid" and "re-prefilled locally" in rows[NO_KV]["validity_reason"]
    assert rows[CLEAN]["validity"] == "valid"
    assert alive_groups(ledger_entries(project.root)) == []


# ------------------------------------------------------------------ nothing but a test's environment enables a fault


def test_a_bad_faults_variable_stops_the_run_before_any_job(project: Project) -> None:
    value = json.dumps({"p14-nope-1k-c1": {"unified": "never_healthy"}, "p14-unified-1k-c1": {"producer": "no_kv_params", "proxy": "kill_after_s=1"},
                        "p14-tcp-1k-c1": {"consumer": "no_kv_params", "producer": "malformed_sse=3"}})
    out = project.snakemake("results/phase14/runs/p14-unified-1k-c1.json", env={"DISAGGLAB_FAULTS": value})
    assert out.returncode != 0
    for message in ("DISAGGLAB_FAULTS: p14-nope-1k-c1: unknown pattern",
                    "DISAGGLAB_FAULTS: p14-unified-1k-c1.producer: pattern p14-unified-1k-c1 (unified) has no role 'producer'",
                    "DISAGGLAB_FAULTS: p14-unified-1k-c1.proxy: pattern p14-unified-1k-c1 (unified) runs no proxy",
                    "DISAGGLAB_FAULTS: p14-tcp-1k-c1.consumer: no_kv_params applies to a producer only",
                    "DISAGGLAB_FAULTS: p14-tcp-1k-c1.producer: malformed_sse breaks streamed answers"):
        assert message in out.stdout + out.stderr, out.stderr[-3000:]
    assert not (project.root / "results/phase14").exists(), "nothing ran"


@pytest.mark.parametrize(("value", "message"), [
    ('{"p14-unified-1k-c1": {"unified": "explode"}}', "DISAGGLAB_FAULTS: p14-unified-1k-c1.unified: unknown fault 'explode'"),
    ('{"p14-unified-1k-c1": {"unified": "http_500=0"}}', "unknown fault 'http_500=0'"),
    ('{"p14-tcp-1k-c1": {"benchmark": "crash_after=3"}}', "p14-tcp-1k-c1.benchmark: unknown fault 'crash_after=3' (the benchmark supports kill_after_s=SECONDS)"),
    ('{"p14-tcp-1k-c1": {"decoder": "crash_after=3"}}', "p14-tcp-1k-c1.decoder: unknown role 'decoder'"),
    ('{"p14-tcp-1k-c1": {}}', "p14-tcp-1k-c1: expected a non-empty object"),
    ("[1]", "DISAGGLAB_FAULTS: expected a JSON object"),
    ("{nope", "DISAGGLAB_FAULTS: not JSON"),
    ('{"p14-tcp-1k-c1": {"proxy": "kill_after_s=1"},\n "p14-tcp-1k-c1": {"benchmark": "kill_after_s=2"}}',
     "DISAGGLAB_FAULTS: p14-tcp-1k-c1: duplicate key 'p14-tcp-1k-c1' (lines 1 and 2)"),
    ('{"p14-tcp-1k-c1": {"proxy": "kill_after_s=1", "proxy": "kill_after_s=2"}}', "DISAGGLAB_FAULTS: p14-tcp-1k-c1.proxy: duplicate key 'proxy'"),
])
def test_faults_variable_is_validated_loudly(value: str, message: str) -> None:
    from disagglab.plan import faults

    with pytest.raises(faults.FaultError) as err:
        faults.check_environment({"DISAGGLAB_FAULTS": value}, lambda _pid: None, "sim")
    assert message in str(err.value)


def test_server_faults_need_the_stand_in_and_the_old_blanket_variable_is_refused() -> None:
    from disagglab.plan import faults
    from disagglab.plan.model import load_plan

    plan = load_plan(ROOT / "plans/phase14.json")
    with pytest.raises(faults.FaultError, match="server faults exist only in the stand-in"):
        faults.check_environment({"DISAGGLAB_FAULTS": '{"p14-tcp-1k-c1": {"consumer": "crash_after=1"}}'}, plan.pattern, "vllm")
    ok = faults.check_environment({"DISAGGLAB_FAULTS": '{"p14-tcp-1k-c1": {"proxy": "kill_after_s=1"}}'}, plan.pattern, "vllm")
    assert faults.step_args(ok["p14-tcp-1k-c1"], ["proxy", "benchmark"]) == ["--fault", "proxy=kill_after_s=1"]
    # The old blanket switch hit every server of every pattern: it is refused, and says what to use instead.
    with pytest.raises(faults.FaultError, match=r"DISAGG_SIM_FAULT is set in the environment .* DISAGGLAB_FAULTS="):
        faults.check_environment({"DISAGG_SIM_FAULT": "crash_after=1"}, plan.pattern, "sim")
    with pytest.raises(faults.FaultError, match="DISAGG_SIM_FAULT is set"):
        faults.for_pattern({"DISAGG_SIM_FAULT": "crash_after=1"}, plan.pattern("p14-tcp-1k-c1"), "sim")


def test_a_plan_cannot_set_fault_variables(tmp_path: Path) -> None:
    from disagglab.errors import PlanError
    from disagglab.plan.model import load_plan

    doc = json.loads((ROOT / "plans/phase14.json").read_text())
    doc["common_settings"]["env"] = {"DISAGG_SIM_FAULT": "crash_after=1"}
    doc["layers"][0]["patterns"][0]["env"] = {"DISAGGLAB_FAULTS": "{}"}
    path = tmp_path / "phase14.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanError) as err:
        load_plan(path)
    text = str(err.value)
    assert "phase14.json: common_settings.env: unknown key 'env'" in text
    assert "phase14.json: layers[0].patterns[0].env: unknown key 'env'" in text


def test_configuration_cannot_set_fault_variables() -> None:
    import yaml

    from disagglab.errors import ConfigError
    from disagglab.plan.config import validate_config

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["transports"]["tcp"]["env"]["DISAGG_SIM_FAULT"] = "crash_after=1"
    cfg["local_vllm"]["env"]["DISAGGLAB_FAULTS"] = "{}"
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, "config.yaml")
    text = str(err.value)
    assert "config.yaml: transports.tcp.env.DISAGG_SIM_FAULT: DISAGG_*/DISAGGLAB_* variables are test-only" in text
    assert "config.yaml: local_vllm.env.DISAGGLAB_FAULTS" in text


def test_the_runner_refuses_a_task_that_sets_fault_variables_and_drops_inherited_ones(tmp_path: Path) -> None:
    node = tmp_path / "node"
    task = {"schema_version": 1, "kind": "task", "phase": "phase1", "pattern": "p1-x", "role": "unified", "node": "node1",
            "engine": "sim", "servers": [{"name": "unified", "argv": ["${python}", "-c", "pass"], "env": {"DISAGG_SIM_FAULT": "never_healthy"},
                                          "health_url": "http://127.0.0.1:1/health", "health_timeout_s": 1}]}
    (node / "tasks/p1-x").mkdir(parents=True)
    (node / "tasks/p1-x/unified.json").write_text(json.dumps(task))
    runner = [sys.executable, str(ROOT / "remote/task_runner.py")]
    out = subprocess.run([*runner, "start", "--node-dir", str(node), "--task", "tasks/p1-x/unified.json", "--bindings", "{}"],
                         capture_output=True, text=True, timeout=60, check=False)
    report = json.loads(out.stdout.splitlines()[-1].removeprefix("RUNNER-RESULT "))
    assert out.returncode == 1 and "servers[0].env sets DISAGG_SIM_FAULT" in report["cause"]
    assert not (node / "runs/p1-x/procs.json").exists(), "nothing was started"

    # A server started by the runner sees neither the runner's DISAGG_* nor DISAGGLAB_* variables.
    dump = tmp_path / "env.json"
    task["servers"][0].update(env={}, argv=["${python}", "-c", f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"])
    (node / "tasks/p1-x/unified.json").write_text(json.dumps(task))
    env = {**os.environ, "DISAGG_SIM_FAULT": "crash_after=0", "DISAGGLAB_FAULTS": "{}", "DISAGG_PROXY_FAULT": "x"}
    subprocess.run([*runner, "start", "--node-dir", str(node), "--task", "tasks/p1-x/unified.json", "--bindings", "{}"],
                   capture_output=True, text=True, timeout=60, check=False, env=env)
    seen = json.loads(dump.read_text())
    assert "PATH" in seen and not [k for k in seen if k.startswith(("DISAGG_", "DISAGGLAB_"))]
    subprocess.run([*runner, "stop", "--node-dir", str(node), "--pattern", "p1-x", "--grace", "1"], capture_output=True, timeout=60, check=False)


def test_over_ssm_a_fault_travels_as_a_quoted_runner_argument_not_as_environment() -> None:
    """On AWS the node does not share our environment: the SSM script carries the fault as an argument."""
    import shlex

    from disagglab.plan import faults
    from disagglab.run.ssm import Bootstrap, build_script

    args = ["bench", "--node-dir", "/opt/disagglab/phase14", *faults.step_args({"proxy": "kill_after_s=1.5", "consumer": "crash_after=3"},
                                                                                ["proxy", "benchmark"])]
    script = build_script("/opt/disagglab/phase14", Bootstrap("bucket", "phase14/remote/task_runner.py", "0" * 64, "/opt/venv/bin/python"), args, None)
    assert shlex.split(script.splitlines()[-1])[3:] == args
    assert args[-2:] == ["--fault", "proxy=kill_after_s=1.5"], "only the roles of this step"
    assert "DISAGG" not in "\n".join(script.splitlines()[:-1])
