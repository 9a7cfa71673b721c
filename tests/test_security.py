"""A plan, a config or a node can never make the control host run a command it was not meant to run.

- Shell metacharacters in plan and config values never execute: plan values that reach a
  command line are refused by validation; config paths and env values travel as argv / env
  entries and arrive verbatim; the one shell script (SSM bootstrap) quotes every value.
- Pattern and layer ids cannot leave results/ or the store's phase prefix: validation refuses
  them, and the path and key joins refuse them again on their own.
- Secrets in the environment (AWS keys, MLflow token) appear in no file of a run, no task
  definition and no SSM command text.
- Every listening socket of a local run is on 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, alive_groups, ledger_entries, make_project

# Each form would run `touch <sentinel>` if it ever reached a shell unquoted.
FORMS = ["$(touch {s})", "`touch {s}`", "; touch {s}", "&& touch {s} &&", "| touch {s}", "\ntouch {s}\n",
         "'; touch {s}; '", '"; touch {s}; "', "${{IFS}}touch${{IFS}}{s}"]
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIASENTINEL0KEYID77",
    "AWS_SECRET_ACCESS_KEY": "sentinel-secret-access-key-9f3b2c",
    "AWS_SESSION_TOKEN": "sentinel-session-token-4d1e8a",
    "MLFLOW_TRACKING_TOKEN": "sentinel-mlflow-token-7c2a91",
    "MLFLOW_TRACKING_PASSWORD": "sentinel-mlflow-password-0b5e3f",
}


def evil(sentinels: Path, tag: str) -> list[str]:
    return [f.format(s=sentinels / f"{tag}-{i}") for i, f in enumerate(FORMS)]


# ------------------------------------------------------------------ (1) plan values: refused


PLAN_FIELDS = [  # (JSON path, a valid value the form is appended to)
    (["infrastructure", "model"], "Qwen/Qwen2.5-7B-Instruct"),
    (["infrastructure", "venv_path"], "/opt/venv"),
    (["infrastructure", "vllm_version"], "0.15.1"),
    (["infrastructure", "instance_type"], "g5.12xlarge"),
    (["common_settings", "measurement_type"], "online"),
    (["layers", 0, "id"], "L0"),
    (["layers", 0, "priority"], "P0"),
    (["layers", 0, "patterns", 0, "id"], "p14-unified-1k-c1"),
    (["layers", 0, "patterns", 0, "backend"], "unified"),
    (["layers", 0, "patterns", 0, "measurement_type"], "online"),
]


def _set(doc: dict, path: list, value) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


@pytest.mark.parametrize(("path", "valid"), PLAN_FIELDS, ids=[".".join(map(str, p)) for p, _ in PLAN_FIELDS])
def test_metacharacters_in_plan_values_that_reach_a_command_line_are_refused(tmp_path: Path, path: list, valid: str) -> None:
    from disagglab.plan.jsonpath import format_path
    from disagglab.plan.model import validate_document

    base = json.loads((ROOT / "plans/phase14.json").read_text())
    assert validate_document(base, "plans/phase14.json", "phase14") == []
    for value in [valid + form for form in evil(tmp_path, "plan")]:
        doc = copy.deepcopy(base)
        _set(doc, path, value)
        problems = validate_document(doc, "plans/phase14.json", "phase14")
        assert any(p.path == format_path(path) for p in problems), (value, problems)
    assert list(tmp_path.iterdir()) == []


def test_config_values_arrive_verbatim_in_rendered_tasks(tmp_path: Path) -> None:
    """local_vllm paths and env values are free strings: they become argv and env entries, whole."""
    from disagglab.plan.config import load_config_file, validate_config
    from disagglab.plan.model import load_plan
    from disagglab.tasks.render import render_task

    *values, ifs = evil(tmp_path, "render")
    cfg = load_config_file()
    cfg["engine"] = "vllm"
    cfg["local_vllm"]["venv_path"] = "/opt/v" + values[0]
    cfg["local_vllm"]["model"] = "/models/m" + values[1]
    cfg["local_vllm"]["env"] = {f"EVIL_{i}": v for i, v in enumerate(values)}
    validate_config(cfg, "test")
    pattern = load_plan(ROOT / "plans/phase14.json").pattern("p14-unified-1k-c1")
    task = json.loads(render_task(pattern, "unified", "phase14", cfg))
    argv = task["servers"][0]["argv"]
    assert argv[0] == "/opt/v" + values[0] + "/bin/vllm" and argv[1:3] == ["serve", "/models/m" + values[1]]
    assert "/models/m" + values[1] in task["benchmark"]["argv"]
    env = task["servers"][0]["env"]
    assert all(env[f"EVIL_{i}"] == v for i, v in enumerate(values))
    # ${...} is how a task names a value bound on the node; an unknown name is refused, never left in
    cfg["local_vllm"]["env"] = {"EVIL": ifs}
    with pytest.raises(ValueError, match="uses unknown run-time tokens: IFS"):
        render_task(pattern, "unified", "phase14", cfg)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ (1) the SSM bootstrap script


def test_ssm_script_passes_every_value_verbatim_under_bash(tmp_path: Path) -> None:
    """build_script run for real: node dir, python path, bucket, key, region and every argument
    are full of metacharacters; the runner gets each value unchanged and nothing else runs."""
    from disagglab.hashing import sha256_file
    from disagglab.run.ssm import Bootstrap, build_script

    sentinels = tmp_path / "sentinels"
    sentinels.mkdir()
    values = evil(sentinels, "ssm")
    node_dir = tmp_path / ("node" + values[0].replace("/", "_")) / ("d" + values[5].replace("/", "_"))
    runner = node_dir / "remote" / "task_runner.py"
    runner.parent.mkdir(parents=True)
    runner.write_text("import json, os, sys\nprint(json.dumps({'argv': sys.argv[1:], 'region': os.environ['AWS_DEFAULT_REGION']}))\n")
    py_dir = tmp_path / ("py" + values[1].replace("/", "_") + values[6].replace("/", "_"))
    py_dir.mkdir()
    (py_dir / "python").symlink_to(sys.executable)
    boot = Bootstrap("bucket" + values[2], "key" + values[3], sha256_file(runner), str(py_dir / "python"))
    args = ["stop", *values, "--pattern", "p1-x"]
    region = "us-east-1" + values[8]
    script = build_script(str(node_dir), boot, args, region)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == {"argv": args, "region": region}
    assert list(sentinels.iterdir()) == []


# ------------------------------------------------------------------ (2) ids cannot escape


ESCAPES = ["..", "../x", "p14-../../etc", "/etc/passwd", "p14-x\n", "p14-\u0445", "p14-x\u202e", "p14-x\x00", "p14-\uff0e\uff0e", "."]


@pytest.mark.parametrize("bad", ESCAPES, ids=[repr(b) for b in ESCAPES])
def test_pattern_and_layer_ids_that_could_escape_are_refused(bad: str) -> None:
    from disagglab.deploy.storage import LocalStorage, check_key
    from disagglab.paths import UnsafeName, phase_key, safe_join, safe_segment
    from disagglab.plan.model import validate_document

    doc = json.loads((ROOT / "plans/phase14.json").read_text())
    doc["layers"][0]["patterns"][0]["id"] = bad
    doc["layers"][1]["id"] = bad
    paths = {p.path for p in validate_document(doc, "plans/phase14.json", "phase14")}
    assert {"layers[0].patterns[0].id", "layers[1].id"} <= paths
    # defense in depth: the joins refuse the id even if validation were bypassed
    with pytest.raises(UnsafeName):
        safe_segment(bad)
    with pytest.raises(UnsafeName):
        safe_join(Path("results/phase14/runs"), bad)
    with pytest.raises(UnsafeName):
        phase_key("phase14", "tasks", bad, "unified.json")
    with pytest.raises(ValueError, match="invalid store key"):
        check_key(f"phase14/tasks/{bad}/unified.json")
    with pytest.raises(ValueError, match="invalid store key"):
        LocalStorage(Path("/nonexistent-store")).get_file(f"phase14/tasks/{bad}/unified.json", Path("/nonexistent-dest"))


def test_key_and_path_joins_stay_inside(tmp_path: Path) -> None:
    from disagglab.deploy.storage import LocalStorage, S3Storage
    from disagglab.paths import UnsafeName, phase_key, safe_join

    assert phase_key("phase14", "tasks/p14-a-1k-c1/unified.json") == "phase14/tasks/p14-a-1k-c1/unified.json"
    with pytest.raises(UnsafeName):  # an id is one segment: no '/' inside it
        safe_join(tmp_path, "runs", "p14-x/y.json")
    assert safe_join(tmp_path, "runs", "p14-a.json") == tmp_path / "runs" / "p14-a.json"
    for phase in ("../phase14", "phase14/..", "", "phase14 ", "/phase14"):
        with pytest.raises(UnsafeName):
            phase_key(phase, "tasks")
    store = LocalStorage(tmp_path / "store")
    (tmp_path / "src").write_text("x")
    for key in ("/etc/passwd", "phase14", "phase14//x", "phase14/./x", "phase14/../../x", "../x", "phase14/a/\n"):
        with pytest.raises(ValueError, match="invalid store key"):
            store.put_file(tmp_path / "src", key)
    # a symlink planted in the store cannot redirect a write outside it
    (tmp_path / "store" / "phase14").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "store" / "phase14" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match="resolves outside"):
        store.put_file(tmp_path / "src", "phase14/link/x")
    assert list((tmp_path / "outside").iterdir()) == []
    s3 = S3Storage.__new__(S3Storage)
    s3.prefix = "team/a"
    assert s3._key("phase14/tasks/p/unified.json") == "team/a/phase14/tasks/p/unified.json"
    with pytest.raises(ValueError, match="invalid store key"):
        s3._key("phase14/../../other-team/x")


# ------------------------------------------------------------------ one local run for (1), (3), (4)


def listening_sockets() -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of every LISTEN TCP socket (IPv4 and IPv6)."""
    out = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A":
                continue
            addr_hex, port_hex = cols[1].split(":")
            if v6:
                addr = ":".join(addr_hex[i:i + 4] for i in range(0, 32, 4))
            else:
                addr = ".".join(str(int(addr_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
            out[int(cols[9])] = (addr, int(port_hex, 16))
    return out


def members_by_group(pgids: set[int]) -> dict[int, list[int]]:
    """pgid -> its processes, for the given groups (one pass over /proc)."""
    members: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pgid = int(stat.read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, IndexError, ValueError):
            continue
        if pgid in pgids:
            members.setdefault(pgid, []).append(int(stat.parent.name))
    return members


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


class ListenSampler(threading.Thread):
    """While a run is going: every listening socket of every process its ledgers name."""

    def __init__(self, nodes_dir: Path):
        super().__init__(daemon=True)
        self.nodes_dir = nodes_dir
        self.seen: set[tuple[str, str, int]] = set()
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            entries = []
            for ledger in self.nodes_dir.glob("*/*/runs/*/procs.json"):
                try:
                    entries.extend(json.loads(ledger.read_text()))
                except (OSError, ValueError):
                    continue
            if entries:
                listening = listening_sockets()
                groups = members_by_group({e["pgid"] for e in entries})
                for e in entries:
                    for pid in groups.get(e["pgid"], []):
                        for inode in socket_inodes(pid) & set(listening):
                            self.seen.add((e["name"], *listening[inode]))
            time.sleep(0.05)


@pytest.fixture(scope="module")
def evil_run(tmp_path_factory: pytest.TempPathFactory):
    """phase14 L0 (unified + tcp at 1k) + summary + report + MLflow, with metacharacters in the
    config's paths and the plan's prose, and secrets in the environment."""
    base = tmp_path_factory.mktemp("security")
    sentinels = base / "sentinels"
    sentinels.mkdir()
    project = make_project(base / "proj")
    store = "results/.local/store" + "".join(evil(sentinels, "store"))
    nodes = "results/.local/nodes" + "".join(evil(sentinels, "nodes"))
    (project.root / "evil.yaml").write_text(yaml.safe_dump({"local": {"store_dir": store, "nodes_dir": nodes}}))
    doc = project.plan("phase14")
    doc["name"] = "TCP vs EFA " + "".join(evil(sentinels, "name")) + "<script>alert('x')</script>"
    doc["description"] = "".join(evil(sentinels, "description"))
    doc["common_settings"].update(warmup_iterations=2, measurement_iterations=8)
    doc["layers"] = [{**doc["layers"][0], "description": "<img src=x onerror=alert(1)>" + FORMS[0].format(s=sentinels / "layer"),
                      "patterns": doc["layers"][0]["patterns"][:2]}]
    project.write_plan("phase14", doc)
    sampler = ListenSampler(project.root / nodes)
    sampler.start()
    env = {**SECRETS, "MLFLOW_TRACKING_USERNAME": "someone"}
    try:
        run = project.snakemake("results/phase14/L0.done", "--configfile", "evil.yaml", env=env)
    finally:
        sampler.stop_event.set()
        sampler.join()
    report = project.snakemake("results/phase14/report.html", "--configfile", "evil.yaml", env=env)
    return project, sentinels, store, nodes, run, report, sampler.seen


def test_the_run_completes_with_metacharacters_in_config_paths_and_nothing_executes(evil_run) -> None:
    project, sentinels, store, nodes, run, report, _ = evil_run
    assert run.returncode == 0, run.stderr[-3000:]
    assert report.returncode == 0, report.stderr[-3000:]
    assert list(sentinels.iterdir()) == [], "a metacharacter in a plan or config value was executed"
    # verbatim: the store and the node folders are exactly the configured paths
    store_dir, nodes_dir = project.root / store, project.root / nodes
    assert (store_dir / "phase14/tasks/p14-tcp-1k-c1/consumer.json").is_file()
    deploy = json.loads((project.root / "results/phase14/deploy/p14-tcp-1k-c1.json").read_text())
    assert deploy["store"] == store_dir.resolve().as_uri()
    bench = next(e for e in ledger_entries_under(nodes_dir) if e["name"] == "benchmark")
    assert bench["argv"][1] == f"{nodes_dir.resolve()}/node2/phase14/scripts/benchmark_common.py"
    assert alive_groups(ledger_entries_under(nodes_dir)) == [] and alive_groups(ledger_entries(project.root)) == []
    for pid in ("p14-unified-1k-c1", "p14-tcp-1k-c1"):
        assert project.result("phase14", pid)["completed"] == 8
    html = (project.root / "results/phase14/report.html").read_text()
    assert "<script>alert" not in html and "<img src=x" not in html and "&lt;script&gt;alert" in html


def ledger_entries_under(nodes_dir: Path) -> list[dict]:
    entries = []
    for ledger in nodes_dir.glob("*/*/runs/*/procs.json"):
        entries.extend(json.loads(ledger.read_text()))
    return entries


def test_no_secret_reaches_any_file_of_the_run(evil_run) -> None:
    project = evil_run[0]
    assert evil_run[4].returncode == 0 and evil_run[5].returncode == 0
    files = [p for p in (project.root / "results").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"mlflow.db", "report.html", "summary.csv", "procs.json", "consumer.json", "node-result.json"} <= names
    assert any("mlruns" in p.parts for p in files), "MLflow artifacts are part of the check"
    leaks = [(str(p.relative_to(project.root)), k) for p in files for k, v in SECRETS.items() if v.encode() in p.read_bytes()]
    assert leaks == []


def test_every_listening_socket_of_the_run_is_on_loopback(evil_run) -> None:
    seen = evil_run[6]
    names = {name for name, _, _ in seen}
    assert {"unified", "producer", "consumer", "proxy"} <= names, seen
    assert {addr for _, addr, _ in seen} == {"127.0.0.1"}, seen


# ------------------------------------------------------------------ (3) secrets and the SSM path


def test_no_secret_in_ssm_command_text(monkeypatch, aws_env, seaweed, tmp_path: Path) -> None:  # noqa: F811 - fixture
    import boto3
    from test_ssm import REGION, deploy_runner, node_env, online_node, transport

    from disagglab.deploy.storage import S3Storage

    from fake_ssm_agent import FakeAgent

    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    bucket = seaweed.create_bucket(f"sec-{os.getpid()}-{int(time.time())}")
    storage = S3Storage(bucket, prefix="team")
    t = transport(storage, tmp_path)
    node = online_node()
    key, sha = deploy_runner(storage)
    t.prepare(node, "phase1", storage, key, sha, sys.executable)
    with FakeAgent(REGION, storage.client, {**node_env(aws_env), **SECRETS}) as agent:
        outcome = t.run_step(node, "phase1", ["stop", "--node-dir", t.node_dir(node, "phase1"), "--pattern", "p1-x"], 300)
    assert outcome.ok, outcome
    commands = boto3.client("ssm", region_name=REGION).list_commands(CommandId=t.sent[0])["Commands"]
    text = json.dumps(commands, default=str)
    assert t.sent[0] in text and agent.scripts and "task_runner.py" in text
    for value in SECRETS.values():
        assert value not in text and all(value not in s for s in agent.scripts)
    stdout_objects = storage.client.list_objects_v2(Bucket=bucket, Prefix="team/")["Contents"]
    for obj in stdout_objects:
        body = storage.client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        assert not any(v.encode() in body for v in SECRETS.values()), obj["Key"]


from test_ssm import aws_env, moto_endpoint  # noqa: E402, F401 - fixtures shared with the SSM tests
