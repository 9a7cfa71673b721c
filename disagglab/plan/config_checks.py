"""Configuration rules a JSON Schema cannot say, and the environment a run depends on.

`cross_field_problems` runs on every merged configuration (a schema-valid one): S3 bucket
naming beyond the character set, node pairs that name one machine twice, ports that would
collide on a node, an ssm executor without S3. `environment_problems` checks the variables
the AWS path reads (SCRIPTS_BUCKET, NODE1_ID..NODE2_PRIVATE, the region) without any network
call, so `snakemake -n` already says what is missing. `discovery_problems` does the one
network lookup (the bucket from the CloudFormation stack) and runs just before the first job.
Each problem names where it is (the config file and key, or the variable) and what to do.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any

from disagglab.errors import ConfigError, Problem

# S3 general purpose bucket naming rules (AWS docs, "Bucket naming rules").
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
INSTANCE_ID_RE = re.compile(r"(i|mi)-[0-9a-f]{8}([0-9a-f]{9})?")
NODE_VARS = ("NODE1_ID", "NODE2_ID", "NODE1_PRIVATE", "NODE2_PRIVATE")
# Ports that are in use on a node at the same time during a disaggregated pattern (one
# machine may play both roles, so all five must differ). unified_port is used alone.
DISAGG_PORTS = ("producer_port", "producer_side_channel_port", "consumer_port", "proxy_port", "consumer_side_channel_port")


def bucket_name_problem(name: str) -> str | None:
    """Why `name` is not a valid S3 bucket name, or None when it is."""
    if not BUCKET_RE.fullmatch(name):
        return (f"{name!r} is not a valid S3 bucket name: 3-63 characters of lowercase letters, digits, '.' and '-', "
                "starting and ending with a letter or digit")
    if ".." in name or ".-" in name or "-." in name:
        return f"{name!r} is not a valid S3 bucket name: no '..', '.-' or '-.'"
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        return f"{name!r} is not a valid S3 bucket name: it is formatted as an IP address"
    for prefix in BUCKET_PREFIXES:
        if name.startswith(prefix):
            return f"{name!r} is not a valid S3 bucket name: the prefix {prefix!r} is reserved"
    for suffix in BUCKET_SUFFIXES:
        if name.endswith(suffix):
            return f"{name!r} is not a valid S3 bucket name: the suffix {suffix!r} is reserved"
    return None


def cross_field_problems(cfg: dict[str, Any], file: str) -> list[Problem]:
    """Rules across keys of a schema-valid merged configuration."""
    problems: list[Problem] = []
    bucket = cfg["s3"].get("bucket")
    if bucket is not None:
        why = bucket_name_problem(bucket)
        if why:
            problems.append(Problem(file, "s3.bucket", why))
    if any(part in (".", "..") for part in cfg["s3"]["prefix"].split("/")):
        problems.append(Problem(file, "s3.prefix", f"{cfg['s3']['prefix']!r}: the segments '.' and '..' are not allowed (keys stay below the prefix)"))
    if cfg["executor"] == "ssm" and cfg["storage"] != "s3":
        problems.append(Problem(file, "executor", f"executor 'ssm' needs storage 's3' (nodes fetch from the bucket), but storage is {cfg['storage']!r}"))
    ports = cfg["aws"]["ports"]
    seen: dict[int, str] = {}
    for name in DISAGG_PORTS:
        port = ports[name]
        if port in seen:
            problems.append(Problem(file, f"aws.ports.{name}", f"port {port} is also aws.ports.{seen[port]}; the servers, proxy and side channels of a pattern need distinct ports"))
        seen.setdefault(port, name)
    where: dict[tuple[str, str], str] = {}
    for i, pair in enumerate(cfg["aws"]["pairs"]):
        for node in ("node1", "node2"):
            spec = pair[node]
            for key in ("instance_id", "tag"):
                if key not in spec:
                    continue
                here = f"aws.pairs[{i}].{node}.{key}"
                ident = (key, spec[key])
                if ident in where:
                    problems.append(Problem(file, here, f"{key} {spec[key]!r} is also {where[ident]}: each node may appear in one pair, once"))
                where.setdefault(ident, here)
    return problems


def _region(cfg: dict[str, Any], environ: Mapping[str, str]) -> str | None:
    if cfg["aws"].get("region") or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION"):
        return cfg["aws"].get("region") or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    try:  # a profile's region (~/.aws/config); reading it makes no network call
        import botocore.session

        return botocore.session.Session().get_config_variable("region")
    except Exception:  # noqa: BLE001 - a broken ~/.aws/config is botocore's to report later
        return None


def environment_problems(cfg: dict[str, Any], environ: Mapping[str, str] | None = None) -> list[Problem]:
    """What the AWS path reads from the environment, checked without any network call."""
    env = os.environ if environ is None else environ
    problems: list[Problem] = []

    def add(var: str, reason: str) -> None:
        problems.append(Problem("environment", var, reason))

    if cfg["storage"] == "s3" and env.get("SCRIPTS_BUCKET"):
        why = bucket_name_problem(env["SCRIPTS_BUCKET"])
        if why:
            add("SCRIPTS_BUCKET", why)
    if cfg["executor"] != "ssm":
        return problems
    node_env = {k: env.get(k, "") for k in NODE_VARS}
    if any(node_env.values()):
        for k, v in node_env.items():
            if not v:
                add(k, "set together with the other NODE* variables, or unset them all to use aws.pairs / EC2 tags")
            elif k.endswith("_ID") and not INSTANCE_ID_RE.fullmatch(v):
                add(k, f"{v!r} is not an EC2 instance id (i- followed by 8 or 17 hex digits)")
            elif k.endswith("_PRIVATE"):
                try:
                    ipaddress.IPv4Address(v)
                except ValueError:
                    add(k, f"{v!r} is not an IPv4 address (the node's private address)")
    elif not cfg["aws"]["pairs"]:
        problems.append(Problem("config", "aws.pairs", "executor 'ssm' needs node pairs: list them in aws.pairs or set NODE1_ID, NODE2_ID, NODE1_PRIVATE, NODE2_PRIVATE"))
    if not _region(cfg, env):
        add("AWS_REGION", "executor 'ssm' needs a region: set aws.region in the config, or AWS_REGION / AWS_DEFAULT_REGION")
    return problems


def check_environment(cfg: dict[str, Any], environ: Mapping[str, str] | None = None) -> None:
    problems = environment_problems(cfg, environ)
    if problems:
        raise ConfigError(problems)


def check_discovery(cfg: dict[str, Any]) -> str | None:
    """With storage s3, the bucket must resolve (SCRIPTS_BUCKET, s3.bucket or the stack); returns it."""
    if cfg["storage"] != "s3":
        return None
    from disagglab.aws import discover_bucket

    bucket = discover_bucket(cfg)
    why = bucket_name_problem(bucket)
    if why:
        raise ConfigError([Problem("config", f"aws.stack_name {cfg['aws']['stack_name']} output {cfg['aws']['bucket_output_key']}", why)])
    return bucket
