"""Bounds of a plan's numbers that depend on other fields or on the configuration.

Fixed bounds (one number, one reason) are in config/schemas/plan.schema.json, each with a
`description` saying why. This module holds the ones a schema cannot say:

- requests in flight per backend. The benchmark (scripts/bench_client/runner.py) opens one
  TCP connection per request in flight (aiohttp `TCPConnector(limit=0)`: no pooling limit, so
  no client-side queueing), in one process that never raises RLIMIT_NOFILE. On a node it
  inherits the SSM agent's soft limit: the amazon-ssm-agent.service unit sets no LimitNOFILE,
  so systemd's default soft limit of 1024 applies (systemd DefaultLimitNOFILE=1024:524288).
  We keep 64 descriptors for the process's own files (stdio, logs, event loop, imports).
  The proxy of tcp/efa patterns (scripts/proxy/) holds, per request in flight, the client's
  connection plus one to the prefill and one to the decode server: 3 descriptors. So at most
  960 requests in flight for unified patterns and 320 for tcp/efa. Offline patterns send all
  measured requests at once, so measurement_iterations is what is in flight there.
- a WARNING (never an error) when an online pattern's concurrency exceeds
  measurement_iterations: the loop never has more requests than that in flight.
- running sequences vLLM will admit: when `--max-num-seqs` is not given (our templates never
  give it), vLLM 0.15.1 sets max_num_seqs = min(default, max_num_batched_tokens), the default
  being 256 for the API server on a GPU under 70 GiB (vllm/engine/arg_utils.py,
  `EngineArgs._set_default_max_num_seqs_and_batched_tokens_args` and `get_batch_defaults`,
  read in the 0.15.1 wheel `make check-vllm-flags` installs). vLLM accepts the result, so its
  own config check passes; but a pattern whose max_num_batched_tokens is below the requests it
  keeps in flight measures a server that runs only that many at once, the rest waiting in its
  queue: an error naming both figures. Above the 256 default it is a warning.
- the model's context (config `models:`): prompt_tokens + max_tokens, and the max_model_len
  the server gets, at most the model's context_length (vLLM refuses a larger max_model_len
  than the model's max_position_embeddings). An unknown model is a warning: "context not
  checked".
"""

from __future__ import annotations

from typing import Any

from disagglab.errors import Problem
from disagglab.plan.jsonpath import format_path, written_patterns

FD_SOFT_LIMIT = 1024
FD_RESERVED = 64
FDS_PER_REQUEST = {"unified": 1, "tcp": 3, "efa": 3}


def max_in_flight(backend: str) -> int:
    """Requests a pattern of this backend can hold open: (1024 - 64) // descriptors per request."""
    return (FD_SOFT_LIMIT - FD_RESERVED) // FDS_PER_REQUEST[backend]


def in_flight(spec: dict[str, Any]) -> int:
    """Requests in flight at the peak of the measured phase (offline: all of them at once)."""
    if spec["measurement_type"] == "offline":
        return spec["measurement_iterations"]
    return min(spec["concurrency"], spec["measurement_iterations"])


def _why(backend: str) -> str:
    per = FDS_PER_REQUEST[backend]
    who = "the benchmark opens" if per == 1 else "the proxy holds (client, prefill and decode connections)"
    return (f"{who} {per} file descriptor(s) per request in flight under a soft RLIMIT_NOFILE of {FD_SOFT_LIMIT} "
            f"({FD_RESERVED} kept for the process's own files), so a {backend} pattern holds at most {max_in_flight(backend)}")


def in_flight_problems(doc: dict[str, Any], file: str) -> list[Problem]:
    """Errors: a pattern that asks for more requests in flight than its processes can hold open."""
    problems: list[Problem] = []
    common = doc["common_settings"]
    iterations = common["measurement_iterations"]
    for here, pat in written_patterns(doc):
        limit = max_in_flight(pat["backend"])
        if pat.get("measurement_type", common["measurement_type"]) == "offline":
            if iterations > limit:
                problems.append(Problem(file, format_path([*here, "measurement_type"]),
                                        f"offline sends all {iterations} measured requests at once (common_settings.measurement_iterations); {_why(pat['backend'])}"))
        if pat["concurrency"] > limit:
            problems.append(Problem(file, format_path([*here, "concurrency"]), f"{pat['concurrency']} is above {limit}: {_why(pat['backend'])}"))
    return problems


