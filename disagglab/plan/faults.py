"""Test-only fault injection, targeted per pattern and role: DISAGGLAB_FAULTS.

Why one mechanism, read only here: a fault must hit exactly the process a test names (one
server of one pattern, or its proxy or benchmark), work the same over SSM (where the node does
not share our environment), and be impossible to switch on from a plan, a config file or a
task definition. So the control side reads DISAGGLAB_FAULTS from its own environment,
validates it loudly, and passes each role's fault to the node runner as an explicit step
argument (`--fault ROLE=SPEC`); the runner applies it to that one process (task_runner.py).

Format (JSON): {"<pattern id>": {"<role>": "<fault>", ...}, ...}

role                            faults
unified / producer / consumer   stand-in only (engine: sim), see scripts/vllm_sim.py:
                                crash_after=N, slow_start=S, never_healthy, hang_mid_stream=N,
                                http_500=N, malformed_sse=N, no_kv_params (producer only),
                                ignore_kv_params (consumer only: it prefills locally)
unified-i / producer-i / ...    the same, for instance i >= 1 of a pattern's topology
proxy (tcp/efa patterns)        kill_after_s=S: the runner SIGKILLs the proxy's process group
benchmark                       kill_after_s=S: ... the benchmark's, S s after the benchmark started
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from disagglab.errors import InputError, Problem
from disagglab.plan import strictjson
from disagglab.plan.model import Pattern
from disagglab.plan.topology import instances

ENV_VAR = "DISAGGLAB_FAULTS"
RESERVED_ENV_PREFIXES = ("DISAGG_", "DISAGGLAB_")
LEGACY_ENV = "DISAGG_SIM_FAULT"
_COUNT = r"[1-9][0-9]*"
_SECONDS = r"[0-9]+(?:\.[0-9]+)?"
SERVER_FAULTS = {
    "crash_after": re.compile(r"^crash_after=[0-9]+$"),
    "slow_start": re.compile(rf"^slow_start={_SECONDS}$"),
    "never_healthy": re.compile(r"^never_healthy$"),
    "hang_mid_stream": re.compile(rf"^hang_mid_stream={_COUNT}$"),
    "http_500": re.compile(rf"^http_500={_COUNT}$"),
    "malformed_sse": re.compile(rf"^malformed_sse={_COUNT}$"),
    "no_kv_params": re.compile(r"^no_kv_params$"),
    "ignore_kv_params": re.compile(r"^ignore_kv_params$"),
}
KILL_FAULT = re.compile(rf"^kill_after_s={_SECONDS}$")
SERVER_ROLES = ("unified", "producer", "consumer")
ROLES = (*SERVER_ROLES, "proxy", "benchmark")
INSTANCE_ROLE = re.compile(r"^(unified|producer|consumer)-([1-9][0-9]*)$")
"""Instance i >= 1 of a role in a pattern's topology (instance 0 is the role's own name)."""


def server_role(role: str) -> str:
    """`consumer-1` -> `consumer`; any other role as it is."""
    m = INSTANCE_ROLE.match(role)
    return m.group(1) if m else role
USAGE = (f'{ENV_VAR}=\'{{"<pattern id>": {{"<role>": "<fault>"}}}}\' with role one of {", ".join(ROLES)}; server faults: '
         "crash_after=N, slow_start=S, never_healthy, hang_mid_stream=N, http_500=N, malformed_sse=N, no_kv_params, ignore_kv_params; "
         "a server role may name one instance of a topology: consumer-1; proxy/benchmark: kill_after_s=S")


class FaultError(Exception):
    """DISAGGLAB_FAULTS (or a stray fault variable) is wrong; the message says where and how."""


def parse(text: str) -> dict[str, dict[str, str]]:
    """The JSON shape and every fault's spelling; pattern and role checks need a plan (validate)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise FaultError(f"{ENV_VAR}: not JSON ({exc}); expected {USAGE}") from None
    try:  # a pattern or role named twice would silently drop a fault
        doc = strictjson.loads(text, ENV_VAR)
    except InputError as exc:
        raise FaultError(str(exc)) from None
    if not isinstance(doc, dict):
        raise FaultError(f"{ENV_VAR}: expected a JSON object, got {type(doc).__name__}; {USAGE}")
    problems = []
    for pid, roles in doc.items():
        if not isinstance(roles, dict) or not roles:
            problems.append(f"{ENV_VAR}: {pid}: expected a non-empty object of role -> fault")
            continue
        for named, spec in roles.items():
            where, role = f"{ENV_VAR}: {pid}.{named}", server_role(named)
            if role not in ROLES:
                problems.append(f"{where}: unknown role {role!r} (roles: {', '.join(ROLES)})")
            elif not isinstance(spec, str):
                problems.append(f"{where}: expected a string, got {type(spec).__name__}")
            elif role in SERVER_ROLES and not any(rx.match(spec) for rx in SERVER_FAULTS.values()):
                problems.append(f"{where}: unknown fault {spec!r} (server faults: crash_after=N, slow_start=S, never_healthy, "
                                "hang_mid_stream=N, http_500=N, malformed_sse=N, no_kv_params, ignore_kv_params; N >= 1 except crash_after)")
            elif role not in SERVER_ROLES and not KILL_FAULT.match(spec):
                problems.append(f"{where}: unknown fault {spec!r} (the {role} supports kill_after_s=SECONDS)")
    if problems:
        raise FaultError("\n".join(problems))
    return doc


