"""AWS-side faults, injected where AWS produces them, through real Snakemake runs.

SSM (moto's server + the fake agent running every command for real, two node pairs on
127.0.0.1): one `--keep-going` run of a layer in which one pattern is throttled (a real
HTTP 400 ThrottlingException for every SendCommand of its start step, so botocore retries
for real), one runs past its execution timeout, one has its step process killed with
SIGKILL (exit 137, as the OOM killer would), one meets a node whose PingStatus is
ConnectionLost, and one is left alone. Then SIGINT and SIGTERM to Snakemake while a pattern
benchmarks over SSM, and one clean rerun.

S3 (a real SeaweedFS split into store and gateway, local executor): the store stopped while a
deploy runs (the gateway answers HTTP 500) and the gateway stopped (connection refused).

For every fault: a failure record naming the step, the node and the cause with the last
log lines; no process of the run alive (ledger PIDs and process groups, and every shell the
agent ran); no result or half-written file; the other patterns of the layer complete; the
next run retries exactly the failed patterns and completes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from moto_ssm import ONLINE, REGION, moto_server, node_env
from ssm_fault_proxy import SsmFaultProxy, Throttle

from conftest import SNAKEMAKE, Project, alive_groups, ledger_entries, live_group_members, make_project
from fake_ssm_agent import FakeAgent, Fault
from seaweed import start_split_seaweed

THROTTLED = "p14-unified-1k-c1"
TIMED_OUT = "p14-tcp-4k-c1"
KILLED = "p14-tcp-1k-c1"
OFFLINE = "p14-unified-4k-c1"
CLEAN = "p14-efa-1k-c1"
SSM_FAILED = {THROTTLED, TIMED_OUT, KILLED, OFFLINE}
MAX_ATTEMPTS = 3
EXECUTION_TIMEOUT_S = 600
MEASURED = 8  # requests per pattern (2 warmup): enough to be mid-benchmark when a fault lands


# ---------------------------------------------------------------------------------- helpers

def edit_config(proj: Project, *pairs: tuple[str, str]) -> None:
    cfg = proj.root / "config/config.yaml"
    text = cfg.read_text()
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    cfg.write_text(text)


NO_PREFLIGHT = ("preflight:\n  enabled: true\n", "preflight:\n  enabled: false\n")
"""The NIXL preflight (its own issue and tests) would add two real NIXL steps per pair and backend."""


def write_layer(proj: Project, patterns: list[str]) -> None:
    plan = proj.plan("phase14")
    plan["infrastructure"]["venv_path"] = str(Path(sys.executable).parent.parent)
    plan["common_settings"].update(warmup_iterations=2, measurement_iterations=MEASURED)
    by_id = {p["id"]: p for layer in plan["layers"] for p in layer.get("patterns", [])}  # L0 ids; L1 is a sweep
    plan["layers"] = [{**plan["layers"][0], "patterns": [by_id[p] for p in patterns]}]
    proj.write_plan("phase14", plan)


def no_tmp_files(root: Path) -> list[Path]:
    return [p for p in (root / "results").rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


def snakemake_state_clean(root: Path) -> None:
    """No lock and no incomplete marker: the next Snakemake run starts without --unlock/--rerun-incomplete."""
    for sub in ("locks", "incomplete"):
        folder = root / ".snakemake" / sub
        left = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
        assert left == [], f".snakemake/{sub} still holds {left}"


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# ---------------------------------------------------------------------------------- SSM

class SsmLab:
    """A project that runs through SSM on two fake node pairs, plus what injects the faults."""

    def __init__(self, root: Path, moto_url: str, seaweed) -> None:
        self.proj = make_project(root / "proj")
        self.node_root = root / "noderoot"
        self.ids = [[f"i-{uuid.uuid4().hex[:17]}" for _ in range(2)] for _ in range(2)]
        for pair in self.ids:
            for iid in pair:
                ONLINE[iid] = "Online"
        pairs = "".join(f"    - node1: {{instance_id: {a}, address: 127.0.0.1}}\n      node2: {{instance_id: {b}, address: 127.0.0.1}}\n"
                        for a, b in self.ids)
        from ports import free_ports

        ports = free_ports(5)
        edit_config(
            self.proj, NO_PREFLIGHT,
            ("executor: local\n", "executor: ssm\n"), ("storage: local\n", "storage: s3\n"),
            ("  max_attempts: 5\n", f"  max_attempts: {MAX_ATTEMPTS}\n"),  # s3
            ("  max_attempts: 8\n", f"  max_attempts: {MAX_ATTEMPTS}\n"),  # ssm, ec2
            ("    - node1: {tag: nixl-node1}\n      node2: {tag: nixl-node2}\n", pairs),
            ("    unified_port: 8100\n    producer_port: 8100\n    consumer_port: 8200\n    proxy_port: 8000\n"
             "    producer_side_channel_port: 5600\n    consumer_side_channel_port: 5601\n",
             f"    unified_port: {ports[0]}\n    producer_port: {ports[0]}\n    consumer_port: {ports[1]}\n    proxy_port: {ports[2]}\n"
             f"    producer_side_channel_port: {ports[3]}\n    consumer_side_channel_port: {ports[4]}\n"),
            ("node_root: /opt/disagglab", f"node_root: {self.node_root}"),
            ("execution_timeout_s: 3600", f"execution_timeout_s: {EXECUTION_TIMEOUT_S}"),
            ("poll_initial_s: 0.5\n    poll_max_s: 5.0", "poll_initial_s: 0.05\n    poll_max_s: 0.3"),
        )
        write_layer(self.proj, [THROTTLED, OFFLINE, KILLED, TIMED_OUT, CLEAN])
        self.bucket = seaweed.create_bucket(f"faults-{uuid.uuid4().hex[:8]}")
        self.aws_env = {**seaweed.env(), "AWS_ENDPOINT_URL": moto_url, "AWS_ENDPOINT_URL_S3": seaweed.endpoint, "AWS_DEFAULT_REGION": REGION}
        self.s3 = seaweed.client()
        self.moto_url = moto_url

    def env(self, ssm_endpoint: str | None = None) -> dict[str, str]:
        env = {**self.aws_env, "SCRIPTS_BUCKET": self.bucket}
        env["AWS_ENDPOINT_URL"] = ssm_endpoint or self.moto_url
        for var in ("NODE1_ID", "NODE2_ID", "NODE1_PRIVATE", "NODE2_PRIVATE"):
            env.pop(var, None)
        return env

    def agent(self, faults: list[Fault] | None = None) -> FakeAgent:
        return FakeAgent(REGION, self.s3, node_env(self.aws_env), faults=faults or [])

    def node_ledger(self, pattern: str | None = None) -> list[dict]:
        entries = []
        for ledger in self.node_root.glob(f"*/phase14/runs/{pattern or '*'}/procs.json"):
            entries.extend(json.loads(ledger.read_text()))
        return entries

    def failure(self, pattern: str) -> dict:
        return json.loads((self.proj.root / f"results/phase14/failures/{pattern}.json").read_text())

    def assert_nothing_left(self, agent: FakeAgent) -> None:
        entries = self.node_ledger() + ledger_entries(self.proj.root)
        assert alive_groups(entries) == [], alive_groups(entries)
        assert [e for e in entries if running(e["pid"])] == []
        assert [p for p in agent.pids if running(p) or live_group_members(p)] == [], "a command's shell outlived it"


class OfflineWatch:
    """Node1 of pair 0 loses its SSM connection when OFFLINE's run job starts, and is back
    once that pattern has failed: PingStatus is per instance, so the pattern is chosen by time."""

    def __init__(self, lab: SsmLab) -> None:
        self.lab, self.stop, self.flipped = lab, threading.Event(), False
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> OfflineWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        ONLINE[self.lab.ids[0][0]] = "Online"

    def _watch(self) -> None:
        results = self.lab.proj.root / "results/phase14"
        while not self.stop.is_set():
            if not self.flipped and (results / f"logs/{OFFLINE}/trial-1/run.log").exists():
                ONLINE[self.lab.ids[0][0]] = "ConnectionLost"
                self.flipped = True
            if self.flipped and (results / f"failures/{OFFLINE}.json").exists():
                ONLINE[self.lab.ids[0][0]] = "Online"
                return
            time.sleep(0.01)


@pytest.fixture(scope="module")
def moto_url():
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def ssm_run(moto_url, seaweed, tmp_path_factory):
    """The faulted --keep-going run of a layer through SSM; yields what the tests look at."""
    lab = SsmLab(tmp_path_factory.mktemp("ssm-faults"), moto_url, seaweed)
    faults = [Fault(TIMED_OUT, "bench", "node2", "exec-timeout", after_s=0.2), Fault(KILLED, "bench", "node2", "sigkill", after_s=0.2)]
    throttle = Throttle(THROTTLED, "start")
    with SsmFaultProxy(moto_url, [throttle]) as proxy, lab.agent(faults) as agent, OfflineWatch(lab) as watch:
        out = lab.proj.snakemake("results/phase14/L0.done", "--keep-going", env=lab.env(proxy.url))
    yield {"lab": lab, "out": out, "agent": agent, "faults": faults, "throttle": throttle, "watch": watch}


def test_the_faulted_layer_fails_but_every_other_pattern_completes(ssm_run) -> None:
    lab, out = ssm_run["lab"], ssm_run["out"]
    assert out.returncode != 0
    root = lab.proj.root / "results/phase14"
    assert json.loads((root / f"runs/{CLEAN}.json").read_text())["completed"] == MEASURED
    assert sorted(p.stem for p in (root / "runs").glob("*.json")) == [CLEAN]
    assert sorted(p.stem for p in (root / "failures").glob("*.json")) == sorted(SSM_FAILED)
    assert not (root / "L0.done").exists()
    assert no_tmp_files(lab.proj.root) == []
    assert [f.fired for f in ssm_run["faults"]] == [1, 1] and ssm_run["watch"].flipped
    lab.assert_nothing_left(ssm_run["agent"])
    snakemake_state_clean(lab.proj.root)
    status = lab.proj.cli("status", "phase14", env=lab.env())
    for pattern in SSM_FAILED:
        line = next(ln for ln in status.splitlines() if pattern in ln)
        record = lab.failure(pattern)
        assert "failed" in line and f"step {record['step']} on {record['node']}" in line, line


@pytest.mark.parametrize(("pattern", "step", "node", "cause", "servers"), [
    (THROTTLED, "start", "node1", f"SSM throttled: ThrottlingException on SendCommand after {MAX_ATTEMPTS} attempts", set()),
    (TIMED_OUT, "bench", "node2", f"execution timed out after {EXECUTION_TIMEOUT_S} s on node2", {"producer", "consumer", "proxy", "benchmark"}),
    (KILLED, "bench", "node2", "exit 137 (killed by SIGKILL: out of memory?) on node2", {"producer", "consumer", "proxy", "benchmark"}),
    (OFFLINE, "fetch", "node1", "is not online (PingStatus ConnectionLost)", set()),
])
def test_each_ssm_fault_is_a_failure_record_and_its_servers_are_stopped(ssm_run, pattern, step, node, cause, servers) -> None:
    lab = ssm_run["lab"]
    record = lab.failure(pattern)
    assert (record["step"], record["node"]) == (step, node), record
    assert cause in record["cause"], record["cause"]
    assert record["log_tail"], "the record carries the last log lines"
    assert not (lab.proj.root / f"results/phase14/runs/{pattern}.json").exists()
    entries = lab.node_ledger(pattern)
    assert servers <= {e["name"] for e in entries}, entries
    assert alive_groups(entries) == []
    assert all(e.get("stopped_at") for e in entries if e["name"] in servers), "the control side's stop step stopped them"
    if pattern == THROTTLED:
        assert ssm_run["throttle"].answered == MAX_ATTEMPTS, "botocore retried the throttled SendCommand for real"
        assert lab.ids[0][0] in record["cause"] or lab.ids[1][0] in record["cause"]
    if pattern == OFFLINE:
        assert lab.ids[0][0] in record["cause"]


def test_the_next_run_retries_exactly_the_failed_patterns(ssm_run) -> None:
    lab = ssm_run["lab"]
    jobs = lab.proj.dry_run_jobs("results/phase14/L0.done", env=lab.env())
    assert sorted(j["pattern"] for j in jobs["run_trial"]) == sorted(SSM_FAILED)
    assert "deploy_pattern" not in jobs  # every deploy went through; its marker stands


def _interrupt(lab: SsmLab, pattern: str, sig: int) -> tuple[subprocess.CompletedProcess[str], FakeAgent]:
    """Run one pattern over SSM and send `sig` to Snakemake's process group mid-benchmark."""
    target = f"results/phase14/runs/{pattern}.json"
    env = {**os.environ, **lab.env()}
    env.pop("DISAGGLAB_CONFIG", None)
    with lab.agent() as agent:
        proc = subprocess.Popen([SNAKEMAKE, target], cwd=lab.proj.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            while "benchmark" not in {e["name"] for e in lab.node_ledger(pattern) if not e.get("stopped_at")}:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
                time.sleep(0.05)
            time.sleep(0.5)
            os.killpg(proc.pid, sig)  # a terminal's Ctrl-C, or a supervisor stopping the job's group
            output, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, output, ""), agent


