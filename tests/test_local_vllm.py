"""engine: vllm with executor: local. The local_vllm section reaches the task definitions
only then, never the AWS ones; efa is refused with a reason. No vLLM needed for these
(tests/test_local_vllm_slow.py runs the real thing)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from disagglab.paths import CONFIG_DIR, PLANS_DIR, ROOT
from disagglab.plan import local_vllm
from disagglab.plan.config import load_config_file, validate_config
from disagglab.plan.model import load_plan
from disagglab.tasks.render import render_task

from conftest import Project, alive_groups, ledger_entries

CFG = load_config_file()
PLAN = load_plan(PLANS_DIR / "phase14.json")


def with_engine(cfg: dict, engine: str, executor: str) -> dict:
    out = copy.deepcopy(cfg)
    out["engine"], out["executor"] = engine, executor
    return out


def aws_config() -> dict:
    cfg = copy.deepcopy(CFG)
    for key, value in yaml.safe_load((CONFIG_DIR / "aws.yaml").read_text()).items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return validate_config(cfg, "aws.yaml over config.yaml")


def server(pid: str, role: str, cfg: dict) -> dict:
    return json.loads(render_task(PLAN.pattern(pid), role, "phase14", cfg))["servers"][0]


def kv_config(argv: list[str]) -> dict:
    return json.loads(argv[argv.index("--kv-transfer-config") + 1])


def test_local_engine_replaces_model_and_venv_and_keeps_every_other_serve_flag() -> None:
    local, remote = with_engine(CFG, "vllm", "local"), with_engine(CFG, "vllm", "ssm")
    model = str((ROOT / CFG["local_vllm"]["model"]).resolve())
    venv = str((ROOT / CFG["local_vllm"]["venv_path"]).resolve())
    for pid, role in [("p14-unified-1k-c1", "unified"), ("p14-tcp-1k-c1", "producer"), ("p14-tcp-1k-c1", "consumer")]:
        here, there = server(pid, role, local)["argv"], server(pid, role, remote)["argv"]
        assert here[0] == f"{venv}/bin/vllm" and here[1:3] == ["serve", model]
        assert there[1:3] == ["serve", "Qwen/Qwen2.5-7B-Instruct"]
        if role == "unified":
            assert here[3:] == there[3:]
            continue
        # Only the kv-transfer-config differs, by the configured CPU extras merged in.
        i = here.index("--kv-transfer-config")
        assert here[3:i] == there[3:i] and here[i + 2:] == there[i + 2:]
        assert kv_config(here) == {
            "kv_connector": "NixlConnector", "kv_role": f"kv_{role}", "kv_buffer_device": "cpu",
            "kv_connector_extra_config": {"backends": ["UCX"], "num_threads": 0},
        }


def test_local_engine_env_has_cpu_tuning_per_role() -> None:
    local = with_engine(CFG, "vllm", "local")
    binds = CFG["local_vllm"]["omp_threads_bind"]
    for pid, role in [("p14-unified-1k-c1", "unified"), ("p14-tcp-1k-c1", "producer"), ("p14-tcp-1k-c1", "consumer")]:
        env = server(pid, role, local)["env"]
        assert env["VLLM_CPU_OMP_THREADS_BIND"] == binds[role]
        assert env["NIXL_PTHR_DELAY_US"] == "1000" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        if role != "unified":
            assert env["UCX_TLS"] == "tcp" and env["UCX_NET_DEVICES"] == "lo"
            assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == f"${{{role}_side_channel_port}}"
    bench = json.loads(render_task(PLAN.pattern("p14-tcp-1k-c1"), "consumer", "phase14", local))["benchmark"]["argv"]
    assert bench[bench.index("--model") + 1] == str((ROOT / CFG["local_vllm"]["model"]).resolve())


def test_nothing_local_leaks_into_the_aws_or_sim_tasks() -> None:
    aws = aws_config()
    assert aws["engine"] == "vllm" and aws["executor"] == "ssm" and not local_vllm.active(aws)
    for cfg in (aws, CFG, with_engine(CFG, "sim", "ssm")):
        for pattern in PLAN.patterns.values():
            for role in pattern.roles:
                text = render_task(pattern, role, "phase14", cfg)
                for local_only in ("kv_buffer_device", "NIXL_PTHR_DELAY_US", "VLLM_CPU_", "tiny-llama", "UCX_NET_DEVICES\": \"lo"):
                    assert local_only not in text, (pattern.id, role, local_only)


def test_refusals_name_their_reason(tmp_path: Path) -> None:
    cfg = with_engine(CFG, "vllm", "local")
    assert "needs an EFA device" in local_vllm.refusal(cfg, "efa")
    cfg["local_vllm"]["venv_path"] = str(tmp_path / "missing-venv")
    assert "make vllm-cpu" in local_vllm.refusal(cfg, "tcp")
    assert local_vllm.refusal(with_engine(CFG, "sim", "local"), "efa") is None
    assert local_vllm.refusal(with_engine(CFG, "vllm", "ssm"), "efa") is None


def test_efa_pattern_with_local_vllm_is_a_failure_record_not_a_result(project: Project) -> None:
    out = project.snakemake("results/phase14/runs/p14-efa-1k-c1.json", "--config", "engine=vllm")
    assert out.returncode != 0
    record = json.loads((project.root / "results/phase14/failures/p14-efa-1k-c1.json").read_text())
    assert record["engine"] == "vllm" and record["step"] == "prepare" and record["node"] == "control"
    assert "needs an EFA device" in record["cause"]
    assert not (project.root / "results/phase14/runs/p14-efa-1k-c1.json").exists()
    assert alive_groups(ledger_entries(project.root)) == []
