"""Task definitions: data (argv lists, env maps), the reference `vllm serve` flags, and
an engine switch that changes the executable and nothing else."""

from __future__ import annotations

import copy
import json

import jinja2
import pytest

from disagglab.paths import PLANS_DIR
from disagglab.plan.config import load_config_file
from disagglab.plan.model import auto_max_model_len, load_plan
from disagglab.tasks.render import BINDINGS, render_task

CFG = load_config_file()
PLAN = load_plan(PLANS_DIR / "phase14.json")


def task(pid: str, role: str, cfg: dict = CFG) -> dict:
    return json.loads(render_task(PLAN.pattern(pid), role, "phase14", cfg))


def serve_args(argv: list[str]) -> list[str]:
    return argv[argv.index("serve"):]


def test_unified_server_argv_is_the_reference_command_line() -> None:
    t = task("p14-unified-4k-c1", "unified")
    assert t["node"] == "node1" and t["role"] == "unified"
    assert serve_args(t["servers"][0]["argv"]) == [
        "serve", "Qwen/Qwen2.5-7B-Instruct", "--host", "${bind_host}", "--port", "${unified_port}",
        "--tensor-parallel-size", "1", "--gpu-memory-utilization", "0.9", "--max-num-batched-tokens", "4096",
        "--max-model-len", "4096", "--no-enable-prefix-caching",
    ]
    assert t["servers"][0]["env"] == {}
    assert "proxy" not in t


@pytest.mark.parametrize(("role", "kv_role", "node", "host"), [("producer", "kv_producer", "node1", "${node1_host}"), ("consumer", "kv_consumer", "node2", "${node2_host}")])
def test_disaggregated_servers_use_nixl_with_the_right_role(role: str, kv_role: str, node: str, host: str) -> None:
    t = task("p14-tcp-4k-c1", role)
    server = t["servers"][0]
    argv = server["argv"]
    kv = json.loads(argv[argv.index("--kv-transfer-config") + 1])
    assert kv == {"kv_connector": "NixlConnector", "kv_role": kv_role, "kv_connector_extra_config": {"backends": ["UCX"]}}
    assert t["node"] == node
    assert server["env"]["VLLM_NIXL_SIDE_CHANNEL_HOST"] == host
    assert server["env"]["VLLM_NIXL_SIDE_CHANNEL_PORT"] == f"${{{role}_side_channel_port}}"
    assert server["env"]["UCX_TLS"] == "cuda_copy,tcp"


def test_efa_uses_libfabric_settings() -> None:
    server = task("p14-efa-4k-c1", "producer")["servers"][0]
    kv = json.loads(server["argv"][server["argv"].index("--kv-transfer-config") + 1])
    assert kv["kv_connector_extra_config"]["backends"] == ["LIBFABRIC"]
    assert server["env"]["FI_PROVIDER"] == "efa" and "UCX_TLS" not in server["env"]


def test_consumer_holds_proxy_and_benchmark_and_producer_does_not() -> None:
    c = task("p14-tcp-4k-c1", "consumer")
    p = task("p14-tcp-4k-c1", "producer")
    assert "proxy" not in p and "benchmark" not in p
    proxy = c["proxy"]["argv"]
    assert proxy[proxy.index("--prefiller-hosts") + 1] == "${node1_host}"
    assert proxy[proxy.index("--decoder-ports") + 1] == "${consumer_port}"
    bench = c["benchmark"]["argv"]
    assert bench[bench.index("--base-url") + 1] == "http://${node2_host}:${proxy_port}"
    assert bench[bench.index("--prompt-tokens") + 1] == "4000"
    assert c["benchmark"]["kv_transfer_evidence"] == "consumer"


