"""Topology per pattern (issue 12): N prefill x M decode servers, each with its own GPUs and ports.

Plans without a topology render byte-identical tasks (the digests recorded before topology
existed); a topology is validated (file, JSON path, reason) and rendered one server per instance.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from disagglab.errors import PlanError
from disagglab.plan.config import load_sources, merge, validate_config
from disagglab.plan.model import load_plan
from disagglab.tasks.dag import Phases
from disagglab.tasks.nodefiles import files_for_pattern, node_file_digests
from disagglab.tasks.render import render_task

from conftest import ROOT

GOLDEN = ROOT / "tests" / "data" / "task_digests_before_topology.json"
CONFIGS = {"config.yaml": ["config/config.yaml"], "config.yaml+aws.yaml": ["config/config.yaml", "config/aws.yaml"]}
BASE = json.loads((ROOT / "plans" / "phase14.json").read_text())
BASE["phase"] = 99
for _layer in BASE["layers"]:
    for _pat in _layer.get("patterns", []):  # L1 is a sweep: its id_template writes p{phase}-
        _pat["id"] = _pat["id"].replace("p14-", "p99-")
UNIFIED = ["layers", 0, "patterns", 0]  # p99-unified-1k-c1
TCP = ["layers", 0, "patterns", 1]  # p99-tcp-1k-c1


def config(name: str) -> dict:
    files = [ROOT / f for f in CONFIGS[name]]
    return validate_config(merge(load_sources(files)), name)


def with_topology(where: list, **roles: dict) -> dict:
    doc = copy.deepcopy(BASE)
    target = doc
    for key in where:
        target = target[key]
    target.update(roles)
    return doc


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_plans_without_a_topology_render_the_tasks_they_rendered_before(cfg_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every task of every plan, digest for digest, as before topology existed (so nothing reruns).

    A deliberate template change breaks this test: regenerate the file from the commit before it."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SCRIPTS_BUCKET", "b")
    golden = json.loads(GOLDEN.read_text())[cfg_name]
    cfg = config(cfg_name)
    now = {}
    for plans_dir in ("plans", "tests/data/seed_readme_plan"):
        phases = Phases(ROOT / plans_dir, cfg)
        for plan in sorted((ROOT / plans_dir).glob("phase*.json")):
            for pid, pattern in phases.plan(plan.stem).patterns.items():
                if "topology" in pattern.spec:  # written after topologies existed (phase16): nothing to compare with
                    assert not any(k.startswith(f"{plans_dir}/{plan.stem}/{pid}/") for k in golden), pid
                    continue
                for role in pattern.roles:
                    now[f"{plans_dir}/{plan.stem}/{pid}/{role}"] = phases.task_digest(plan.stem, pid, role)
    assert now.keys() >= golden.keys()
    assert {k: now[k] for k in golden} == golden


BAD = [
    ("prefill oversubscribes node1", with_topology(TCP, prefill={"instances": 3, "tp_size": 2}),
     "layers[0].patterns[1].prefill", "3 instances x tp_size 2 = 6 GPUs on node1, but gpu_count_per_node is 4"),
    ("decode oversubscribes node2", with_topology(TCP, decode={"instances": 5}),
     "layers[0].patterns[1].decode", "5 instances x tp_size 1 = 5 GPUs on node2, but gpu_count_per_node is 4"),
    ("prefill on a unified pattern", with_topology(UNIFIED, prefill={"instances": 2}),
     "layers[0].patterns[0].prefill", "'prefill' does not apply to a unified pattern (it takes 'unified')"),
    ("unified on a tcp pattern", with_topology(TCP, unified={"instances": 1}),
     "layers[0].patterns[1].unified", "'unified' does not apply to a tcp pattern (it takes 'prefill' and 'decode')"),
    ("unified replicas oversubscribe node1", with_topology(UNIFIED, unified={"instances": 3, "tp_size": 2}),
     "layers[0].patterns[0].unified", "3 instances x tp_size 2 = 6 GPUs on node1, but gpu_count_per_node is 4"),
    ("instances zero", with_topology(TCP, decode={"instances": 0}), "layers[0].patterns[1].decode.instances", "less than the minimum of 1"),
    ("instances missing", with_topology(TCP, decode={"tp_size": 2}), "layers[0].patterns[1].decode.instances", "required key is missing"),
    ("unknown topology key", with_topology(TCP, decode={"instances": 1, "gpus": [0]}), "layers[0].patterns[1].decode.gpus", "unknown key 'gpus'"),
    ("tp_size 32", with_topology(TCP, prefill={"instances": 1, "tp_size": 32}), "layers[0].patterns[1].prefill.tp_size", "greater than the maximum of 16"),
]


@pytest.mark.parametrize(("name", "doc", "path", "reason"), BAD, ids=[c[0] for c in BAD])
def test_a_bad_topology_is_refused_with_file_path_and_reason(tmp_path: Path, name: str, doc: dict, path: str, reason: str) -> None:
    plan = tmp_path / "phase99.json"
    plan.write_text(json.dumps(doc, indent=2))
    out = subprocess.run([sys.executable, "-m", "disagglab", "validate", str(plan)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert any(str(plan) in ln and f": {path}: " in ln and reason in ln for ln in out.stderr.splitlines()), out.stderr


def test_two_nodes_are_needed_for_disaggregation_also_with_a_topology(tmp_path: Path) -> None:
    """node_count 1 would put prefill and decode GPUs on one node: refused (the pipeline runs one role per node)."""
    doc = with_topology(TCP, prefill={"instances": 2}, decode={"instances": 2})
    doc["infrastructure"]["node_count"] = 1
    plan = tmp_path / "phase99.json"
    plan.write_text(json.dumps(doc))
    with pytest.raises(PlanError) as err:
        load_plan(plan)
    assert any(p.path == "infrastructure.node_count" and "need two nodes" in p.reason for p in err.value.problems)


def two_by_two(tmp_path: Path) -> tuple:
    doc = with_topology(TCP, prefill={"instances": 2, "tp_size": 2}, decode={"instances": 2})
    plan = tmp_path / "phase99.json"
    plan.write_text(json.dumps(doc))
    return load_plan(plan).pattern("p99-tcp-1k-c1")


def test_the_effective_spec_carries_the_topology_with_defaults_filled_in(tmp_path: Path) -> None:
    pattern = two_by_two(tmp_path)
    assert pattern.spec["topology"] == {"prefill": {"instances": 2, "tp_size": 2}, "decode": {"instances": 2, "tp_size": 1}}


def test_each_server_gets_its_own_gpus_ports_side_channel_and_the_proxy_gets_them_all(tmp_path: Path) -> None:
    pattern = two_by_two(tmp_path)
    cfg = config("config.yaml")
    producer = json.loads(render_task(pattern, "producer", "phase99", cfg))
    consumer = json.loads(render_task(pattern, "consumer", "phase99", cfg))
    assert [s["name"] for s in producer["servers"]] == ["producer", "producer-1"]
    assert [s["env"]["CUDA_VISIBLE_DEVICES"] for s in producer["servers"]] == ["0,1", "2,3"]
    assert [s["env"]["VLLM_NIXL_SIDE_CHANNEL_PORT"] for s in producer["servers"]] == ["${producer_side_channel_port}", "${producer_side_channel_port_1}"]
    for server, port in zip(producer["servers"], ("${producer_port}", "${producer_port_1}"), strict=True):
        argv = server["argv"]
        assert argv[argv.index("--port") + 1] == port and argv[argv.index("--tensor-parallel-size") + 1] == "2"
        assert server["health_url"] == f"http://${{node1_host}}:{port}/health"
    assert [s["env"]["CUDA_VISIBLE_DEVICES"] for s in consumer["servers"]] == ["0", "1"]
    assert [s["name"] for s in consumer["servers"]] == ["consumer", "consumer-1"]
    proxy = consumer["proxy"]["argv"]
    at = proxy.index("--prefiller-hosts")
    assert proxy[at:at + 12] == ["--prefiller-hosts", "${node1_host}", "${node1_host}", "--prefiller-ports", "${producer_port}", "${producer_port_1}",
                                 "--decoder-hosts", "${node2_host}", "${node2_host}", "--decoder-ports", "${consumer_port}", "${consumer_port_1}"]


def test_unified_replicas_render_the_proxy_in_round_robin_mode_and_the_benchmark_talks_to_it(tmp_path: Path) -> None:
    plan = tmp_path / "phase99.json"
    plan.write_text(json.dumps(with_topology(UNIFIED, unified={"instances": 2, "tp_size": 2})))
    pattern = load_plan(plan).pattern("p99-unified-1k-c1")
    assert pattern.uses_proxy and "scripts/proxy/relay.py" in files_for_pattern(pattern, "sim", node_file_digests())
    task = json.loads(render_task(pattern, "unified", "phase99", config("config.yaml")))
    assert [(s["name"], s["env"]["CUDA_VISIBLE_DEVICES"]) for s in task["servers"]] == [("unified", "0,1"), ("unified-1", "2,3")]
    proxy = task["proxy"]["argv"]
    at = proxy.index("--unified-hosts")
    assert proxy[at:at + 6] == ["--unified-hosts", "${node1_host}", "${node1_host}", "--unified-ports", "${unified_port}", "${unified_port_1}"]
    assert not any(a.startswith(("--prefiller", "--decoder")) for a in proxy)
    assert task["proxy"]["health_url"] == "http://${node1_host}:${proxy_port}/health"
    bench = task["benchmark"]
    assert bench["target"] == "proxy" and bench["argv"][bench["argv"].index("--base-url") + 1] == "http://${node1_host}:${proxy_port}"
    one = load_plan(ROOT / "plans" / "phase14.json").pattern("p14-unified-1k-c1")
    assert not one.uses_proxy and "scripts/proxy/relay.py" not in files_for_pattern(one, "sim", node_file_digests())


def test_fixed_ports_of_instances_are_derived_from_the_configured_ones() -> None:
    from disagglab.plan.topology import fixed_ports
    from disagglab.run.fleet import PORT_NAMES

    ports = fixed_ports(config("config.yaml+aws.yaml")["aws"]["ports"])
    assert set(ports) == set(PORT_NAMES)
    assert (ports["consumer_port_1"], ports["consumer_side_channel_port_1"]) == (ports["consumer_port"] + 1, ports["consumer_side_channel_port"] + 10)
    node2 = [ports[k] for k in ports if k.startswith(("consumer", "proxy"))]
    assert len(node2) == len(set(node2)), "the ports bound on node2 collide"


def test_a_topology_whose_listeners_share_a_fixed_port_is_refused_naming_both(tmp_path: Path) -> None:
    from disagglab.plan.checks import plan_findings

    plan_file = tmp_path / "phase99.json"
    doc = with_topology(UNIFIED, unified={"instances": 2, "tp_size": 1})
    doc["infrastructure"]["gpu_count_per_node"] = 4
    plan_file.write_text(json.dumps(doc))
    plan = load_plan(plan_file)
    cfg = config("config.yaml+aws.yaml")
    assert plan_findings(plan, cfg).errors == []  # the shipped ports: proxy 8000, replicas 8100, 8101
    cfg["aws"]["ports"]["proxy_port"] = cfg["aws"]["ports"]["unified_port"] + 1
    errors = plan_findings(plan, cfg).errors
    assert [(e.path, e.reason.split(": on AWS")[0]) for e in errors] == [
        ("layers[0].patterns[0]", f"port {cfg['aws']['ports']['proxy_port']} on node1: unified-1 (aws.ports.unified_port + 1) and the proxy (aws.ports.proxy_port)")]
    # A producer at tp 2 holds two side-channel ports: base and base + 1.
    doc = with_topology(TCP, prefill={"instances": 1, "tp_size": 2}, decode={"instances": 1, "tp_size": 1})
    doc["infrastructure"]["gpu_count_per_node"] = 4
    plan_file.write_text(json.dumps(doc))
    cfg = config("config.yaml+aws.yaml")
    cfg["aws"]["ports"]["proxy_port"] = cfg["aws"]["ports"]["producer_side_channel_port"] + 1
    reasons = [e.reason for e in plan_findings(load_plan(plan_file), cfg).errors]
    assert len(reasons) == 1 and reasons[0].startswith(f"port {cfg['aws']['ports']['proxy_port']} on node1: producer NIXL side channel rank 1 and the proxy")