@pytest.mark.parametrize(("pattern", "sig"), [(TIMED_OUT, signal.SIGINT), (TIMED_OUT, signal.SIGTERM)])
def test_an_interrupt_over_ssm_stops_the_servers_on_both_nodes(ssm_run, pattern, sig) -> None:
    lab = ssm_run["lab"]
    edit_config(lab.proj, ("  time_scale: 0.05\n", "  time_scale: 0.3\n"))  # the benchmark is still running when the signal lands
    began = time.time()
    try:
        out, agent = _interrupt(lab, pattern, sig)
    finally:
        edit_config(lab.proj, ("  time_scale: 0.3\n", "  time_scale: 0.05\n"))
    assert out.returncode != 0
    name = signal.Signals(sig).name
    record = lab.failure(pattern)
    assert (record["step"], record["node"]) == ("bench", "node2"), record
    assert record["cause"] == f"interrupted by {name} during step 'bench' on node2"
    entries = [e for e in lab.node_ledger(pattern) if e["started_at"] >= began]
    assert {"producer", "consumer", "proxy", "benchmark"} <= {e["name"] for e in entries}, entries
    assert all(e.get("stopped_at") for e in entries), "every process of this run was stopped by a stop step"
    lab.assert_nothing_left(agent)
    steps = [(target[0], target[2], status) for target, status, _code in agent.outcomes if target[1] == pattern]
    assert ("bench", "node2", "Cancelled") in steps, steps  # the in-flight command was cancelled ...
    assert {("stop", "node1", "Success"), ("stop", "node2", "Success")} <= set(steps), steps  # ... and stop ran on both nodes
    assert not (lab.proj.root / f"results/phase14/runs/{pattern}.json").exists()
    assert no_tmp_files(lab.proj.root) == []
    snakemake_state_clean(lab.proj.root)


