"""A pattern's topology: how many servers of each role, their tensor parallelism and their GPUs.

A plan may say, per pattern, `"prefill": {"instances": N, "tp_size": k}` and
`"decode": {"instances": M, "tp_size": k}` (tcp/efa) or `"unified": {...}` (unified). Without
it a pattern runs today's layout: one server of `infrastructure.tp_size` GPUs per role, and its
effective spec carries no `topology` key, so its task definitions render byte-identical.

Placement is fixed: prefill servers on node1, decode servers on node2, unified on node1. On
its node, instance i of a role holds GPUs i*tp .. i*tp+tp-1 (CUDA_VISIBLE_DEVICES), so the
instances of a role never overlap; a role that would need more GPUs than its node has is
refused. Unified replicas (instances > 1) sit behind the proxy in round-robin mode on node1,
so a unified pattern can use as many GPUs as the disaggregated one it is compared with.
Prefill and decode sharing a node (node_count 1, or a role spread over both nodes)
is refused as well: the pipeline runs one role per node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from disagglab.errors import Problem
from disagglab.plan.jsonpath import format_path, written_patterns

PLAN_KEYS = {"prefill": "producer", "decode": "consumer", "unified": "unified"}
"""The plan's name of a role -> the task role it configures."""
ROLE_NODE = {"unified": "node1", "producer": "node1", "consumer": "node2"}
MAX_INSTANCES = 16
"""Per role: at most gpu_count_per_node (schema maximum 16) servers of one GPU each."""


def plan_topology(pattern: dict[str, Any], backend: str, tp_size: int) -> dict[str, dict[str, int]] | None:
    """The effective spec's `topology`: None when the pattern names no role topology (today's layout)."""
    keys = [k for k in PLAN_KEYS if k in pattern]
    if not keys:
        return None
    wanted = ("unified",) if backend == "unified" else ("prefill", "decode")
    return {key: {"instances": int(pattern.get(key, {}).get("instances", 1)),
                  "tp_size": int(pattern.get(key, {}).get("tp_size", tp_size))} for key in wanted}