def validate_entry(pid: str, roles: Mapping[str, str], pattern: Pattern | None, engine: str) -> list[str]:
    """Does this pattern exist and have these roles, and can the engine inject the faults?"""
    where = f"{ENV_VAR}: {pid}"
    if pattern is None:
        return [f"{where}: unknown pattern (no plan in plans/ defines it)"]
    problems = []
    for named, spec in roles.items():
        role = server_role(named)
        if role in SERVER_ROLES and role not in pattern.roles:
            problems.append(f"{where}.{named}: pattern {pid} ({pattern.backend}) has no role {role!r} (roles: {', '.join(pattern.roles)})")
        elif named != role and named not in {s["name"] for s in instances(pattern.spec, role)}:
            problems.append(f"{where}.{named}: pattern {pid} runs {len(instances(pattern.spec, role))} {role} instance(s), so no {named!r}")
        elif role == "proxy" and not pattern.disaggregated:
            problems.append(f"{where}.proxy: pattern {pid} ({pattern.backend}) runs no proxy")
        elif role in SERVER_ROLES and engine != "sim":
            problems.append(f"{where}.{named}: server faults exist only in the stand-in (engine: sim), not with engine {engine!r}")
        elif spec == "no_kv_params" and role != "producer":
            problems.append(f"{where}.{named}: no_kv_params applies to a producer only")
        elif spec == "ignore_kv_params" and role != "consumer":
            problems.append(f"{where}.{named}: ignore_kv_params applies to a consumer (decode server) only")
        elif role == "producer" and spec.split("=")[0] in ("hang_mid_stream", "malformed_sse"):
            problems.append(f"{where}.{named}: {spec.split('=')[0]} breaks streamed answers, and a producer answers the proxy without streaming")
    return problems


def phase_of(pattern_id: str) -> str | None:
    m = re.match(r"^p([0-9]+)-", pattern_id)
    return f"phase{int(m.group(1))}" if m else None


def _refuse_legacy(environ: Mapping[str, str]) -> None:
    if environ.get(LEGACY_ENV):
        raise FaultError(f"{LEGACY_ENV} is set in the environment ({environ[LEGACY_ENV]!r}); the pipeline never passes it on "
                         f"(it would hit every server of every pattern). Name the pattern and role instead: {USAGE}")


def check_environment(environ: Mapping[str, str], lookup: Callable[[str], Pattern | None], engine: str) -> dict[str, dict[str, str]]:
    """Validate the whole of DISAGGLAB_FAULTS (at DAG build time: before any job runs)."""
    _refuse_legacy(environ)
    text = environ.get(ENV_VAR, "")
    if not text:
        return {}
    faults = parse(text)
    problems = [p for pid, roles in faults.items() for p in validate_entry(pid, roles, lookup(pid), engine)]
    if problems:
        raise FaultError("\n".join(problems))
    return faults


def for_pattern(environ: Mapping[str, str], pattern: Pattern, engine: str) -> dict[str, str]:
    """This pattern's faults (role -> spec), validated again where they are used."""
    _refuse_legacy(environ)
    text = environ.get(ENV_VAR, "")
    roles = parse(text).get(pattern.id, {}) if text else {}
    problems = validate_entry(pattern.id, roles, pattern, engine)
    if problems:
        raise FaultError("\n".join(problems))
    return roles


def step_args(faults: Mapping[str, str], roles: tuple[str, ...] | list[str]) -> list[str]:
    """`--fault ROLE=SPEC` for the roles one runner step handles."""
    return [arg for role in roles for named in faults if server_role(named) == role for arg in ("--fault", f"{named}={faults[named]}")]


def reserved_env_problems(cfg: Mapping[str, Any], source: str) -> list[Problem]:
    """Config env maps rendered into tasks must not carry test-only DISAGG_*/DISAGGLAB_* switches."""
    maps: list[tuple[str, Any]] = [(f"transports.{name}.env", t.get("env")) for name, t in (cfg.get("transports") or {}).items()
                                   if isinstance(t, dict)]
    local = cfg.get("local_vllm") or {}
    maps.append(("local_vllm.env", local.get("env")))
    maps += [(f"local_vllm.transport_env.{name}", env) for name, env in (local.get("transport_env") or {}).items()]
    return [Problem(source, f"{path}.{key}", "DISAGG_*/DISAGGLAB_* variables are test-only switches and cannot be set "
                                             f"from configuration (fault injection: {ENV_VAR} in the environment of a test)")
            for path, env in maps if isinstance(env, dict) for key in env if str(key).startswith(RESERVED_ENV_PREFIXES)]
