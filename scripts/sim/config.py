"""The server's configuration, and the ``vllm serve`` flags argparse cannot parse alone.

vLLM accepts ``--kv-transfer-config`` as JSON and as open-ended dotted flags,
and human-readable ints for ``--max-model-len``; the stand-in must accept the
same command lines as vLLM, so these get parsers of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .faults import Fault
from .profile import Profile

KV_ROLES = ("kv_producer", "kv_consumer", "kv_both")
FAILURE_POLICIES = ("fail", "recompute")
TRACE_MAX_REQUESTS = 100_000  # default of --trace-max-requests


@dataclass
class KVConfig:
    """The parts of vLLM's KVTransferConfig the simulated NixlConnector uses."""

    connector: str
    role: str
    failure_policy: str
    backends: list[str]
    raw: dict[str, Any]


@dataclass
class ServeConfig:
    """Everything the server needs, parsed from the ``vllm serve`` command line."""

    model: str
    served_model_name: str
    host: str
    port: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_num_batched_tokens: int | None
    max_num_seqs: int
    max_model_len: int
    enable_prefix_caching: bool
    block_size: int
    seed: int | None
    kv: KVConfig | None
    ignored: list[str]
    profile: Profile
    fault: Fault
    side_host: str
    side_port: int
    transport: str
    trace_max_requests: int = TRACE_MAX_REQUESTS
    node_link: str | None = None
    """the node's shared link file (--node-link); None: the process's own link"""


def human_int(text: str) -> int:
    """vLLM's human-readable ints for --max-model-len: 32k=32000, 32K=32768."""
    text = text.strip()
    mult = {"k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}
    if text and text[-1] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


def _parse_json_value(text: str) -> Any:
    """Values of dotted flags are JSON when they parse as JSON, else strings (like vLLM)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def extract_dotted_kv(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Pull ``--kv-transfer-config.a.b[+] VALUE`` pairs out before argparse sees them.

    argparse cannot be told about open-ended dotted flags, and letting it treat
    them as unknown would scramble flag/value order.
    """
    prefix = "--kv-transfer-config."
    dotted: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(prefix):
            key, eq, value = arg[len(prefix) :].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError(f"argument {arg}: expected one argument")
                value = args[i + 1]
                i += 1
            append = key.endswith("+")
            parts = key.rstrip("+").split(".")
            node = dotted
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"argument {arg}: conflicting keys")
            parsed = _parse_json_value(value)
            if append:
                node.setdefault(parts[-1], []).append(parsed)
            else:
                node[parts[-1]] = parsed
        else:
            rest.append(arg)
        i += 1
    return dotted, rest


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Overlay dotted-flag keys on the JSON config; lists from ``key+`` flags are appended."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + value
        else:
            out[key] = value
    return out


def parse_kv(raw_json: str | None, dotted: dict[str, Any]) -> KVConfig | None:
    """Validate the KV transfer config the way vLLM's KVTransferConfig does."""
    data: dict[str, Any] = {}
    if raw_json is not None:
        try:
            data = json.loads(raw_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"argument --kv-transfer-config: invalid JSON value: {raw_json!r} ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"argument --kv-transfer-config: expected a JSON object, got {raw_json!r}")
    data = _deep_merge(data, dotted)
    if not data:
        return None
    connector = data.get("kv_connector")
    role = data.get("kv_role")
    if connector is not None and role is None:
        raise ConfigError(f"Please specify kv_role when kv_connector is set, supported roles are {KV_ROLES}")
    if role is not None and role not in KV_ROLES:
        raise ConfigError(f"Unsupported kv_role: {role}. Supported roles are {KV_ROLES}")
    policy = data.get("kv_load_failure_policy", "fail")
    if policy not in FAILURE_POLICIES:
        raise ConfigError(f"Unsupported kv_load_failure_policy: {policy!r}. Supported: {FAILURE_POLICIES}")
    if connector is None:
        return None
    extra = data.get("kv_connector_extra_config") or {}
    if not isinstance(extra, dict):
        raise ConfigError("kv_connector_extra_config must be a JSON object")
    backends = extra.get("backends", ["UCX"])
    if isinstance(backends, str):
        backends = [backends]
    if not isinstance(backends, list):
        raise ConfigError("kv_connector_extra_config.backends must be a list")
    return KVConfig(str(connector), str(role), str(policy), [str(b) for b in backends], data)


def pick_transport(kv: KVConfig | None, env: dict[str, str]) -> str:
    """EFA only when the LIBFABRIC backend is asked for and libfabric may use efa."""
    if kv is None:
        return "tcp"
    provider = env.get("FI_PROVIDER")
    if "LIBFABRIC" in kv.backends and (provider is None or provider == "efa"):
        return "efa"
    return "tcp"
