"""The SSM transport against moto's server (SSM, EC2, CloudFormation on 127.0.0.1) with a
fake agent that runs each sent script for real under sh/bash, and SeaweedFS as S3."""

from __future__ import annotations

import json
import shlex
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from moto_ssm import ONLINE, REGION, moto_server, node_env, use_fake_ssm_nodes

from disagglab import aws
from disagglab.deploy.storage import S3Storage
from disagglab.errors import ConfigError
from disagglab.hashing import sha256_file
from disagglab.plan.config import load_config_file
from disagglab.run.ssm import SsmTransport, build_script
from disagglab.run.transport import Node

from conftest import ROOT, Project, alive_groups, ledger_entries, make_project
from fake_ssm_agent import FakeAgent


@pytest.fixture(scope="module")
def moto_endpoint():
    with moto_server() as url:
        yield url


@pytest.fixture
def aws_env(moto_endpoint, seaweed, monkeypatch):
    """SSM/EC2/CloudFormation go to moto, S3 to SeaweedFS (service-specific endpoint wins)."""
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", seaweed.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for var in aws.SEED_VARS:
        monkeypatch.delenv(var, raising=False)
    return {**seaweed.env(), "AWS_ENDPOINT_URL": moto_endpoint, "AWS_ENDPOINT_URL_S3": seaweed.endpoint, "AWS_DEFAULT_REGION": REGION}


@pytest.fixture
def storage(aws_env, seaweed) -> S3Storage:
    if not getattr(seaweed, "ssm_bucket", None):
        seaweed.ssm_bucket = seaweed.create_bucket(f"ssm-{uuid.uuid4().hex[:10]}")
    return S3Storage(seaweed.ssm_bucket, prefix=f"t-{uuid.uuid4().hex[:8]}")


