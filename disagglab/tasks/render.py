"""Render a pattern's task definitions from templates/ (Jinja2, StrictUndefined).

A task definition is data: argv lists and env maps. Values known only on the node at run
time (addresses, ports, the node's folder, its python) are `${name}` tokens that the
node-side runner substitutes word by word; nothing here is ever parsed by a shell.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any

import jinja2

from disagglab.paths import TEMPLATE_DIR
from disagglab.plan import local_vllm
from disagglab.plan.config import sim_profile
from disagglab.plan.model import Pattern
from disagglab.plan.topology import instance_port_names, instances

TEMPLATES = {
    "unified": "unified.json.jinja2",
    "producer": "disaggregated-producer.json.jinja2",
    "consumer": "disaggregated-consumer.json.jinja2",
}
# Every token the runner knows how to bind: twin of remote/runner/bindings.py BINDING_NAMES (tests/test_twins.py).
BINDINGS = frozenset(
    {
        "python", "node_dir", "out_dir", "bind_host", "node1_host", "node2_host",
        "unified_port", "producer_port", "consumer_port", "proxy_port",
        "producer_side_channel_port", "consumer_side_channel_port", "preflight_port",
        *instance_port_names(),
    }
)
_TOKEN = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def _combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {**a, **b}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Recursive combine: b's keys win, nested objects are merged rather than replaced."""
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _undefined_is_an_error(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # raises UndefinedError naming the missing variable
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _tojson(value: Any) -> str:
    """Jinja's tojson hands an undefined value to json.dumps as an object; make it an error."""
    return json.dumps(value, sort_keys=True, default=_undefined_is_an_error)


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["combine"] = _combine
    env.filters["merge"] = _merge
    env.filters["tojson"] = _tojson
    return env


def engine_block(cfg: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The executable that serves the model. The engine changes this and nothing else
    (except real vLLM on this machine, where local_vllm.py also swaps model and CPU extras)."""
    infra = spec["infrastructure"]
    if cfg["engine"] == "sim":
        profile = json.dumps(sim_profile(cfg, infra["model"]), sort_keys=True, separators=(",", ":"))
        executable = ["${python}", "${node_dir}/scripts/vllm_sim.py", "--profile-json", profile]
        if "topology" in spec:  # several servers per node share its link; today's one-per-node tasks stay as they were
            executable += ["--node-link", "${node_dir}/sim-node-link"]
        return {"name": "sim", "executable": executable}
    return {"name": "vllm", "executable": [f"{infra['venv_path'].rstrip('/')}/bin/vllm"]}


def render_task(pattern: Pattern, role: str, phase: str, cfg: dict[str, Any]) -> str:
    """The task definition text for one role of a pattern (deterministic for equal inputs)."""
    if role not in pattern.roles:
        raise ValueError(f"pattern {pattern.id} ({pattern.backend}) has no role {role!r}; roles: {', '.join(pattern.roles)}")
    # Real vLLM on this machine replaces model and venv through configuration (local_vllm.py).
    spec = local_vllm.effective_spec(cfg, pattern.spec)
    context = {
        "phase": phase,
        "spec": spec,
        "infra": spec["infrastructure"],
        "engine": engine_block(cfg, spec),
        "server": cfg["server"],
        "benchmark": cfg["benchmark"],
        "instances": {role: instances(spec, role) for role in pattern.roles},
        **local_vllm.render_context(cfg, pattern.backend),
    }
    text = _env().get_template(TEMPLATES[role]).render(**context)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"template {TEMPLATES[role]} rendered invalid JSON for {pattern.id}: {exc}") from None
    unknown = sorted(set(_TOKEN.findall(text)) - BINDINGS)
    if unknown:
        raise ValueError(f"task {pattern.id}/{role} (template {TEMPLATES[role]}) uses unknown run-time tokens: {', '.join(unknown)} "
                         "(a ${name} in a template or a configuration value is bound on the node; these names are not)")
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
