"""Real vLLM (CPU build) through the whole pipeline on this machine: one unified and one tcp
pattern of a tiny plan, a 2 prefill x 1 decode tcp topology, and a shared-prefix workload whose
prefix-cache hits real vLLM counts in its own /metrics, with `--config engine=vllm`,
the same templates, runner, proxy and benchmark as everywhere else.

Marker `vllm_cpu`: deselected by default (pyproject addopts), run with `make test-vllm` or
`.venv/bin/python -m pytest -m vllm_cpu tests/test_local_vllm_slow.py`. It needs
`make vllm-cpu` (about 3 GB); when that environment is missing the test fails and says so,
it is never skipped. Two ~3 GB servers run at once; the test checks none is left behind.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import ROOT, Project, alive_groups, ledger_entries, live_group_members, make_project

pytestmark = pytest.mark.vllm_cpu

VENV = ROOT / ".venv-vllm"
MODEL = ROOT / ".models" / "tiny-llama"
MEASURED = 4
TOPOLOGY_ID = "p90-tcp-64-c2-2p1d"
SHARED_ID = "p90-unified-320-c1-shared"
PLAN = {
    "phase": 90,
    "name": "real vLLM on CPU",
    "description": "Tiny plan for the local vLLM-CPU engine: few requests, short prompts.",
    "infrastructure": {"instance_type": "g5.12xlarge", "node_count": 2, "model": "Qwen/Qwen2.5-7B-Instruct",
                       "vllm_version": "v0.15.1", "venv_path": "/opt/dlami/nvme/venv/vllm-0.15",
                       "gpu_count_per_node": 4, "tp_size": 1},
    "common_settings": {"max_tokens": 4, "warmup_iterations": 1, "measurement_iterations": MEASURED,
                        "gpu_memory_utilization": 0.9, "max_num_batched_tokens": 4096,
                        "measurement_type": "online", "prefix_cache": False},
    "layers": [{"id": "L0", "name": "one of each", "priority": "P0", "description": "unified and tcp",
                "patterns": [{"id": "p90-unified-64-c1", "backend": "unified", "prompt_tokens": 64, "concurrency": 1},
                             {"id": "p90-tcp-64-c1", "backend": "tcp", "prompt_tokens": 64, "concurrency": 1}]},
               {"id": "L1", "name": "2P1D", "priority": "P1", "description": "two prefill servers, one decode server",
                "patterns": [{"id": TOPOLOGY_ID, "backend": "tcp", "prompt_tokens": 64, "concurrency": 2,
                              "prefill": {"instances": 2, "tp_size": 1}, "decode": {"instances": 1, "tp_size": 1}}]},
               {"id": "L2", "name": "shared prefix", "priority": "P2", "description": "prefix caching on a shared prefix",
                "patterns": [{"id": SHARED_ID, "backend": "unified", "prompt_tokens": 320, "concurrency": 1, "prefix_cache": True,
                              "workload": {"kind": "shared_prefix", "prefix_tokens": 256, "num_prefixes": 1}}]}],
}


@pytest.fixture
def vllm_project(tmp_path: Path) -> Project:
    missing = [str(p) for p in (VENV / "bin" / "vllm", MODEL / "config.json") if not p.exists()]
    assert not missing, f"the vLLM-CPU environment is not built ({', '.join(missing)} missing): run `make vllm-cpu`"
    project = make_project(tmp_path / "proj")
    cfg = project.root / "config" / "config.yaml"
    text = cfg.read_text()
    for key, path in (("venv_path", ".venv-vllm"), ("model", ".models/tiny-llama")):
        assert f"  {key}: {path}\n" in text
        text = text.replace(f"  {key}: {path}\n", f"  {key}: {ROOT / path}\n")
    # Cold start includes torch.compile of the model on 2 cores (about 100 s per server).
    cfg.write_text(text.replace("health_timeout_s: 120", "health_timeout_s: 300"))
    project.write_plan("phase90", PLAN)
    return project


def test_unified_and_tcp_with_real_vllm(vllm_project: Project) -> None:
    targets = [f"results/phase90/runs/{p['id']}.json" for p in PLAN["layers"][0]["patterns"]]
    t0 = time.monotonic()
    out = vllm_project.snakemake(*targets, "--config", "engine=vllm", timeout=1500)
    elapsed = time.monotonic() - t0
    entries = ledger_entries(vllm_project.root)
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + _failures(vllm_project)
        for pattern in PLAN["layers"][0]["patterns"]:
            result = vllm_project.result("phase90", pattern["id"])
            assert result["engine"] == "vllm" and result["simulated"] is False
            assert result["completed"] == MEASURED and result["failed"] == 0
            assert result["validity"] == {"valid": True, "reasons": []}
            local = result["provenance"]["local_vllm"]
            assert local["model"] == str(MODEL) and local["replaces_model"] == "Qwen/Qwen2.5-7B-Instruct"
            assert result["description"]["model"] == str(MODEL) and result["spec"]["infrastructure"]["model"] == "Qwen/Qwen2.5-7B-Instruct"
            assert local["model_manifest"]["sha256"]["model.safetensors"]
            kv = result["kv_transfer"]
            if pattern["backend"] == "tcp":
                assert kv["required"] and kv["valid"], kv
                assert kv["transfers"] >= result["completed"] and kv["failed_transfers"] == 0, kv
            print(f"{pattern['id']}: healthy after {_healthy(result)}, bench {result['provenance']['steps']['bench']['duration_s']} s, "
                  f"mean TTFT {result['mean_ttft_ms']:.1f} ms, KV {kv['reason']}")
        print(f"two patterns with real vLLM: {elapsed:.0f} s")
    finally:
        # Servers of ~3 GB each: none may outlive the run, whatever failed above.
        assert entries, "the node runners recorded no process"
        assert {e["name"] for e in entries} >= {"unified", "producer", "consumer", "proxy", "benchmark"}
        assert alive_groups(entries) == [], [(e["name"], live_group_members(e["pgid"])) for e in alive_groups(entries)]


def test_two_prefill_servers_and_one_decode_server_with_real_vllm(vllm_project: Project) -> None:
    """2P1D: three real vLLM servers, the proxy spreading prefills over both, KV over NIXL for every request."""
    out = vllm_project.snakemake(f"results/phase90/runs/{TOPOLOGY_ID}.json", "--config", "engine=vllm", timeout=1500)
    entries = ledger_entries(vllm_project.root)
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + _failures(vllm_project)
        result = vllm_project.result("phase90", TOPOLOGY_ID)
        assert result["engine"] == "vllm" and result["simulated"] is False
        assert result["completed"] == MEASURED and result["failed"] == 0 and result["validity"]["valid"], result["validity"]
        roles = result["description"]["roles"]
        assert (roles["producer"]["instances"], roles["consumer"]["instances"], result["description"]["gpus_used"]) == (2, 1, 3)
        kv = result["kv_transfer"]
        assert kv["valid"] and kv["transfers"] >= result["completed"] and kv["failed_transfers"] == 0, kv
        print(f"{TOPOLOGY_ID}: healthy after {_healthy(result)}, mean TTFT {result['mean_ttft_ms']:.1f} ms, KV {kv['reason']}")
    finally:
        names = [e["name"] for e in entries]
        assert {"producer", "producer-1", "consumer", "proxy", "benchmark"} <= set(names), names
        assert alive_groups(entries) == [], [(e["name"], live_group_members(e["pgid"])) for e in alive_groups(entries)]


def test_real_vllm_counts_the_prefix_cache_hits_the_workload_expects(vllm_project: Project) -> None:
    """One shared 256-token prefix (a whole number of blocks at vLLM's 16 and CPU's 128) of 320-token
    prompts, one request at a time: every request after the first (the warmup) reuses it, and vLLM's
    own vllm:prefix_cache_* counters must say so."""
    out = vllm_project.snakemake(f"results/phase90/runs/{SHARED_ID}.json", "--config", "engine=vllm", timeout=1500)
    entries = ledger_entries(vllm_project.root)
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + _failures(vllm_project)
        result = vllm_project.result("phase90", SHARED_ID)
        assert result["engine"] == "vllm" and result["validity"]["valid"], result["validity"]
        measured, check = result["workload"]["measured"], result["workload"]["prefix_cache"]
        assert measured["queried_tokens"] == (MEASURED + 1) * 320, measured
        assert check["expected_hit_rate"] == pytest.approx(MEASURED * 256 / ((MEASURED + 1) * 320))
        assert measured["hit_tokens"] == MEASURED * 256 and not check["flagged"], (measured, check)
        print(f"{SHARED_ID}: {check['note']}, mean TTFT {result['mean_ttft_ms']:.1f} ms")
    finally:
        assert alive_groups(entries) == [], [(e["name"], live_group_members(e["pgid"])) for e in alive_groups(entries)]


def _healthy(result: dict) -> str:
    steps = result["provenance"]["steps"]
    return ", ".join(f"{name} {s:.0f} s" for key, step in steps.items() if key.startswith("start:") for name, s in step["healthy_after_s"].items())


def _failures(project: Project) -> str:
    return "".join(f"\n{p.name}: {p.read_text()}" for p in sorted((project.root / "results" / "phase90" / "failures").glob("*.json")))
