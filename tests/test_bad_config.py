"""A corpus of bad configurations: each is rejected, naming the file (or environment variable),
the key and what is wrong, before any job runs.

Every case goes through `python -m disagglab check-config <file>` and through a real Snakemake
run with `--configfile <file>`; both must fail with the same located message, and the
Snakemake run must leave nothing under results/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SNAKEMAKE, make_project

OVERRIDE = "extra.yaml"
ID1, ID2 = "i-0123456789abcdef0", "i-0fedcba9876543210"
SSM = {"executor": "ssm", "storage": "s3", "s3": {"bucket": "disagglab-test-bucket"}}
SSM_ENV = {"AWS_DEFAULT_REGION": "us-east-1"}
NODES_ENV = {"NODE1_ID": ID1, "NODE2_ID": ID2, "NODE1_PRIVATE": "10.0.0.1", "NODE2_PRIVATE": "10.0.0.2"}


def pairs(*entries: dict) -> dict:
    return {"aws": {"pairs": list(entries)}}


def node(**kw: str) -> dict:
    return kw


# (case, override file content (dict -> YAML, or raw text), extra environment, file named, path, reason)
CASES: list[tuple[str, dict | str, dict[str, str], str, str, str]] = [
    ("unknown top-level key", {"exector": "ssm"}, {}, OVERRIDE, "exector", "unknown key 'exector'"),
    ("unknown nested key", {"server": {"health_timeout": 5}}, {}, OVERRIDE, "server.health_timeout", "unknown key 'health_timeout'"),
    ("unknown deep key", {"aws": {"ssm": {"node_rot": "/x"}}}, {}, OVERRIDE, "aws.ssm.node_rot", "unknown key 'node_rot'"),
    ("unknown key in a pair", pairs({"node1": {"tag": "a"}, "node2": {"tag": "b"}, "node3": {"tag": "c"}}), {}, OVERRIDE,
     "aws.pairs[0].node3", "unknown key 'node3'"),
    ("number as string", {"server": {"health_timeout_s": "fast"}}, {}, OVERRIDE, "server.health_timeout_s", "expected number, got string"),
    ("boolean for integer", {"benchmark": {"seed": True}}, {}, OVERRIDE, "benchmark.seed", "expected integer, got boolean"),
    ("section as list", {"server": [1, 2]}, {}, OVERRIDE, "server", "expected object, got array"),
    ("bad executor", {"executor": "ec2"}, {}, OVERRIDE, "executor", "is not one of"),
    ("bucket uppercase", {"s3": {"bucket": "My_Bucket"}}, {}, OVERRIDE, "s3.bucket", "S3 bucket naming rules"),
    ("bucket too short", {"s3": {"bucket": "ab"}}, {}, OVERRIDE, "s3.bucket", "S3 bucket naming rules"),
    ("bucket as IP address", {"s3": {"bucket": "192.168.1.10"}}, {}, OVERRIDE, "s3.bucket", "formatted as an IP address"),
    ("bucket with double dot", {"s3": {"bucket": "my..bucket"}}, {}, OVERRIDE, "s3.bucket", "no '..'"),
    ("bucket reserved prefix", {"s3": {"bucket": "xn--bucket"}}, {}, OVERRIDE, "s3.bucket", "prefix 'xn--' is reserved"),
    ("bucket reserved suffix", {"s3": {"bucket": "data-s3alias"}}, {}, OVERRIDE, "s3.bucket", "suffix '-s3alias' is reserved"),
    ("bucket trailing newline", {"s3": {"bucket": "mybucket\n"}}, {}, OVERRIDE, "s3.bucket", "does not match"),
    ("SCRIPTS_BUCKET bad name", {"storage": "s3"}, {"SCRIPTS_BUCKET": "Bad_Bucket"}, "environment", "SCRIPTS_BUCKET", "not a valid S3 bucket name"),
    ("SCRIPTS_BUCKET shell", {"storage": "s3"}, {"SCRIPTS_BUCKET": "b;touch x"}, "environment", "SCRIPTS_BUCKET", "not a valid S3 bucket name"),
    ("s3 without any bucket", {"storage": "s3", "aws": {"max_attempts": 1, "region": "us-east-1"}},
     {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"},
     "config", "aws.stack_name", "SCRIPTS_BUCKET and s3.bucket are unset and stack 'NixlEfaStack' cannot be read"),
    ("ssm with local storage", {"executor": "ssm"}, {**SSM_ENV, **NODES_ENV}, OVERRIDE, "executor", "executor 'ssm' needs storage 's3'"),
    ("ssm without region", SSM, NODES_ENV, "environment", "AWS_REGION", "executor 'ssm' needs a region"),
    ("ssm NODE vars partly set", SSM, {**SSM_ENV, "NODE1_ID": ID1}, "environment", "NODE2_PRIVATE", "set together with the other NODE* variables"),
    ("ssm NODE id malformed", SSM, {**SSM_ENV, **NODES_ENV, "NODE1_ID": "i-xyz"}, "environment", "NODE1_ID", "not an EC2 instance id"),
    ("ssm NODE address malformed", SSM, {**SSM_ENV, **NODES_ENV, "NODE2_PRIVATE": "10.0.0.300"}, "environment", "NODE2_PRIVATE", "not an IPv4 address"),
    ("ssm without pairs", {**SSM, "aws": {"pairs": []}}, SSM_ENV, "config", "aws.pairs", "needs node pairs"),
    ("pair missing node2", pairs({"node1": {"tag": "a"}}), {}, OVERRIDE, "aws.pairs[0].node2", "required key is missing"),
    ("node with tag and instance_id", pairs({"node1": node(tag="a", instance_id=ID1, address="10.0.0.1"), "node2": {"tag": "b"}}), {}, OVERRIDE,
     "aws.pairs[0].node1", "exactly one of {tag} or {address, instance_id}"),
    ("instance_id without address", pairs({"node1": node(instance_id=ID1), "node2": {"tag": "b"}}), {}, OVERRIDE,
     "aws.pairs[0].node1", "needs {tag} or {address, instance_id}"),
    ("malformed instance id", pairs({"node1": node(instance_id="i-XYZ", address="10.0.0.1"), "node2": {"tag": "b"}}), {}, OVERRIDE,
     "aws.pairs[0].node1.instance_id", "does not match"),
    ("malformed address", pairs({"node1": node(instance_id=ID1, address="10.0.0.999"), "node2": {"tag": "b"}}), {}, OVERRIDE,
     "aws.pairs[0].node1.address", "is not a 'ipv4'"),
    ("tag with shell", pairs({"node1": {"tag": "a;reboot"}, "node2": {"tag": "b"}}), {}, OVERRIDE, "aws.pairs[0].node1.tag", "does not match"),
    ("node in two pairs", pairs({"node1": {"tag": "a"}, "node2": {"tag": "b"}}, {"node1": {"tag": "a"}, "node2": {"tag": "c"}}), {}, OVERRIDE,
     "aws.pairs[1].node1.tag", "is also aws.pairs[0].node1.tag"),
    ("instance twice", pairs({"node1": node(instance_id=ID1, address="10.0.0.1"), "node2": node(instance_id=ID1, address="10.0.0.1")}), {}, OVERRIDE,
     "aws.pairs[0].node2.instance_id", "is also aws.pairs[0].node1.instance_id"),
    ("port below range", {"aws": {"ports": {"proxy_port": 80}}}, {}, OVERRIDE, "aws.ports.proxy_port", "less than the minimum of 1024"),
    ("port above range", {"aws": {"ports": {"consumer_port": 70000}}}, {}, OVERRIDE, "aws.ports.consumer_port", "greater than the maximum of 65535"),
    ("port as string", {"aws": {"ports": {"proxy_port": "8000"}}}, {}, OVERRIDE, "aws.ports.proxy_port", "expected integer, got string"),
    ("ports collide", {"aws": {"ports": {"proxy_port": 8200}}}, {}, OVERRIDE, "aws.ports.proxy_port", "port 8200 is also aws.ports.consumer_port"),
    ("local host not loopback", {"local": {"host": "0.0.0.0"}}, {}, OVERRIDE, "local.host", "must be '127.0.0.1', got '0.0.0.0'"),
    ("region with shell", {"aws": {"region": "us-east-1;id"}}, {}, OVERRIDE, "aws.region", "does not match"),
    ("s3 prefix escapes", {"s3": {"prefix": "../other"}}, {}, OVERRIDE, "s3.prefix", "the segments '.' and '..' are not allowed"),
    ("node_root relative", {"aws": {"ssm": {"node_root": "opt/x"}}}, {}, OVERRIDE, "aws.ssm.node_root", "does not match"),
    ("transport env substitution", {"transports": {"tcp": {"env": {"UCX_TLS": "$(touch /tmp/x)"}}}}, {}, OVERRIDE,
     "transports.tcp.env.UCX_TLS", "does not match"),
    ("invalid YAML", "server: {health_timeout_s: 5\n", {}, OVERRIDE, "", "invalid YAML"),
    ("duplicate YAML key", "server:\n  health_timeout_s: 5\n  health_timeout_s: 6\n", {}, OVERRIDE, "server.health_timeout_s",
     "duplicate key 'health_timeout_s' (lines 2 and 3)"),
    ("duplicate top-level YAML key", "engine: sim\nexecutor: local\nengine: vllm\n", {}, OVERRIDE, "engine",
     "duplicate key 'engine' (lines 1 and 3)"),
    # Snakemake reads a --configfile that parses as JSON as JSON, whatever its name; so do we.
    ("duplicate JSON key", '{"server": {"health_timeout_s": 5,\n  "health_timeout_s": 6}}', {}, OVERRIDE, "server.health_timeout_s",
     "duplicate key 'health_timeout_s' (lines 1 and 2)"),
    ("JSON NaN", '{"server": {"health_timeout_s": NaN}}', {}, OVERRIDE, "server.health_timeout_s", "NaN is not a JSON number"),
    ("JSON -Infinity", '{"sim": {"time_scale": -Infinity}}', {}, OVERRIDE, "sim.time_scale", "-Infinity is not a JSON number"),
]
IDS = [c[0] for c in CASES]
# A real Snakemake run costs ~2 s, so these run through Snakemake too: one case per kind of
# check (schema key/type/pattern/oneOf/const, cross-field, environment, discovery, YAML).
SNAKEMAKE_CASES = [c for c in CASES if c[0] in {
    "unknown deep key", "boolean for integer", "bucket as IP address", "SCRIPTS_BUCKET shell", "s3 without any bucket",
    "ssm with local storage", "ssm without region", "ssm NODE vars partly set", "node with tag and instance_id",
    "node in two pairs", "ports collide", "local host not loopback", "malformed address", "invalid YAML",
    "duplicate YAML key", "JSON NaN",
}]
# Environment variables that would change the outcome; every case starts without them.
SCRUB = ("AWS_", "NODE1_", "NODE2_", "SCRIPTS_BUCKET", "DISAGGLAB_CONFIG")


def case_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent", **extra)
    return env


def write_override(root: Path, content: dict | str) -> None:
    (root / OVERRIDE).write_text(content if isinstance(content, str) else yaml.safe_dump(content))


def located(text: str, file: str, path: str, reason: str) -> bool:
    return any(ln.startswith(f"{file}: ") and path in ln and reason in ln for ln in text.splitlines())


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory):
    return make_project(tmp_path_factory.mktemp("badcfg") / "proj")


def test_corpus_covers_the_issue() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(("name", "content", "env", "file", "path", "reason"), CASES, ids=IDS)
def test_cli_rejects(proj, name: str, content, env: dict[str, str], file: str, path: str, reason: str) -> None:
    write_override(proj.root, content)
    out = subprocess.run([sys.executable, "-m", "disagglab", "check-config", OVERRIDE], cwd=proj.root, env=case_env(env),
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert located(out.stderr, file, path, reason), f"expected '{file}: {path}...{reason}' in:\n{out.stderr}"


@pytest.mark.parametrize(("name", "content", "env", "file", "path", "reason"), SNAKEMAKE_CASES, ids=[c[0] for c in SNAKEMAKE_CASES])
def test_snakemake_stops_before_any_job(proj, name: str, content, env: dict[str, str], file: str, path: str, reason: str) -> None:
    write_override(proj.root, content)
    out = subprocess.run([SNAKEMAKE, "results/phase14/L0.done", "--configfile", OVERRIDE], cwd=proj.root, env=case_env(env),
                         capture_output=True, text=True, timeout=120, check=False)
    log = out.stdout + out.stderr
    assert out.returncode != 0, log[-2000:]
    if name == "invalid YAML":
        # Snakemake parses --configfile itself before the Snakefile, and its message does not
        # name the file (upstream behaviour); check-config does (test_cli_rejects).
        assert "Config file is not valid JSON or YAML" in log, log[-2000:]
    else:
        assert f"{file}: " in log and path in log and reason in log, log[-3000:]
    assert not (proj.root / "results").exists(), "a rejected config must write nothing under results/"


def test_a_problem_in_the_base_file_names_the_base_file(proj) -> None:
    cfg = proj.root / "config" / "config.yaml"
    original = cfg.read_text()
    cfg.write_text(original.replace("server:\n", "server:\n  health_timout_s: 3\n", 1))
    write_override(proj.root, {"executor": "local"})
    try:
        cli = subprocess.run([sys.executable, "-m", "disagglab", "check-config", OVERRIDE], cwd=proj.root, env=case_env({}),
                             capture_output=True, text=True, timeout=60, check=False)
        smk = subprocess.run([SNAKEMAKE, "-n", "results/phase14/L0.done", "--configfile", OVERRIDE], cwd=proj.root, env=case_env({}),
                             capture_output=True, text=True, timeout=120, check=False)
    finally:
        cfg.write_text(original)
    assert cli.returncode == 2 and located(cli.stderr, "config/config.yaml", "server.health_timout_s", "unknown key"), cli.stderr
    assert smk.returncode != 0 and "config/config.yaml: server.health_timout_s: unknown key 'health_timout_s'" in smk.stdout + smk.stderr


def test_valid_aws_configuration_passes(proj) -> None:
    """The checks do not reject what the README documents (config/aws.yaml with the seed's variables)."""
    env = case_env({**SSM_ENV, **NODES_ENV, "SCRIPTS_BUCKET": "my-scripts-bucket"})
    out = subprocess.run([sys.executable, "-m", "disagglab", "check-config", "config/aws.yaml"], cwd=proj.root, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and "bucket my-scripts-bucket" in out.stdout, out.stdout + out.stderr


def test_a_json_config_with_a_byte_order_mark_is_accepted(proj) -> None:
    (proj.root / "extra.json").write_text('\ufeff{"server": {"health_timeout_s": 7}}', encoding="utf-8")
    cli = subprocess.run([sys.executable, "-m", "disagglab", "check-config", "extra.json"], cwd=proj.root, env=case_env({}),
                         capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    smk = subprocess.run([SNAKEMAKE, "-n", "results/phase14/L0.done", "--configfile", "extra.json"], cwd=proj.root, env=case_env({}),
                         capture_output=True, text=True, timeout=120, check=False)
    assert smk.returncode == 0, (smk.stdout + smk.stderr)[-2000:]