def transport(storage: S3Storage, tmp_path: Path, **kw) -> SsmTransport:
    from botocore.config import Config

    ssm = boto3.client("ssm", region_name=REGION, config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    defaults = {"poll_initial_s": 0.05, "poll_max_s": 0.2, "invocation_grace_s": 5.0, "execution_timeout_s": 600, "delivery_timeout_s": 60}
    return SsmTransport(ssm, storage, str(tmp_path / "node-root"), **{**defaults, **kw})


def online_node(name: str = "node1") -> Node:
    iid = "i-" + uuid.uuid4().hex[:17]
    ONLINE[iid] = "Online"
    return Node(name, "127.0.0.1", iid)


def deploy_runner(storage: S3Storage) -> tuple[str, str]:
    res = storage.put_file(ROOT / "remote/task_runner.py", "phase1/remote/task_runner.py")
    return res.key, res.sha256


def test_a_step_is_sent_as_bash_and_runs_for_real(aws_env, storage, tmp_path) -> None:
    t = transport(storage, tmp_path)
    node = online_node()
    key, sha = deploy_runner(storage)
    t.prepare(node, "phase1", storage, key, sha, sys.executable)
    with FakeAgent(REGION, storage.client, node_env(aws_env)) as agent:
        outcome = t.run_step(node, "phase1", ["stop", "--node-dir", t.node_dir(node, "phase1"), "--pattern", "p1-x"], 300)
    assert outcome.ok, outcome
    assert outcome.report["step"] == "stop" and outcome.report["stopped"] == []
    assert sha256_file(Path(t.node_dir(node, "phase1")) / "remote/task_runner.py") == sha
    cmd = boto3.client("ssm", region_name=REGION).list_commands(CommandId=t.sent[0])["Commands"][0]
    assert cmd["DocumentName"] == "AWS-RunShellScript"
    assert cmd["Parameters"]["executionTimeout"] == ["300"]
    assert cmd["TimeoutSeconds"] == 60
    assert cmd["OutputS3BucketName"] == storage.bucket and cmd["OutputS3KeyPrefix"] == f"{storage.prefix}/ssm-output"
    script = cmd["Parameters"]["commands"][0]
    assert script.startswith("#!/bin/bash\n") and script == agent.scripts[0]
    assert script.rstrip().endswith(" ".join(shlex.quote(a) for a in ["stop", "--node-dir", t.node_dir(node, "phase1"), "--pattern", "p1-x"]))
    assert "AWS_SECRET" not in script and "disagglab-test-secret" not in script


def test_shell_metacharacters_in_arguments_never_execute(aws_env, storage, tmp_path) -> None:
    boot_dir = tmp_path / "x"
    evil = f"$(touch {boot_dir}/pwned); `touch {boot_dir}/pwned2`; echo hi > {boot_dir}/pwned3"
    from disagglab.run.ssm import Bootstrap

    script = build_script(str(tmp_path / "root" / "phase1"), Bootstrap("b", "k", "0" * 64, "/nonexistent/python"), ["stop", "--pattern", evil], None)
    boot_dir.mkdir()
    import subprocess

    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert out.returncode == 3 and "no python at /nonexistent/python" in out.stdout
    assert list(boot_dir.iterdir()) == []


@pytest.mark.parametrize(("mode", "fragment"), [
    ("fail:7", "failed on node1"),
    ("timeout-exec", "executionTimeout"),
    ("timeout-delivery", "could not deliver"),
    ("cancelled", "cancelled"),
])
def test_terminal_statuses_map_to_clear_errors(aws_env, storage, tmp_path, mode: str, fragment: str) -> None:
    t = transport(storage, tmp_path)
    node = online_node()
    key, sha = deploy_runner(storage)
    t.prepare(node, "phase1", storage, key, sha, sys.executable)
    with FakeAgent(REGION, storage.client, node_env(aws_env), mode=mode):
        outcome = t.run_step(node, "phase1", ["stop", "--node-dir", t.node_dir(node, "phase1"), "--pattern", "p1-x"], 300)
    assert not outcome.ok
    assert fragment in outcome.cause and node.instance_id in outcome.cause, outcome.cause
    assert outcome.report["ssm"]["instance_id"] == node.instance_id


def test_runner_failure_reaches_the_caller_with_its_cause(aws_env, storage, tmp_path) -> None:
    t = transport(storage, tmp_path)
    node = online_node()
    key, sha = deploy_runner(storage)
    t.prepare(node, "phase1", storage, key, sha, sys.executable)
    with FakeAgent(REGION, storage.client, node_env(aws_env)):
        outcome = t.run_step(node, "phase1", ["stop", "--node-dir", t.node_dir(node, "phase1"), "--pattern", "BAD;id"], 300)
    assert not outcome.ok and "invalid pattern id" in outcome.cause


def test_missing_invocation_is_retried_within_the_grace_then_an_error(aws_env, storage, tmp_path) -> None:
    t = transport(storage, tmp_path, invocation_grace_s=5.0)
    node = online_node()
    key, sha = deploy_runner(storage)
    t.prepare(node, "phase1", storage, key, sha, sys.executable)
    args = ["stop", "--node-dir", t.node_dir(node, "phase1"), "--pattern", "p1-x"]
    with FakeAgent(REGION, storage.client, node_env(aws_env), mode="hide:1.0"):
        assert t.run_step(node, "phase1", args, 300).ok
    t2 = transport(storage, tmp_path, invocation_grace_s=0.5)
    t2.prepare(node, "phase1", storage, key, sha, sys.executable)
    with FakeAgent(REGION, storage.client, node_env(aws_env), mode="hide:3.0"):
        outcome = t2.run_step(node, "phase1", args, 300)
    assert not outcome.ok and "has no invocation" in outcome.cause and "command cancelled" in outcome.cause


def test_truncated_output_is_read_in_full_from_s3(aws_env, storage, tmp_path) -> None:
    t = transport(storage, tmp_path)
    node = online_node()
    key, sha = deploy_runner(storage)
    t.prepare(node, "phase1", storage, key, sha, sys.executable)
    with FakeAgent(REGION, storage.client, node_env(aws_env), mode="truncate"):
        outcome = t.run_step(node, "phase1", ["stop", "--node-dir", t.node_dir(node, "phase1"), "--pattern", "p1-x"], 300)
    assert outcome.ok and outcome.report["step"] == "stop"


def test_throttling_while_polling_keeps_polling(aws_env, storage, tmp_path) -> None:
    from botocore.exceptions import ClientError

    t = transport(storage, tmp_path)
    node = online_node()
    key, sha = deploy_runner(storage)
    t.prepare(node, "phase1", storage, key, sha, sys.executable)
    real = t.ssm.get_command_invocation
    calls = {"n": 0}

    def throttled(**kw):
        calls["n"] += 1
        if calls["n"] <= 3:
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "GetCommandInvocation")
        return real(**kw)

    t.ssm.get_command_invocation = throttled
    with FakeAgent(REGION, storage.client, node_env(aws_env)):
        outcome = t.run_step(node, "phase1", ["stop", "--node-dir", t.node_dir(node, "phase1"), "--pattern", "p1-x"], 300)
    assert outcome.ok and calls["n"] > 3


