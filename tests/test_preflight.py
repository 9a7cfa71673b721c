"""The NIXL transport preflight: real transfers between two local processes, the evidence
parser on real UCX output, and a real Snakemake run where the preflight gates an efa pattern.

tests/data/ucx_proto_info_read_*.log are the initiator logs of real preflights on this
machine (NIXL 1.5.1 wheel, UCX 1.23.0): UCX_TLS=tcp UCX_NET_DEVICES=lo, and UCX's default
transports (cross-memory attach between two processes of one host).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from disagglab.plan.config import load_config_file
from disagglab.plan.model import load_plan
from disagglab.report.rows import pattern_row
from disagglab.run import preflight

from conftest import ROOT, Project, alive_groups, ledger_entries, make_project

sys.path.insert(0, str(ROOT / "remote"))
import nixl_preflight  # noqa: E402 - the node-side module, loaded from remote/ as the runner does
from ports import free_ports

RUNNER = ROOT / "remote" / "task_runner.py"
DATA = Path(__file__).parent / "data"
TCP_LO = (DATA / "ucx_proto_info_read_tcp_lo.log").read_text()
DEFAULT_CMA = (DATA / "ucx_proto_info_read_default_cma.log").read_text()
LOCAL_ENV = {"UCX_TLS": "tcp", "UCX_NET_DEVICES": "lo", "UCX_PROTO_INFO": "y", "NIXL_LOG_LEVEL": "INFO"}


# ---------------------------------------------------------------------------- evidence parser


def test_ucx_read_over_tcp_loopback_is_tcp_by_software_emulation() -> None:
    seen = nixl_preflight.classify(TCP_LO, "UCX")
    assert seen["transport"] == "tcp" and seen["emulated"] is True
    assert seen["devices"] == ["tcp/lo"] and seen["evidence"] == ["software emulation | tcp/lo"]
    assert seen["source"] == "UCX_PROTO_INFO"
    (table,) = seen["tables"]
    assert table["operation"].startswith("remote memory read by ucp_get*") and "intra-node" in table["title"]


def test_ucx_default_transports_between_two_local_processes_are_shared_memory() -> None:
    seen = nixl_preflight.classify(DEFAULT_CMA, "UCX")
    assert seen["transport"] == "shm" and seen["emulated"] is False
    assert seen["evidence"] == ["zero-copy | cma/memory"]


def test_tables_of_an_agent_to_itself_are_not_evidence() -> None:
    own = "\n".join(ln for ln in TCP_LO.splitlines() if "intra-node" not in ln and "remote memory read" not in ln)
    assert "self cfg#0" in own
    seen = nixl_preflight.classify(own, "UCX")
    assert seen["transport"] == "unknown" and "no UCX protocol table for 'remote memory read'" in seen["evidence"][0]


def _as_efa(text: str, description: str) -> str:
    """The real capture with the documented EFA device (Dynamo docs: srd/rdmap40s0:1) in place of tcp/lo."""
    return text.replace("software emulation | tcp/lo          ", f"{description} | srd/rdmap40s0:1   ")


def test_ucx_over_efa_srd_zero_copy_is_verified_and_emulation_is_not() -> None:
    zero_copy = nixl_preflight.classify(_as_efa(TCP_LO, "zero-copy         "), "UCX")
    assert zero_copy["transport"] == "efa" and not zero_copy["emulated"] and zero_copy["devices"] == ["srd/rdmap40s0:1"]
    assert preflight.efa_verified(zero_copy)
    emulated = nixl_preflight.classify(_as_efa(TCP_LO, "software emulation"), "UCX")
    assert emulated["transport"] == "efa" and emulated["emulated"]
    assert not preflight.efa_verified(emulated)
    marker = {**emulated, "evidence_source": emulated["source"], "efa_verified": False, "marker_path": "m.json"}
    cause = preflight.judge(marker, "efa", require=True)
    assert cause is not None and "software emulation over srd/rdmap40s0:1" in cause and "'software emulation | srd/rdmap40s0:1'" in cause


def test_ucx_striped_over_two_interfaces_or_mixed_with_efa_counts_as_tcp() -> None:
    striped = TCP_LO.replace("software emulation | tcp/lo                             |",
                             "software emulation | 52% on tcp/lo and 48% on tcp/eth0 |")
    seen = nixl_preflight.classify(striped, "UCX")
    assert seen["transport"] == "tcp" and seen["devices"] == ["tcp/eth0", "tcp/lo"]
    mixed = TCP_LO.replace("software emulation | tcp/lo                             |",
                           "zero-copy          | 50% on srd/rdmap40s0:1 and 50% on tcp/eth0 |")
    assert nixl_preflight.classify(mixed, "UCX")["transport"] == "tcp"


@pytest.mark.parametrize(("lines", "transport"), [
    (["I1128 10:00:00.000001   4242 libfabric_topology.cpp:140] Discovered 4 EFA devices",
      "I1128 10:00:00.000002   4242 libfabric_rail_manager.cpp:232] Created 4 rails using provider=efa"], "efa"),
    (["I1128 10:00:00.000001   4242 libfabric_topology.cpp:144] Discovered 1 tcp devices (TCP fallback)",
      "I1128 10:00:00.000002   4242 libfabric_rail_manager.cpp:232] Created 1 rails using provider=tcp"], "tcp"),
    (["I1128 10:00:00.000001   4242 nixl_log.cpp:80] NIXL version: 1.5.1"], "unknown"),
])
def test_libfabric_provider_lines_of_nixl(lines: list[str], transport: str) -> None:
    seen = nixl_preflight.classify("\n".join(lines), "LIBFABRIC")
    assert seen["transport"] == transport
    if transport == "unknown":
        assert "no provider line" in seen["evidence"][0]
    else:
        assert seen["evidence"][0].startswith("Discovered") and f"provider={transport}" in seen["evidence"][1]


def test_judgement_reuse_and_setup() -> None:
    tcp = nixl_preflight.classify(TCP_LO, "UCX")
    marker = {**tcp, "evidence_source": tcp["source"], "efa_verified": preflight.efa_verified(tcp), "marker_path": "m.json"}
    cause = preflight.judge(marker, "efa", require=True)
    assert cause is not None and cause.startswith("efa pattern, but the NIXL preflight moved data over tcp/lo")
    assert "'software emulation | tcp/lo' (UCX_PROTO_INFO)" in cause
    assert preflight.judge(marker, "efa", require=False) is None and preflight.judge(marker, "tcp", require=True) is None
    assert preflight.reusable({"snakemake_run_id": "1-2", "env_sha256": "d"}, "1-2", "d")
    assert not preflight.reusable({"snakemake_run_id": "1-2", "env_sha256": "d"}, "3-4", "d")
    assert not preflight.reusable({"snakemake_run_id": "1-2", "env_sha256": "d"}, "1-2", "e")
    cfg = load_config_file()
    local = preflight.setup_for(cfg, "efa")
    assert local.nixl_backend == "UCX" and local.env == {"UCX_TLS": "tcp", "UCX_NET_DEVICES": "lo"} and "no EFA here" in local.local_substitute
    assert preflight.require_efa(cfg) is False
    aws = copy.deepcopy(cfg)
    aws["executor"] = "ssm"
    aws["transports"]["efa"]["env"]["NIXL_LOG_LEVEL"] = "DEBUG"
    remote = preflight.setup_for(aws, "efa")
    assert remote.nixl_backend == "LIBFABRIC" and remote.env["FI_PROVIDER"] == "efa" and remote.local_substitute is None
    assert remote.evidence_env == {} and remote.digest != local.digest  # the user's own NIXL_LOG_LEVEL wins
    assert preflight.require_efa(aws) is True


# ---------------------------------------------------------------------------- two real processes


def runner(python: str, *args: str) -> tuple[int, dict]:
    out = subprocess.run([python, str(RUNNER), *args], capture_output=True, text=True, timeout=120, check=False)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RUNNER-RESULT ")][-1]
    return out.returncode, json.loads(line[len("RUNNER-RESULT "):])


def preflight_args(node: Path, role: str, port: int) -> list[str]:
    bindings = {"bind_host": "127.0.0.1", "node1_host": "127.0.0.1", "node2_host": "127.0.0.1", "preflight_port": str(port)}
    args = ["preflight", "--node-dir", str(node), "--pattern", "p14-tcp-1k-c1", "--role", role, "--bindings", json.dumps(bindings),
            "--env", json.dumps(LOCAL_ENV), "--timeout", "30", "--grace", "2"]
    return args + (["--bytes", str(16 << 20)] if role == "target" else ["--peer", "node1", "--iterations", "2"])


def test_target_and_initiator_move_verified_data_over_ucx_tcp_on_loopback(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    node1, node2 = tmp_path / "node1", tmp_path / "node2"
    code, target = runner(sys.executable, *preflight_args(node1, "target", port))
    try:
        assert code == 0 and target["role"] == "target", target
        code, rep = runner(sys.executable, *preflight_args(node2, "initiator", port))
    finally:
        for node in (node1, node2):
            runner(sys.executable, "stop", "--node-dir", str(node), "--pattern", "p14-tcp-1k-c1", "--grace", "2")
    assert code == 0, rep
    report = rep["preflight"]
    assert report["verified"] is True and report["op"] == "READ" and report["bytes"] == 16 << 20
    assert len(report["seconds"]) == 2 and all(s > 0 for s in report["seconds"])
    assert report["bandwidth"]["unit"] == "GB/s" and report["bandwidth"]["mean"] > 0
    assert report["transport"]["transport"] == "tcp" and report["transport"]["devices"] == ["tcp/lo"]
    assert "software emulation | tcp/lo" in report["transport"]["evidence"]
    assert report["versions"]["ucx"].count(".") == 2 and report["versions"]["nixl"].startswith("nixl")
    entries = [e for n in (node1, node2) for e in json.loads((n / "runs/p14-tcp-1k-c1/procs.json").read_text())]
    assert sorted(e["name"] for e in entries) == ["preflight-initiator", "preflight-target"]
    assert alive_groups(entries) == []


def test_an_unreachable_target_fails_the_initiator_and_stop_ends_the_waiting_target(tmp_path: Path) -> None:
    port, wrong = free_ports(2)
    node1, node2 = tmp_path / "node1", tmp_path / "node2"
    code, target = runner(sys.executable, *preflight_args(node1, "target", port))
    try:
        assert code == 0, target
        args = preflight_args(node2, "initiator", wrong)
        args[args.index("--timeout") + 1] = "1"
        code, rep = runner(sys.executable, *args)
        assert code == 1 and f"cannot fetch the target's NIXL metadata from http://127.0.0.1:{wrong}/peer" in rep["cause"]
    finally:
        code, stopped = runner(sys.executable, "stop", "--node-dir", str(node1), "--pattern", "p14-tcp-1k-c1", "--grace", "2")
    assert code == 0 and [(s["name"], s["signal"], s["still_alive"]) for s in stopped["stopped"]] == [("preflight-target", "SIGTERM", False)]
    assert alive_groups(json.loads((node1 / "runs/p14-tcp-1k-c1/procs.json").read_text())) == []


def test_a_python_without_nixl_fails_with_how_to_install_it(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    (port,) = free_ports(1)
    code, rep = runner(str(bare / "bin/python"), *preflight_args(tmp_path / "node1", "target", port))
    assert code == 1 and rep["step"] == "preflight"
    assert f"nixl is not importable by {bare}/bin/python" in rep["cause"] and "pip install --no-deps nixl-cu12==1.5.1 nixl==1.5.2" in rep["cause"]
    assert "Traceback" not in rep["cause"] and rep["exit_status"] == 3


# ---------------------------------------------------------------------------- through Snakemake

TCP = ["p14-tcp-1k-c1", "p14-tcp-4k-c1"]
EFA = "p14-efa-1k-c1"


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """One run, require_efa true: two tcp patterns share one preflight; the efa pattern is refused."""
    proj = make_project(tmp_path_factory.mktemp("preflight") / "proj")
    cfg = proj.root / "config/config.yaml"
    cfg.write_text(cfg.read_text().replace("require_efa: null", "require_efa: true"))
    out = proj.snakemake("--keep-going", *(f"results/phase14/runs/{p}.json" for p in [*TCP, EFA]))
    assert out.returncode != 0, "the efa pattern must fail"
    proj.snakemake_output = out.stdout + out.stderr  # type: ignore[attr-defined]
    return proj


def test_tcp_results_carry_the_pairs_preflight_measured_once(gated: Project) -> None:
    marker_path = gated.root / "results/phase14/preflight/127.0.0.1+127.0.0.1-tcp.json"
    marker = json.loads(marker_path.read_text())
    assert marker["transport"] == "tcp" and marker["devices"] == ["tcp/lo"] and marker["bandwidth"]["mean"] > 0
    assert marker["nixl_backend"] == "UCX" and marker["env"] == {"UCX_TLS": "tcp", "UCX_NET_DEVICES": "lo"}
    assert marker["evidence_env"] == {"UCX_PROTO_INFO": "y", "NIXL_LOG_LEVEL": "INFO"} and "executor local" in marker["local_substitute"]
    assert marker["efa_verified"] is None and marker["verified"] is True and marker["snakemake_run_id"]
    results = {p: gated.result("phase14", p) for p in TCP}
    for r in results.values():
        assert r["provenance"]["preflight"] == marker
        assert r["validity"]["valid"] and r["completed"] == 30
    reused = sorted(r["provenance"]["steps"]["preflight"]["reused"] for r in results.values())
    assert reused == [False, True], "the second tcp pattern on the pair reuses the marker"
    measured_by = marker["measured_by"]["pattern"]
    initiator_log = gated.root / f"results/phase14/logs/{measured_by}/trial-1/node2/logs/preflight-initiator.log"
    assert "software emulation | tcp/lo" in initiator_log.read_text()
    plan = load_plan(gated.root / "plans/phase14.json")
    row = pattern_row(plan.pattern(TCP[0]), gated.root / "results/phase14")
    assert row["preflight_transport"] == "tcp (emulated): tcp/lo" and row["preflight_bandwidth_gb_s"] == marker["bandwidth"]["mean"]


def test_efa_pattern_over_tcp_fails_at_preflight_naming_the_evidence(gated: Project) -> None:
    record = json.loads((gated.root / f"results/phase14/failures/{EFA}.json").read_text())
    assert record["step"] == "preflight" and record["node"] == "node2"
    assert record["cause"].startswith("efa pattern, but the NIXL preflight moved data over tcp/lo")
    assert "'software emulation | tcp/lo' (UCX_PROTO_INFO)" in record["cause"]
    assert not (gated.root / f"results/phase14/runs/{EFA}.json").exists()
    marker = json.loads((gated.root / "results/phase14/preflight/127.0.0.1+127.0.0.1-efa.json").read_text())
    assert marker["efa_verified"] is False and marker["pattern_backend"] == "efa" and marker["transport"] == "tcp"
    # refused before any server started: the ledger of the efa pattern holds only the preflight
    names = {e["name"] for n in ("node1", "node2")
             for e in json.loads((gated.root / f"results/.local/nodes/{n}/phase14/runs/{EFA}/procs.json").read_text())}
    assert names == {"preflight-target", "preflight-initiator"}


def test_no_process_is_left_after_the_preflight_run(gated: Project) -> None:
    entries = ledger_entries(gated.root)
    assert {"preflight-target", "preflight-initiator", "producer", "consumer"} <= {e["name"] for e in entries}
    assert alive_groups(entries) == []