def test_engine_changes_only_the_executable() -> None:
    # On the nodes (executor ssm). With executor local, engine vllm also applies the
    # local_vllm section (model, CPU tuning): tests/test_local_vllm.py.
    vllm_cfg = copy.deepcopy(CFG)
    vllm_cfg["engine"] = "vllm"
    vllm_cfg["executor"] = "ssm"
    for pid, role in [("p14-unified-1k-c1", "unified"), ("p14-tcp-4k-c1", "producer"), ("p14-efa-4k-c1", "consumer")]:
        sim, real = task(pid, role), task(pid, role, vllm_cfg)
        s_argv, r_argv = sim["servers"][0]["argv"], real["servers"][0]["argv"]
        assert serve_args(s_argv) == serve_args(r_argv)
        assert r_argv[: r_argv.index("serve")] == ["/opt/dlami/nvme/venv/vllm-0.15/bin/vllm"]
        assert s_argv[1].endswith("scripts/vllm_sim.py")
        for key in ("engine", "servers"):
            sim.pop(key), real.pop(key)
        assert sim == real
        assert task(pid, role)["servers"][0]["env"] == task(pid, role, vllm_cfg)["servers"][0]["env"]


def test_prefix_cache_and_overrides_reach_the_argv() -> None:
    plan = load_plan(PLANS_DIR / "phase15.json")
    t = json.loads(render_task(plan.pattern("p15-L1-tcp-4k-c4-pc"), "producer", "phase15", CFG))
    assert "--enable-prefix-caching" in t["servers"][0]["argv"]
    t = json.loads(render_task(plan.pattern("p15-L2-tcp-20k-c8"), "consumer", "phase15", CFG))
    argv = t["servers"][0]["argv"]
    assert argv[argv.index("--max-model-len") + 1] == "24576"
    assert t["benchmark"]["argv"][t["benchmark"]["argv"].index("--measurement-type") + 1] == "offline"


def test_auto_max_model_len_formula() -> None:
    assert auto_max_model_len(1000, 10) == 1024
    assert auto_max_model_len(1014, 10) == 1024
    assert auto_max_model_len(1015, 10) == 2048
    assert auto_max_model_len(20000, 10) == 20480


def test_every_runtime_token_is_known() -> None:
    import re

    for pattern in PLAN.patterns.values():
        for role in pattern.roles:
            text = render_task(pattern, role, "phase14", CFG)
            assert set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", text)) <= BINDINGS


def test_wrong_role_and_undefined_variables_are_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="has no role 'producer'"):
        render_task(PLAN.pattern("p14-unified-1k-c1"), "producer", "phase14", CFG)
    from disagglab.tasks import render

    monkeypatch.setattr(render, "TEMPLATE_DIR", tmp_path)
    render._env.cache_clear()
    (tmp_path / "unified.json.jinja2").write_text('{"x": {{ spec.no_such_key | tojson }}}')
    try:
        with pytest.raises(jinja2.UndefinedError):
            render_task(PLAN.pattern("p14-unified-1k-c1"), "unified", "phase14", CFG)
    finally:
        render._env.cache_clear()


def test_rendering_is_deterministic() -> None:
    p = PLAN.pattern("p14-efa-1k-c1")
    assert render_task(p, "consumer", "phase14", CFG) == render_task(p, "consumer", "phase14", copy.deepcopy(CFG))


def test_open_loop_and_goodput_reach_the_benchmark_only_when_set(tmp_path) -> None:
    doc = json.loads((PLANS_DIR / "phase14.json").read_text())
    doc["common_settings"]["slo"] = {"ttft_ms": 800, "tpot_ms": 60}
    pat = doc["layers"][0]["patterns"][1]
    pat.update(request_rate=3.5, burstiness=0.5, slo={"tpot_ms": 40})
    path = tmp_path / "phase14.json"
    path.write_text(json.dumps(doc))
    plan = load_plan(path)
    argv = json.loads(render_task(plan.pattern(pat["id"]), "consumer", "phase14", CFG))["benchmark"]["argv"]
    assert argv[argv.index("--request-rate") + 1] == "3.5" and argv[argv.index("--burstiness") + 1] == "0.5"
    assert argv[argv.index("--goodput") + 1:] == ["tpot:40", "ttft:800"]
    other = json.loads(render_task(plan.pattern("p14-unified-1k-c1"), "unified", "phase14", CFG))["benchmark"]["argv"]
    assert "--request-rate" not in other and other[other.index("--goodput") + 1:] == ["tpot:60", "ttft:800"]
    plain = json.loads(render_task(PLAN.pattern("p14-unified-1k-c1"), "unified", "phase14", CFG))["benchmark"]["argv"]
    assert "--goodput" not in plain and "--request-rate" not in plain