def test_a_rerun_completes_the_layer_and_clears_the_failure_records(ssm_run) -> None:
    lab = ssm_run["lab"]
    with lab.agent() as agent:
        out = lab.proj.snakemake("results/phase14/L0.done", env=lab.env())
    assert out.returncode == 0, out.stderr[-3000:]
    root = lab.proj.root / "results/phase14"
    assert sorted(p.stem for p in (root / "runs").glob("*.json")) == sorted(SSM_FAILED | {CLEAN})
    assert all(lab.proj.result("phase14", p)["completed"] == MEASURED for p in SSM_FAILED)
    assert list((root / "failures").glob("*.json")) == []
    lab.assert_nothing_left(agent)
    snakemake_state_clean(lab.proj.root)


# ---------------------------------------------------------------------------------- S3

S3_OK = ["p14-tcp-1k-c1"]
S3_FAULTED = ["p14-unified-4k-c1", "p14-tcp-4k-c1"]


class DeployOutage:
    """Stop one half of SeaweedFS the moment a faulted pattern's deploy job starts: the store
    for the first (the gateway then answers 500), the gateway for the second (refused)."""

    def __init__(self, root: Path, weed) -> None:
        self.root, self.weed, self.stop = root, weed, threading.Event()
        self.modes: dict[str, str] = {}
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> DeployOutage:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _watch(self) -> None:
        while not self.stop.is_set() and len(self.modes) < len(S3_FAULTED):
            for pattern in S3_FAULTED:
                if pattern not in self.modes and (self.root / f"results/phase14/logs/{pattern}/deploy.log").exists():
                    if not self.modes:
                        self.weed.stop_store()
                        self.modes[pattern] = "5xx"
                    else:
                        self.weed.stop_gateway()
                        self.modes[pattern] = "refused"
            time.sleep(0.005)


