"""A 2 prefill x 2 decode tcp pattern through real Snakemake with the stand-in (issue 12).

Four servers start (each its own process, port and log) and stop; the proxy spreads requests
over both decode instances (and, in round-robin mode, over two unified replicas); the result records the topology, the GPUs used, per-GPU throughput
and KV evidence per decode instance. One decode instance that re-prefills makes the result
invalid, naming it.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import Project, alive_groups, ledger_entries, make_project

PHASE = "phase91"
CLEAN = "p91-tcp-2p2d"
REPREFILL = "p91-tcp-2p2d-reprefill"
REPLICAS = "p91-unified-2r"
TOPOLOGY = {"prefill": {"instances": 2, "tp_size": 2}, "decode": {"instances": 2, "tp_size": 1}}


def _plan() -> dict:
    patterns = [{"id": pid, "backend": "tcp", "prompt_tokens": 256, "concurrency": 2, **TOPOLOGY} for pid in (CLEAN, REPREFILL)]
    patterns.append({"id": REPLICAS, "backend": "unified", "prompt_tokens": 256, "concurrency": 2, "unified": {"instances": 2, "tp_size": 2}})
    return {
        "phase": 91, "name": "topology", "description": "2P2D with the stand-in",
        "infrastructure": {"instance_type": "g5.12xlarge", "node_count": 2, "model": "Qwen/Qwen2.5-7B-Instruct",
                           "vllm_version": "v0.15.1", "venv_path": "/opt/venv", "gpu_count_per_node": 4, "tp_size": 1},
        "common_settings": {"max_tokens": 4, "warmup_iterations": 2, "measurement_iterations": 12, "gpu_memory_utilization": 0.9,
                            "max_num_batched_tokens": 4096, "measurement_type": "online"},
        "layers": [{"id": "L0", "name": "2P2D", "priority": "P0", "description": "topology", "patterns": patterns}],
    }


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, subprocess.CompletedProcess[str]]:
    project = make_project(tmp_path_factory.mktemp("topology") / "proj")
    project.write_plan(PHASE, _plan())
    env = {"DISAGGLAB_FAULTS": json.dumps({REPREFILL: {"consumer-1": "ignore_kv_params"}})}
    out = project.snakemake("--keep-going", f"results/{PHASE}/L0.done", "--cores", "1", env=env)
    return project, out


def test_four_servers_start_and_stop_and_nothing_is_left(ran) -> None:
    project, out = ran
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    entries = ledger_entries(project.root)
    names = sorted(e["name"] for e in entries if e["name"] != "proxy" and e["name"] != "benchmark")
    assert names.count("producer-1") == 2 and names.count("consumer-1") == 2, names  # per pattern: producer, producer-1, ...
    assert len({e["pid"] for e in entries}) == len(entries)
    assert alive_groups(entries) == []


def test_the_result_records_topology_gpus_and_per_gpu_throughput(ran) -> None:
    project, _ = ran
    result = project.result(PHASE, CLEAN)
    assert result["spec"]["topology"] == TOPOLOGY
    roles = result["description"]["roles"]
    assert roles["producer"]["instances"] == 2 and roles["producer"]["servers"][1] == {"name": "producer-1", "gpus": [2, 3]}
    assert roles["consumer"]["servers"] == [{"name": "consumer", "gpus": [0]}, {"name": "consumer-1", "gpus": [1]}]
    assert result["description"]["gpus_used"] == 6 and result["per_gpu"]["gpus"] == 6
    for key in ("request_throughput", "output_throughput", "total_token_throughput"):
        assert result["per_gpu"][f"{key}_per_gpu"] == pytest.approx(result[key] / 6)


def test_requests_spread_over_both_decode_instances_each_with_kv_evidence(ran) -> None:
    project, _ = ran
    result = project.result(PHASE, CLEAN)
    kv = result["kv_transfer"]
    assert result["validity"]["valid"], result["validity"]
    per = {e["server"]: e for e in kv["instances"]}
    assert sorted(per) == ["consumer", "consumer-1"]
    # The counters are read around the benchmark, so they include its 2 warmup requests.
    assert sum(e["requests"] for e in per.values()) == result["completed"] + 2 == 14
    for e in per.values():
        assert e["requests"] > 0 and e["transfers"] >= e["requests"] and e["valid"], e


def test_a_decode_instance_that_re_prefills_makes_the_result_invalid_naming_it(ran) -> None:
    project, _ = ran
    result = project.result(PHASE, REPREFILL)
    assert not result["validity"]["valid"]
    (reason,) = result["validity"]["reasons"]
    assert reason.startswith("decode instance consumer-1: ") and "re-prefilled locally" in reason, reason
    per = {e["server"]: e for e in result["kv_transfer"]["instances"]}
    assert per["consumer"]["valid"] and not per["consumer-1"]["valid"]
    marker = json.loads((project.root / "results" / PHASE / "L0.done").read_text())
    assert marker["invalid"] == [REPREFILL]


def test_unified_replicas_share_the_requests_behind_the_proxy(ran) -> None:
    project, _ = ran
    result = project.result(PHASE, REPLICAS)
    assert result["validity"]["valid"], result["validity"]
    assert result["description"]["roles"]["unified"]["servers"] == [{"name": "unified", "gpus": [0, 1]},
                                                                     {"name": "unified-1", "gpus": [2, 3]}]
    assert result["per_gpu"]["gpus"] == 4
    kv = result["kv_transfer"]
    assert kv["required"] is False and kv["reason"].startswith("unified: no KV transfer expected; requests per replica: ")
    per = {e["server"]: e["requests"] for e in kv["instances"]}
    assert sorted(per) == ["unified", "unified-1"] and sum(per.values()) == result["completed"] + 2 == 14  # warmup included
    assert min(per.values()) >= 6  # round robin: 7 each, give or take the order of health probes and warmup
    (ledger,) = (project.root / "results/.local/nodes/node1").glob(f"{PHASE}/runs/{REPLICAS}/procs.json")
    names = sorted(e["name"] for e in json.loads(ledger.read_text()))
    assert names == ["benchmark", "proxy", "unified", "unified-1"], names


def test_both_decode_servers_of_node2_booked_their_kv_transfers_on_one_shared_link(ran) -> None:
    project, _ = ran
    nodes = project.root / "results/.local/nodes"
    link = nodes / f"node2/{PHASE}/sim-node-link"
    boot, free_at = link.read_text().split()
    assert boot == open("/proc/sys/kernel/random/boot_id").read().strip() and float(free_at) > 0
    assert not (nodes / f"node1/{PHASE}/sim-node-link").exists()  # producers send; the receiving node books
    logs = [(nodes / f"node2/{PHASE}/runs/{CLEAN}/logs/{name}.log").read_text() for name in ("consumer", "consumer-1")]
    assert all(f"KV link: shared by the node's stand-ins through {link.resolve()}" in text for text in logs), logs[0][:2000]