def instances(spec: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """The servers of one task role: name, tensor parallelism, GPUs, and the binding names of their ports.

    Instance 0 keeps today's names (`producer`, `${producer_port}`); instance i>0 is `producer-i`
    with `${producer_port_i}` and `${producer_side_channel_port_i}` (their binding names:
    `instance_port_names`). `gpus` is None without a topology: no CUDA_VISIBLE_DEVICES is rendered.
    """
    topo = spec.get("topology")
    key = next(k for k, v in PLAN_KEYS.items() if v == role)
    count, tp = (topo[key]["instances"], topo[key]["tp_size"]) if topo else (1, spec["infrastructure"]["tp_size"])
    out = []
    for i in range(count):
        suffix = "" if i == 0 else f"_{i}"
        gpus = list(range(i * tp, (i + 1) * tp)) if topo else None
        out.append({
            "index": i,
            "name": role if i == 0 else f"{role}-{i}",
            "tp_size": tp,
            "gpus": gpus,
            "env": {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if gpus is not None else {},
            "port_token": f"${{{role}_port{suffix}}}",
            "side_channel_token": f"${{{role}_side_channel_port{suffix}}}",
        })
    return out


INSTANCE_PORTS = ("unified_port", "producer_port", "consumer_port", "producer_side_channel_port", "consumer_side_channel_port")
"""The ports each server instance has its own of (the proxy and the preflight have one per pattern)."""


def instance_port_names() -> tuple[str, ...]:
    """The binding names of instances 1.. (instance 0 uses today's names); render.BINDINGS includes them."""
    return tuple(f"{base}_{i}" for base in INSTANCE_PORTS for i in range(1, MAX_INSTANCES))


SIDE_CHANNEL_STRIDE = 10
"""Fixed ports (ssm): instance i of a server listens on `<port> + i`, its NIXL side channel on
`<side channel port> + 10 i` (vLLM before the single side-channel listener opened one port per TP
rank, base + tp_rank, so an instance may need up to 8 consecutive ports)."""


def fixed_ports(configured: Mapping[str, Any]) -> dict[str, int]:
    """aws.ports plus the ports of instances 1.. derived from them."""
    ports = {k: int(v) for k, v in configured.items()}
    for base in INSTANCE_PORTS:
        step = SIDE_CHANNEL_STRIDE if "side_channel" in base else 1
        ports.update({f"{base}_{i}": ports[base] + step * i for i in range(1, MAX_INSTANCES)})
    return ports


def node_listeners(spec: dict[str, Any], roles: tuple[str, ...], uses_proxy: bool, ports: Mapping[str, int]) -> dict[str, list[tuple[int, str]]]:
    """node -> (port, what listens there) for one pattern on the fixed ports (ssm). A server's
    NIXL side channel is counted as tp_size consecutive ports (one per TP rank, as older vLLM
    opened them); the proxy listens on node1. The preflight runs before the servers: not counted."""
    out: dict[str, list[tuple[int, str]]] = {"node1": [], "node2": []}
    for role in roles:
        for inst in instances(spec, role):
            suffix = "" if inst["index"] == 0 else f"_{inst['index']}"
            listen = out[ROLE_NODE[role]]
            listen.append((ports[f"{role}_port{suffix}"], f"{inst['name']} (aws.ports.{role}_port{' + ' + str(inst['index']) if suffix else ''})"))
            if role != "unified":
                base = ports[f"{role}_side_channel_port{suffix}"]
                listen += [(base + rank, f"{inst['name']} NIXL side channel rank {rank}") for rank in range(inst["tp_size"])]
    if uses_proxy:
        out["node1"].append((ports["proxy_port"], "the proxy (aws.ports.proxy_port)"))
    return out


def port_collisions(spec: dict[str, Any], roles: tuple[str, ...], uses_proxy: bool, ports: Mapping[str, int]) -> list[str]:
    """`port P on node1: A and B`, for each fixed port two listeners of one pattern would share."""
    found = []
    for node, listeners in node_listeners(spec, roles, uses_proxy, ports).items():
        seen: dict[int, str] = {}
        for port, who in listeners:
            if port in seen:
                found.append(f"port {port} on {node}: {seen[port]} and {who}")
            seen.setdefault(port, who)
    return found


def topology_text(spec: dict[str, Any]) -> str:
    """`2P x tp1 + 2D x tp1 = 4 GPUs` or `4 replicas x tp1 = 4 GPUs`; empty without a topology (today's layout)."""
    topo = spec.get("topology")
    if not topo:
        return ""
    if "unified" in topo:
        u = topo["unified"]
        return f"{u['instances']} replicas x tp{u['tp_size']} = {u['instances'] * u['tp_size']} GPUs"
    p, d = topo["prefill"], topo["decode"]
    total = p["instances"] * p["tp_size"] + d["instances"] * d["tp_size"]
    return f"{p['instances']}P x tp{p['tp_size']} + {d['instances']}D x tp{d['tp_size']} = {total} GPUs"


def gpus_used(spec: dict[str, Any], roles: tuple[str, ...]) -> int:
    return sum(inst["tp_size"] for role in roles for inst in instances(spec, role))


def topology_label(spec: dict[str, Any], roles: tuple[str, ...]) -> str:
    """What people call the layout: `2P1D`, `1P1D tp2`, `2 replicas`, `1 replica tp4` (tp shown only above 1).

    Given for every pattern, with or without a written topology, so a report can line up
    today's 1P1D next to a 2P2D.
    """
    servers = {role: instances(spec, role) for role in roles}
    tps = sorted({s["tp_size"] for group in servers.values() for s in group})
    tp = "" if tps == [1] else " tp" + "/".join(str(servers[r][0]["tp_size"]) for r in roles) if len(tps) > 1 else f" tp{tps[0]}"
    if roles == ("unified",):
        n = len(servers["unified"])
        return f"{n} replica{'s' if n > 1 else ''}{tp}"
    return f"{len(servers['producer'])}P{len(servers['consumer'])}D{tp}"


def server_count(spec: dict[str, Any], roles: tuple[str, ...]) -> int:
    """How many vLLM servers the pattern starts (1 for today's unified, 2 for today's tcp/efa)."""
    return sum(len(instances(spec, role)) for role in roles)


def describe(spec: dict[str, Any], roles: tuple[str, ...]) -> dict[str, Any]:
    """The result's standardized description of what ran, per role."""
    out = {}
    for role in roles:
        servers = instances(spec, role)
        out[role] = {"node": ROLE_NODE[role], "instances": len(servers), "tp_size": servers[0]["tp_size"],
                     "gpus": sum(s["tp_size"] for s in servers),
                     "servers": [{"name": s["name"], "gpus": s["gpus"]} for s in servers]}
    return out


def topology_problems(doc: dict[str, Any], file: str) -> list[Problem]:
    """Role topologies that do not fit the backend or their node's GPUs."""
    problems: list[Problem] = []
    infra = doc["infrastructure"]
    gpus = infra["gpu_count_per_node"]
    for here, pat in written_patterns(doc):
        for key, role in PLAN_KEYS.items():
            if key not in pat:
                continue
            where = format_path([*here, key])
            unified = pat["backend"] == "unified"
            if unified != (key == "unified"):
                fits = "'unified'" if unified else "'prefill' and 'decode'"
                problems.append(Problem(file, where, f"{key!r} does not apply to a {pat['backend']} pattern (it takes {fits})"))
                continue
            n = pat[key]["instances"]
            tp = pat[key].get("tp_size", infra["tp_size"])
            node = ROLE_NODE[role]
            if n * tp > gpus:
                problems.append(Problem(file, where, (
                    f"{n} instances x tp_size {tp} = {n * tp} GPUs on {node}, but gpu_count_per_node is {gpus} "
                    f"({key} servers all run on {node}; prefill and decode do not share a node, and a role is not spread over both)")))
    return problems