def test_node_not_online_is_refused_before_any_command(aws_env, storage, tmp_path) -> None:
    t = transport(storage, tmp_path)
    unknown = Node("node2", "127.0.0.1", "i-0123456789abcdef0")
    with pytest.raises(RuntimeError, match="node2 \\(i-0123456789abcdef0\\) is not registered with SSM"):
        t.prepare(unknown, "phase1", storage, "k", "0" * 64, sys.executable)
    ONLINE["i-0fedcba9876543210"] = "ConnectionLost"
    with pytest.raises(RuntimeError, match=r"node1 \(i-0fedcba9876543210\) is not online \(PingStatus ConnectionLost\)"):
        t.prepare(Node("node1", "127.0.0.1", "i-0fedcba9876543210"), "phase1", storage, "k", "0" * 64, sys.executable)
    assert t.sent == []


def _cfg() -> dict:
    cfg = load_config_file()
    cfg["aws"]["max_attempts"] = 1
    return cfg


def test_discovery_from_cloudformation_outputs_and_ec2_tags(aws_env) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    stack = f"Stack{uuid.uuid4().hex[:8]}"
    tags = [f"node1-{stack}", f"node2-{stack}"]
    ids = {}
    for tag in tags:
        inst = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                 TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": tag}]}])["Instances"][0]
        ids[tag] = (inst["InstanceId"], inst["PrivateIpAddress"])
    template = {"Resources": {"B": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": f"cfn-{stack.lower()}"}}},
                "Outputs": {"ScriptsBucketName": {"Value": {"Ref": "B"}}}}
    boto3.client("cloudformation", region_name=REGION).create_stack(StackName=stack, TemplateBody=json.dumps(template))
    cfg = _cfg()
    cfg["aws"]["stack_name"] = stack
    cfg["aws"]["pairs"] = [{"node1": {"tag": tags[0]}, "node2": {"tag": tags[1]}}]
    assert aws.discover_bucket(cfg) == f"cfn-{stack.lower()}"
    (pair,) = aws.discover_pairs(cfg)
    assert (pair.node1.instance_id, pair.node1.address) == ids[tags[0]]
    assert (pair.node2.instance_id, pair.node2.address) == ids[tags[1]]
    cfg["aws"]["pairs"] = [{"node1": {"tag": tags[0]}, "node2": {"tag": "no-such-node"}}]
    with pytest.raises(ConfigError, match=r"aws.pairs\[0\].node2.tag: no running instance tagged Name='no-such-node'"):
        aws.discover_pairs(cfg)
    cfg["aws"]["stack_name"] = "NoSuchStack"
    with pytest.raises(ConfigError, match="SCRIPTS_BUCKET and s3.bucket are unset and stack 'NoSuchStack' cannot be read"):
        aws.discover_bucket(cfg)


def test_seed_environment_variables_override_discovery(aws_env, monkeypatch) -> None:
    monkeypatch.setenv("SCRIPTS_BUCKET", "seed-bucket")
    monkeypatch.setenv("NODE1_ID", "i-0aaaaaaaaaaaaaaa1")
    monkeypatch.setenv("NODE2_ID", "i-0aaaaaaaaaaaaaaa2")
    monkeypatch.setenv("NODE1_PRIVATE", "10.0.0.1")
    cfg = _cfg()
    assert aws.discover_bucket(cfg) == "seed-bucket"
    with pytest.raises(ConfigError, match="NODE2_PRIVATE"):
        aws.discover_pairs(cfg)
    monkeypatch.setenv("NODE2_PRIVATE", "10.0.0.2")
    (pair,) = aws.discover_pairs(cfg)
    assert pair.node2.instance_id == "i-0aaaaaaaaaaaaaaa2" and pair.node1.address == "10.0.0.1"


def test_a_layer_runs_through_ssm_and_s3(aws_env, seaweed, tmp_path) -> None:
    """executor: ssm + storage: s3, end to end; the fake agent plays both nodes on 127.0.0.1."""
    proj: Project = make_project(tmp_path / "proj")
    ids = [online_node("node1").instance_id, online_node("node2").instance_id]
    use_fake_ssm_nodes(proj, tmp_path / "noderoot")
    plan = proj.plan("phase14")
    plan["layers"] = [{**plan["layers"][0], "patterns": plan["layers"][0]["patterns"][:2]}]  # unified + tcp at 1k
    proj.write_plan("phase14", plan)
    bucket = seaweed.create_bucket(f"ssm-layer-{uuid.uuid4().hex[:6]}")
    env = {**aws_env, "SCRIPTS_BUCKET": bucket, "NODE1_ID": ids[0], "NODE2_ID": ids[1], "NODE1_PRIVATE": "127.0.0.1", "NODE2_PRIVATE": "127.0.0.1"}
    s3 = boto3.client("s3", endpoint_url=seaweed.endpoint, region_name=REGION)
    agent_env = {**node_env(aws_env)}
    with FakeAgent(REGION, s3, agent_env) as agent:
        out = proj.snakemake("results/phase14/L0.done", env=env)
    assert out.returncode == 0, out.stderr[-4000:] + (proj.root / "results/phase14/logs/p14-tcp-1k-c1/trial-1/run.log").read_text()[-3000:]
    for pid in ("p14-unified-1k-c1", "p14-tcp-1k-c1"):
        r = proj.result("phase14", pid)
        assert r["completed"] == 30 and r["validity"]["valid"] and r["provenance"]["executor"] == "ssm"
        assert set(r["provenance"]["nodes"].values()) == {"127.0.0.1"}
    steps = [shlex.split(s.splitlines()[-1])[3] for s in agent.scripts]
    assert {"fetch", "preflight", "start", "bench", "stop", "collect"} <= set(steps)
    # the NIXL preflight ran through SSM too, with the pattern's own UCX environment (cuda_copy,tcp)
    marker = proj.result("phase14", "p14-tcp-1k-c1")["provenance"]["preflight"]
    assert marker["transport"] == "tcp" and marker["verified"] and marker["local_substitute"] is None
    assert marker["env"]["UCX_TLS"] == "cuda_copy,tcp" and marker["nodes"]["node1"]["instance_id"] == ids[0]
    entries = []
    for ledger in (tmp_path / "noderoot").glob("*/phase14/runs/*/procs.json"):
        entries.extend(json.loads(ledger.read_text()))
    assert {"unified", "producer", "consumer", "proxy"} <= {e["name"] for e in entries}
    assert alive_groups(entries) == [] and alive_groups(ledger_entries(proj.root)) == []


def test_a_pair_that_failed_health_is_not_leased_again_in_the_same_run(tmp_path, monkeypatch) -> None:
    from disagglab.aws import NodeSpec, PairSpec
    from disagglab.run.fleet import Fleet

    monkeypatch.chdir(tmp_path)
    cfg = _cfg()
    cfg["executor"] = "ssm"
    pairs = [PairSpec(i, NodeSpec("node1", f"i-00000000000000{i}a1", "10.0.0.1"), NodeSpec("node2", f"i-00000000000000{i}a2", "10.0.0.2")) for i in range(2)]
    ex = Fleet(transport=None, storage=None, cfg=cfg, pairs=pairs)
    with ex.lease_pair() as first:
        assert first.index == 0
        ex.report_bad_pair(first, "node1 has PingStatus ConnectionLost")
    with ex.lease_pair() as second:
        assert second.index == 1
        ex.report_bad_pair(second, "node2 is not registered with SSM")
    with pytest.raises(RuntimeError, match="every node pair failed its health check in this run"), ex.lease_pair():
        pass


def test_a_command_without_a_final_status_is_cancelled_at_the_deadline(aws_env, storage, tmp_path) -> None:
    ticks = iter(range(0, 10_000_000, 600))
    t = transport(storage, tmp_path, clock=lambda: float(next(ticks)), sleep=lambda s: None)
    node = online_node()
    key, sha = deploy_runner(storage)
    t.prepare(node, "phase1", storage, key, sha, sys.executable)
    cancelled = []
    real_cancel = t.ssm.cancel_command
    t.ssm.cancel_command = lambda **kw: (cancelled.append(kw), real_cancel(**kw))
    # no agent: the invocation stays Pending forever
    outcome = t.run_step(node, "phase1", ["stop", "--node-dir", t.node_dir(node, "phase1"), "--pattern", "p1-x"], 300)
    assert not outcome.ok and "no final SSM status" in outcome.cause and node.instance_id in outcome.cause
    assert cancelled == [{"CommandId": t.sent[0], "InstanceIds": [node.instance_id]}]


def test_execution_timeout_is_capped_by_config(aws_env, storage, tmp_path) -> None:
    t = transport(storage, tmp_path, execution_timeout_s=120)
    node = online_node()
    key, sha = deploy_runner(storage)
    t.prepare(node, "phase1", storage, key, sha, sys.executable)
    with FakeAgent(REGION, storage.client, node_env(aws_env)):
        assert t.run_step(node, "phase1", ["stop", "--node-dir", t.node_dir(node, "phase1"), "--pattern", "p1-x"], 5000).ok
    cmd = boto3.client("ssm", region_name=REGION).list_commands(CommandId=t.sent[0])["Commands"][0]
    assert cmd["Parameters"]["executionTimeout"] == ["120"]