def concurrency_warnings(plan: Any, file: str, paths: dict[str, str]) -> list[Problem]:
    """Warnings: online concurrency above measurement_iterations is never reached."""
    out = []
    for pid, pat in plan.patterns.items():
        spec = pat.spec
        if spec["measurement_type"] == "online" and spec["concurrency"] > spec["measurement_iterations"]:
            out.append(Problem(file, f"{paths[pid]}.concurrency",
                               f"concurrency {spec['concurrency']} exceeds measurement_iterations {spec['measurement_iterations']}: "
                               f"the measured phase never has more than {spec['measurement_iterations']} requests in flight"))
    return out


def context_findings(plan: Any, file: str, paths: dict[str, str], models: dict[str, Any]) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) of prompt_tokens + max_tokens and max_model_len against the model's context."""
    model = plan.infrastructure["model"]
    if model not in models:
        note = f"unknown model {model!r}: context not checked (add it to config models: to check it)"
        return [], [Problem(file, "infrastructure.model", note)]
    context = models[model]["context_length"]
    errors = []
    for pid, pat in plan.patterns.items():
        spec = pat.spec
        need = spec["prompt_tokens"] + spec["max_tokens"]
        if need > context:
            errors.append(Problem(file, f"{paths[pid]}.prompt_tokens",
                                  f"prompt_tokens + max_tokens = {need} exceeds the context of {model} ({context} tokens, config models)"))
        elif spec["max_model_len"] > context:
            where = "max_model_len" if spec["max_model_len_source"] == "pattern" else "prompt_tokens"
            how = "" if where == "max_model_len" else f" (the automatic max_model_len, rounded up to a multiple of 1024; set max_model_len <= {context})"
            errors.append(Problem(file, f"{paths[pid]}.{where}",
                                  f"max_model_len {spec['max_model_len']} exceeds the context of {model} ({context} tokens): vLLM refuses it{how}"))
    return errors, []


def pattern_paths(plan: Any) -> dict[str, str]:
    """pattern id -> its JSON path in the plan file (layers[i].patterns[j])."""
    return {pid: f"layers[{li}].patterns[{pi}]" for li, layer in enumerate(plan.layers) for pi, pid in enumerate(layer.pattern_ids)}


VLLM_DEFAULT_MAX_NUM_SEQS = 256
"""vLLM 0.15.1's default max_num_seqs for the OpenAI API server on a GPU under 70 GiB (see above)."""


def scheduler_findings(plan: Any, file: str, paths: dict[str, str]) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings): the running-sequence cap vLLM derives from max_num_batched_tokens."""
    errors, warnings = [], []
    for pid, pat in plan.patterns.items():
        spec = pat.spec
        want, budget = in_flight(spec), spec["max_num_batched_tokens"]
        cap = min(VLLM_DEFAULT_MAX_NUM_SEQS, budget)
        if want <= cap:
            continue
        why = (f"vLLM runs at most min({VLLM_DEFAULT_MAX_NUM_SEQS}, max_num_batched_tokens) = {cap} sequences at once when "
               f"--max-num-seqs is not given (vLLM 0.15.1 EngineArgs._set_default_max_num_seqs_and_batched_tokens_args), "
               f"so {want - cap} of the {want} requests in flight would wait in its queue")
        if budget < want:
            errors.append(Problem(file, f"{paths[pid]}.max_num_batched_tokens",
                                  f"max_num_batched_tokens {budget} is below the {want} requests in flight: {why}; "
                                  f"raise it to at least {want}"))
        else:
            warnings.append(Problem(file, f"{paths[pid]}.concurrency", f"{want} requests in flight: {why}"))
    return errors, warnings
