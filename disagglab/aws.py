"""AWS clients and discovery: the bucket, the nodes and their private addresses.

The seed tool read SCRIPTS_BUCKET, NODE1_ID, NODE2_ID, NODE1_PRIVATE and NODE2_PRIVATE
from the environment, filled by hand from CloudFormation and EC2 tags. Those variables
still win; when they are unset we ask CloudFormation and EC2 ourselves. Credentials,
region and AWS_ENDPOINT_URL follow the standard boto3 chain untouched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from disagglab.errors import ConfigError, Problem

SEED_VARS = ("SCRIPTS_BUCKET", "NODE1_ID", "NODE2_ID", "NODE1_PRIVATE", "NODE2_PRIVATE")


def client(service: str, cfg: dict[str, Any], mode: str | None = None) -> Any:
    """A boto3 client with explicit retries: library defaults changed between versions."""
    import boto3
    from botocore.config import Config

    aws = cfg["aws"]
    retries = {"mode": mode or aws["retry_mode"], "total_max_attempts": aws["max_attempts"]}
    return boto3.client(service, region_name=aws.get("region"), config=Config(retries=retries))


@dataclass(frozen=True)
class NodeSpec:
    name: str
    instance_id: str
    address: str


@dataclass(frozen=True)
class PairSpec:
    index: int
    node1: NodeSpec
    node2: NodeSpec


def discover_bucket(cfg: dict[str, Any]) -> str:
    """SCRIPTS_BUCKET, else s3.bucket, else the CloudFormation stack output."""
    bucket = os.environ.get("SCRIPTS_BUCKET") or cfg["s3"].get("bucket")
    if bucket:
        return bucket
    aws = cfg["aws"]
    cfn = client("cloudformation", cfg)
    try:
        stacks = cfn.describe_stacks(StackName=aws["stack_name"])["Stacks"]
    except Exception as exc:  # noqa: BLE001 - botocore error classes are generated
        raise ConfigError([Problem("config", "aws.stack_name", f"no bucket: SCRIPTS_BUCKET and s3.bucket are unset and stack {aws['stack_name']!r} cannot be read ({exc})")]) from None
    for out in stacks[0].get("Outputs", []):
        if out["OutputKey"] == aws["bucket_output_key"]:
            return out["OutputValue"]
    raise ConfigError([Problem("config", "aws.bucket_output_key", f"stack {aws['stack_name']!r} has no output {aws['bucket_output_key']!r}; set SCRIPTS_BUCKET")])


def _by_tag(ec2: Any, tag: str) -> list[tuple[str, str]]:
    resp = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": [tag]}, {"Name": "instance-state-name", "Values": ["running"]}])
    found = []
    for reservation in resp.get("Reservations", []):
        for inst in reservation.get("Instances", []):
            found.append((inst["InstanceId"], inst.get("PrivateIpAddress", "")))
    return sorted(found)


def discover_pairs(cfg: dict[str, Any]) -> list[PairSpec]:
    """The node pairs to use: the seed's variables, else configured pairs, else EC2 Name tags."""
    env = {k: os.environ.get(k) for k in SEED_VARS[1:]}
    if any(env.values()):
        missing = [k for k, v in env.items() if not v]
        if missing:
            raise ConfigError([Problem("environment", k, "set together with the other NODE* variables, or unset them all to discover nodes from EC2 tags") for k in missing])
        return [PairSpec(0, NodeSpec("node1", env["NODE1_ID"], env["NODE1_PRIVATE"]), NodeSpec("node2", env["NODE2_ID"], env["NODE2_PRIVATE"]))]
    pool = cfg["aws"]["pairs"]
    pairs: list[PairSpec] = []
    ec2 = None
    for i, entry in enumerate(pool):
        nodes = []
        for name in ("node1", "node2"):
            spec = entry[name]
            if "instance_id" in spec:
                nodes.append(NodeSpec(name, spec["instance_id"], spec["address"]))
                continue
            ec2 = ec2 or client("ec2", cfg)
            found = _by_tag(ec2, spec["tag"])
            if len(found) != 1:
                what = "no running instance" if not found else f"{len(found)} running instances ({', '.join(f[0] for f in found)})"
                raise ConfigError([Problem("config", f"aws.pairs[{i}].{name}.tag", f"{what} tagged Name={spec['tag']!r}; a pair needs exactly one per node")])
            nodes.append(NodeSpec(name, found[0][0], found[0][1]))
        pairs.append(PairSpec(i, nodes[0], nodes[1]))
    if not pairs:
        raise ConfigError([Problem("config", "aws.pairs", "no node pairs configured and NODE1_ID/NODE2_ID unset")])
    return pairs