@pytest.fixture(scope="module")
def split_weed():
    data = Path(tempfile.mkdtemp(prefix="disagglab-seaweed-split-"))
    weed = start_split_seaweed(data)
    try:
        yield weed
    finally:
        weed.stop()
        import shutil

        shutil.rmtree(data, ignore_errors=True)


def test_s3_stopped_mid_deploy_fails_only_that_pattern_and_the_rerun_completes(split_weed, tmp_path) -> None:
    proj = make_project(tmp_path / "proj")
    edit_config(proj, NO_PREFLIGHT, ("storage: local\n", "storage: s3\n"), ("  max_attempts: 5\n", f"  max_attempts: {MAX_ATTEMPTS}\n"))
    write_layer(proj, S3_OK + S3_FAULTED)
    bucket = split_weed.create_bucket(f"deploy-{uuid.uuid4().hex[:8]}")
    env = {**split_weed.env(), "SCRIPTS_BUCKET": bucket, "AWS_DEFAULT_REGION": REGION}
    # One job at a time, the faulted patterns last: the outage starts with their deploys.
    prioritize = [f"results/phase14/runs/{p}.json" for p in S3_OK]
    with DeployOutage(proj.root, split_weed) as outage:
        out = proj.snakemake("results/phase14/L0.done", "--keep-going", "--cores", "1", "--prioritize", *prioritize, env=env)
    assert out.returncode != 0
    assert sorted(outage.modes.values()) == ["5xx", "refused"], outage.modes
    root = proj.root / "results/phase14"
    for pattern in S3_OK:
        assert proj.result("phase14", pattern)["provenance"]["storage"] == "s3"
    for pattern, mode in outage.modes.items():
        assert not (root / f"deploy/{pattern}.json").exists(), "no deploy marker for a deploy cut short"
        assert not (root / f"runs/{pattern}.json").exists()
        record = json.loads((root / f"failures/{pattern}.json").read_text())
        assert (record["step"], record["node"]) == ("deploy", "control"), record
        assert f"s3://{bucket}/phase14/" in record["cause"] and split_weed.endpoint in record["cause"], record["cause"]
        assert f"after {MAX_ATTEMPTS} attempts" in record["cause"]
        assert ("(HTTP 500)" in record["cause"]) if mode == "5xx" else ("EndpointConnectionError" in record["cause"]), record["cause"]
        assert record["log_tail"] and record["log_tail"][-1].startswith("FAILED phase14/"), record["log_tail"]
        log = (root / f"logs/{pattern}/deploy.log").read_text()
        assert "Traceback" not in log and record["message"] in log
    assert no_tmp_files(proj.root) == []
    assert alive_groups(ledger_entries(proj.root)) == []
    snakemake_state_clean(proj.root)

    split_weed.start()  # SeaweedFS is back
    jobs = proj.dry_run_jobs("results/phase14/L0.done", env=env)
    assert sorted(j["pattern"] for j in jobs["deploy_pattern"]) == sorted(S3_FAULTED)
    assert sorted(j["pattern"] for j in jobs["run_trial"]) == sorted(S3_FAULTED)
    out = proj.snakemake("results/phase14/L0.done", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    for pattern in S3_FAULTED:
        assert proj.result("phase14", pattern)["completed"] == MEASURED
        assert not (root / f"failures/{pattern}.json").exists()
        marker = json.loads((root / f"deploy/{pattern}.json").read_text())
        assert {f["path"] for f in marker["files"]} >= {"remote/task_runner.py", f"tasks/{pattern}/{'unified' if 'unified' in pattern else 'consumer'}.json"}
    assert alive_groups(ledger_entries(proj.root)) == []


def test_exit_137_is_told_apart_by_how_long_the_step_ran() -> None:
    """The agent reports TimedOut + 137 both when its timer fires and when the step was SIGKILLed."""
    from disagglab.run.ssm import describe_failure, elapsed_seconds
    from disagglab.run.transport import Node

    assert elapsed_seconds("PT0.083S") == pytest.approx(0.083)
    assert elapsed_seconds("PT1H2M3.5S") == pytest.approx(3723.5)
    assert elapsed_seconds("") is None and elapsed_seconds("5 minutes") is None
    node = Node("node2", "10.0.0.2", "i-0abc")
    inv = {"Status": "TimedOut", "StatusDetails": "Execution Timed Out", "ResponseCode": 137}
    assert describe_failure(node, "i-0abc", inv, 600, 120, 600.2).startswith("execution timed out after 600 s on node2 (i-0abc)")
    assert describe_failure(node, "i-0abc", inv, 600, 120, 12.0).startswith("exit 137 (killed by SIGKILL: out of memory?) on node2 (i-0abc) after 12.0 s")
    delivery = {"Status": "TimedOut", "StatusDetails": "Delivery Timed Out", "ResponseCode": -1}
    assert "could not deliver" in describe_failure(node, "i-0abc", delivery, 600, 120, 121.0)
    signalled = {"Status": "Failed", "StatusDetails": "Failed", "ResponseCode": -1}
    assert "killed by a signal" in describe_failure(node, "i-0abc", signalled, 600, 120, 3.0)
