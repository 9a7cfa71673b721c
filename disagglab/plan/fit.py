"""Will it fit: each pattern's weights and KV cache against the GPU memory vLLM may use.

Per pattern and role, on one GPU of the plan's instance type (config `estimate.instances`)
for the plan's model (config `models:`):

    budget        = gpu_memory_utilization x gpu_memory_gib x 2^30 - params x dtype_bytes / tp_size
    kv per token  = 2 (K and V) x layers x kv_heads x head_size x dtype_bytes / tp_size
    KV capacity   = budget // kv per token                                (tokens)
    one request   = max_model_len tokens: vLLM will not start when its KV cache cannot hold
                    one sequence of max_model_len (>= prompt_tokens + max_tokens)
    all in flight = requests in flight x tokens per request, where a unified or consumer
                    (decode) server holds prompt_tokens + max_tokens per request and the
                    producer (prefill) prompt_tokens + 1 (the proxy sends it max_tokens = 1)

No room for the weights or for one request is an ERROR (the server would not start). Room for
one request but not for all in flight is a WARNING: vLLM preempts and recomputes, so the
pattern measures preemption, not the load it names.

The check is optimistic on purpose: it uses the instance's nominal GPU memory and ignores
activations, CUDA graphs, NCCL buffers and vLLM's block rounding, so "fits" is necessary and
not sufficient; a warning or error is never a false alarm of this model. With `engine: sim`
or local real vLLM (disagglab/plan/local_vllm.py substitutes a tiny model) the check is
still about the plan's model as it would run on the plan's GPUs, not about what runs locally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from disagglab.errors import Problem
from disagglab.plan.bounds import in_flight
from disagglab.plan.topology import instances

GIB = 2**30
PRODUCER_OUTPUT_TOKENS = 1


@dataclass(frozen=True)
class Fit:
    """One role of one pattern on one GPU: bytes and tokens (see the module docstring)."""

    role: str
    budget_bytes: float
    weights_bytes: float
    kv_bytes_per_token: float
    capacity_tokens: int
    one_request_tokens: int
    in_flight: int
    tokens_per_request: int

    @property
    def needed_tokens(self) -> int:
        return self.in_flight * self.tokens_per_request

    @property
    def verdict(self) -> str:
        """fits, preempts (room for one request, not for all in flight) or error."""
        if self.budget_bytes <= 0 or self.capacity_tokens < self.one_request_tokens:
            return "error"
        return "fits" if self.needed_tokens <= self.capacity_tokens else "preempts"


def kv_bytes_per_token(model: dict[str, Any], tp: int) -> float:
    """K and V of every layer for one token, on one of tp GPUs."""
    return 2 * model["layers"] * model["kv_heads"] * model["head_size"] * model["dtype_bytes"] / tp


def role_fit(spec: dict[str, Any], role: str, model: dict[str, Any], instance: dict[str, Any]) -> Fit:
    servers = instances(spec, role)  # the role's tensor parallelism; requests spread over its servers
    tp = servers[0]["tp_size"]
    weights = model["params"] * model["dtype_bytes"] / tp
    budget = spec["gpu_memory_utilization"] * instance["gpu_memory_gib"] * GIB - weights
    per_token = kv_bytes_per_token(model, tp)
    out = PRODUCER_OUTPUT_TOKENS if role == "producer" else spec["max_tokens"]
    return Fit(role, budget, weights, per_token, max(0, int(budget // per_token)), spec["max_model_len"],
               -(-in_flight(spec) // len(servers)), spec["prompt_tokens"] + out)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _reason(fit: Fit, gpu: str) -> str:
    room = (f"{fit.role}: per {gpu} GPU {_gib(fit.budget_bytes + fit.weights_bytes)} usable - weights {_gib(fit.weights_bytes)} "
            f"= {_gib(fit.budget_bytes)} for KV at {fit.kv_bytes_per_token:.0f} B/token = {fit.capacity_tokens} tokens")
    if fit.budget_bytes <= 0:
        return f"{room}: the weights alone do not fit"
    if fit.capacity_tokens < fit.one_request_tokens:
        return f"{room}, less than one request of max_model_len {fit.one_request_tokens} (vLLM will not start)"
    return (f"{room}; {fit.in_flight} requests in flight x {fit.tokens_per_request} tokens = {fit.needed_tokens} "
            f"do not fit at once, so vLLM preempts (fits only with preemption)")


def fit_findings(plan: Any, file: str, paths: dict[str, str], cfg: dict[str, Any]) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) of every pattern and role; unknown model or instance type: one warning."""
    infra = plan.infrastructure
    model = cfg.get("models", {}).get(infra["model"])
    instance = cfg.get("estimate", {}).get("instances", {}).get(infra["instance_type"])
    if instance is None:
        return [], [Problem(file, "infrastructure.instance_type", f"unknown instance type {infra['instance_type']!r}: memory not checked (add it to config estimate.instances)")]
    if infra["gpu_count_per_node"] > instance["gpus"]:
        return [Problem(file, "infrastructure.gpu_count_per_node", f"{infra['gpu_count_per_node']} exceeds the {instance['gpus']} GPUs of {infra['instance_type']} (config estimate.instances)")], []
    if model is None:
        return [], [Problem(file, "infrastructure.model", f"unknown model {infra['model']!r}: memory not checked (add it to config models:)")]
    errors, warnings = [], []
    gpu = instance.get("gpu", "")
    for pid, pat in plan.patterns.items():
        for role in pat.roles:
            fit = role_fit(pat.spec, role, model, instance)
            if fit.verdict == "error":
                errors.append(Problem(file, paths[pid], _reason(fit, gpu)))
            elif fit.verdict == "preempts":
                warnings.append(Problem(file, paths[pid], _reason(fit, gpu)))
    return errors, warnings
