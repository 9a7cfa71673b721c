"""The experiment plan: loading, validation and the effective spec of each pattern.

The JSON Schema in config/schemas/plan.schema.json is the single source of the plan's
structure; this module adds the rules a schema cannot say (uniqueness, id prefixes,
cross-field bounds) and reports every problem of a file at once, each with the file,
the JSON path and the reason, because a user fixing a plan wants the whole list.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from disagglab.errors import PlanError, Problem
from disagglab.paths import SCHEMA_DIR
from disagglab.plan import strictjson, sweep
from disagglab.plan.bounds import in_flight_problems
from disagglab.plan.jsonpath import format_path, written_patterns
from disagglab.plan.schema import schema_problems, strict_validator
from disagglab.plan.topology import plan_topology, topology_problems
from disagglab.plan.trace import trace_facts
from disagglab.plan.workload import plan_workload, replayed, trace_path, workload_problems

BACKENDS = ("unified", "tcp", "efa")
DISAGGREGATED = ("tcp", "efa")
# A Hugging Face id is org/name with a restricted alphabet; a local model is an absolute path.
MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
ABS_PATH_RE = re.compile(r"^(/[A-Za-z0-9._+-]+)+/?$")
# Keys a pattern may override from common_settings (the seed's "Pattern Fields" table).
OVERRIDABLE = ("prefix_cache", "gpu_memory_utilization", "max_num_batched_tokens", "measurement_type")
MAX_MODEL_LEN_ROUNDING = 1024


def auto_max_model_len(prompt_tokens: int, max_tokens: int) -> int:
    """max_model_len when a pattern does not set it.

    Formula: prompt_tokens + max_tokens rounded up to the next multiple of 1024. The
    benchmark sends exactly prompt_tokens token ids and asks for exactly max_tokens, so the
    sum always fits; rounding keeps the value stable across small edits and matches how
    people set it by hand (8k, 16k, 20k...).
    """
    need = prompt_tokens + max_tokens
    return int(math.ceil(need / MAX_MODEL_LEN_ROUNDING) * MAX_MODEL_LEN_ROUNDING)


@dataclass(frozen=True)
class Pattern:
    id: str
    layer: str
    backend: str
    spec: dict[str, Any]
    """Effective spec: common_settings overridden by the pattern, plus infrastructure."""
    repeats: int = 1
    """Measured trials. Not part of the spec: adding trials must not change what a trial runs."""

    @property
    def disaggregated(self) -> bool:
        return self.backend in DISAGGREGATED

    @property
    def roles(self) -> tuple[str, ...]:
        return ("producer", "consumer") if self.disaggregated else ("unified",)

    @property
    def uses_proxy(self) -> bool:
        """P/D pairs always go through the proxy; unified only when it has replicas to spread over."""
        topology = self.spec.get("topology") or {}
        return self.disaggregated or topology.get("unified", {}).get("instances", 1) > 1

    @property
    def workload_kind(self) -> str:
        """random (the default: unique prompts, no prefix ever shared) or the plan's workload kind."""
        return (self.spec.get("workload") or {"kind": "random"})["kind"]


@dataclass(frozen=True)
class Layer:
    id: str
    name: str
    priority: str
    description: str
    pattern_ids: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    path: Path
    phase: int
    name: str
    description: str
    infrastructure: dict[str, Any]
    common_settings: dict[str, Any]
    layers: tuple[Layer, ...]
    patterns: dict[str, Pattern] = field(default_factory=dict)
    sweep_origins: dict[tuple[int, int], sweep.Origin] = field(default_factory=dict)
    """(layer index, index in Layer.pattern_ids) -> the sweep an expanded pattern came from: checks
    report `layers[i].patterns[j]` and `sweep.relocate` names the sweep value instead."""

    @property
    def phase_name(self) -> str:
        return f"phase{self.phase}"

    def layer(self, layer_id: str) -> Layer:
        for layer in self.layers:
            if layer.id == layer_id:
                return layer
        known = ", ".join(lay.id for lay in self.layers)
        raise KeyError(f"layer {layer_id!r} is not in {self.path} (layers: {known})")

    def pattern(self, pattern_id: str) -> Pattern:
        try:
            return self.patterns[pattern_id]
        except KeyError:
            raise KeyError(f"pattern {pattern_id!r} is not in {self.path}") from None


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / "plan.schema.json").read_text())


@lru_cache(maxsize=1)
def _validator() -> Any:
    # ECMA-262 patterns: `$` is the end of the string, so an id never ends in a newline.
    return strict_validator(_schema())


@lru_cache(maxsize=1)
def _pattern_validator() -> Any:
    """One pattern object against the schema's $defs/pattern (a sweep's expanded patterns)."""
    return strict_validator({"$defs": _schema()["$defs"], "$ref": "#/$defs/pattern"})


def _pattern_fields() -> set[str]:
    return set(_schema()["$defs"]["pattern"]["properties"]) - {"id"}


def _schema_problems(doc: Any, file: str) -> list[Problem]:
    return schema_problems(_validator(), doc, file)


def _id_problems(doc: dict[str, Any], file: str) -> list[Problem]:
    """Duplicate layer and pattern ids, also those that differ only in case.

    Ids stay case-sensitive everywhere (paths, store keys, MLflow names, wildcards), but they
    become file names: `runs/p15-L0-x.json` and `runs/p15-l0-x.json` (or `L0.done` and
    `l0.done`) are one file on a case-insensitive file system, so one result would overwrite
    the other.
    """
    problems: list[Problem] = []
    layers: dict[str, tuple[str, str]] = {}
    patterns: dict[str, tuple[str, str]] = {}

    def check(seen: dict[str, tuple[str, str]], kind: str, ident: str, where: list[str | int]) -> None:
        first = seen.setdefault(ident.lower(), (ident, format_path(where)))
        if first[1] == format_path(where):
            return
        if first[0] == ident:
            reason = f"duplicate {kind} id {ident!r} (also {first[1]})"
        else:
            reason = (f"{kind} id {ident!r} differs from {first[0]!r} ({first[1]}) only in case: "
                      "their files would collide on a case-insensitive file system")
        problems.append(Problem(file, format_path([*where, "id"]), reason))

    for li, layer in enumerate(doc["layers"]):
        check(layers, "layer", layer["id"], ["layers", li])
        for pi, pat in enumerate(layer["patterns"]):
            check(patterns, "pattern", pat["id"], ["layers", li, "patterns", pi])
    return problems


def _cross_field_problems(doc: dict[str, Any], file: str, stem: str) -> list[Problem]:
    problems: list[Problem] = []

    def add(path: list[str | int], reason: str) -> None:
        problems.append(Problem(file, format_path(path), reason))

    phase = doc["phase"]
    if stem != f"phase{phase}":
        add(["phase"], f"file name stem must be 'phase{phase}' for phase {phase} (the file is named {stem!r})")
    infra = doc["infrastructure"]
    model = infra["model"]
    if not (MODEL_ID_RE.fullmatch(model) or ABS_PATH_RE.fullmatch(model)) or ".." in model.split("/"):
        add(["infrastructure", "model"], f"{model!r} is neither a model id (org/name of letters, digits, '.', '_', '-') nor an absolute path")
    venv = infra["venv_path"]
    if not ABS_PATH_RE.fullmatch(venv) or ".." in venv.split("/"):
        add(["infrastructure", "venv_path"], f"{venv!r} is not an absolute path of letters, digits, '.', '_', '+', '-' without '..'")
    if infra["tp_size"] > infra["gpu_count_per_node"]:
        add(["infrastructure", "tp_size"], f"tp_size {infra['tp_size']} exceeds gpu_count_per_node {infra['gpu_count_per_node']}")

    problems += _id_problems(doc, file)
    prefix = f"p{phase}-"
    any_disagg = False
    common = doc["common_settings"]
    for here, pat in written_patterns(doc):
        pid = pat["id"]
        if not pid.startswith(prefix):
            add([*here, "id"], f"pattern id {pid!r} must start with {prefix!r}")
        if pat["backend"] in DISAGGREGATED:
            any_disagg = True
        rate = pat.get("request_rate", common.get("request_rate"))
        mtype = pat.get("measurement_type", common["measurement_type"])
        if rate is not None and mtype != "online":
            add([*here, "request_rate"], f"an open loop at a request rate needs measurement_type 'online' (this pattern is {mtype!r})")
        if "burstiness" in pat and rate is None:
            add([*here, "burstiness"], "burstiness applies only with a request_rate (open loop)")
        need = pat["prompt_tokens"] + common["max_tokens"]
        if "max_model_len" in pat and pat["max_model_len"] < need:
            add([*here, "max_model_len"], f"{pat['max_model_len']} is less than prompt_tokens + max_tokens = {need}")
    if any_disagg and infra["node_count"] < 2:
        add(["infrastructure", "node_count"], f"node_count {infra['node_count']} < 2 but the plan has tcp/efa patterns (prefill and decode need two nodes)")
    return problems + topology_problems(doc, file) + workload_problems(doc, file) + in_flight_problems(doc, file)


def checked_document(doc: Any, file: str, stem: str) -> tuple[Any, dict[tuple[int, int], sweep.Origin], list[Problem]]:
    """(the document with its sweeps expanded, the origin of each expanded pattern, every problem)."""
    problems = _schema_problems(doc, file)
    if problems:  # still list the problems of the sweeps whose layers are well-formed
        return doc, {}, problems + _sweep_problems_beside(doc, file, problems)
    expanded, origins, problems = sweep.expand(doc, file, _pattern_validator(), _pattern_fields())
    if problems:
        return expanded, origins, problems
    return expanded, origins, sweep.relocate(_cross_field_problems(expanded, file, stem), origins)


def _sweep_problems_beside(doc: Any, file: str, schema: list[Problem]) -> list[Problem]:
    """The sweep problems of the layers the schema found nothing wrong in (so a file's whole list is shown)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list) or not isinstance(doc.get("phase"), int):
        return []
    bad = {int(m[1]) for p in schema if (m := re.match(r"layers\[(\d+)\]", p.path))}
    if any(not p.path.startswith("layers[") for p in schema if p.path.startswith("layers")):
        return []  # the layers list itself is wrong
    layers = [layer for i, layer in enumerate(doc["layers"]) if i not in bad and "sweep" in layer]
    if not layers:
        return []
    clean = {"phase": doc["phase"], "layers": [lay if i not in bad else {"id": "", "patterns": []} for i, lay in enumerate(doc["layers"])]}
    return sweep.expand(clean, file, _pattern_validator(), _pattern_fields())[2]


def validate_document(doc: Any, file: str, stem: str) -> list[Problem]:
    """Every problem of a parsed plan document; empty when it is valid."""
    return checked_document(doc, file, stem)[2]


def effective_spec(doc: dict[str, Any], pattern: dict[str, Any], plan_dir: Path | None = None) -> dict[str, Any]:
    """common_settings overridden by the pattern, plus infrastructure.

    This dict (not the plan file's timestamp) decides whether a pattern must run again.
    Layer membership and plan prose are left out on purpose: moving a pattern between
    layers or rewording a description changes no measurement.
    """
    common = {"prefix_cache": False, **doc["common_settings"]}
    spec: dict[str, Any] = {
        "pattern_id": pattern["id"],
        "backend": pattern["backend"],
        "prompt_tokens": pattern["prompt_tokens"],
        "concurrency": pattern["concurrency"],
        "max_tokens": common["max_tokens"],
        "warmup_iterations": common["warmup_iterations"],
        "measurement_iterations": common["measurement_iterations"],
    }
    for key in OVERRIDABLE:
        spec[key] = pattern.get(key, common[key])
    slo = {**common.get("slo", {}), **pattern.get("slo", {})}
    spec["slo"] = slo or None
    spec["request_rate"] = pattern.get("request_rate", common.get("request_rate"))
    spec["burstiness"] = pattern.get("burstiness", common.get("burstiness", 1.0)) if spec["request_rate"] else None
    if "max_model_len" in pattern:
        spec["max_model_len"] = pattern["max_model_len"]
        spec["max_model_len_source"] = "pattern"
    else:
        spec["max_model_len"] = auto_max_model_len(pattern["prompt_tokens"], common["max_tokens"])
        spec["max_model_len_source"] = "auto"
    spec["infrastructure"] = dict(doc["infrastructure"])
    spec["phase"] = doc["phase"]
    topology = plan_topology(pattern, pattern["backend"], doc["infrastructure"]["tp_size"])
    if topology is not None:  # absent by default: today's plans keep their spec and their tasks
        spec["topology"] = topology
    workload = plan_workload(pattern, doc["common_settings"], plan_dir)
    if workload is not None:  # likewise: absent for the default random prompts
        spec["workload"] = workload
        if workload["kind"] == "trace" and plan_dir is not None:  # the trace says how many requests it has
            spec["measurement_iterations"] = len(replayed(trace_facts(trace_path(plan_dir, workload), workload["format"]), workload))
    return spec


def _display(path: Path) -> str:
    """The path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_plan(path: str | Path) -> Plan:
    """Load and validate a plan file; raise PlanError listing every problem."""
    path = Path(path)
    file = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError([Problem(file, "", "plan file not found")]) from None
    except UnicodeDecodeError as exc:
        raise PlanError([Problem(file, "", f"not UTF-8 text: {exc}")]) from None
    doc = strictjson.loads(text, file, PlanError)  # no duplicate keys, no NaN/Infinity; a BOM is fine
    doc, origins, problems = checked_document(doc, file, path.stem)  # sweeps become ordinary patterns here
    if problems:
        raise PlanError(problems)
    layers = []
    patterns: dict[str, Pattern] = {}
    for layer in doc["layers"]:
        ids = []
        for pat in layer["patterns"]:
            repeats = int(pat.get("repeats", doc["common_settings"].get("repeats", 1)))
            patterns[pat["id"]] = Pattern(pat["id"], layer["id"], pat["backend"], effective_spec(doc, pat, path.parent), repeats)
            ids.append(pat["id"])
        layers.append(Layer(layer["id"], layer["name"], layer["priority"], layer["description"], tuple(ids)))
    return Plan(
        path=path,
        phase=doc["phase"],
        name=doc["name"],
        description=doc["description"],
        infrastructure=dict(doc["infrastructure"]),
        common_settings=dict(doc["common_settings"]),
        layers=tuple(layers),
        patterns=patterns,
        sweep_origins=origins,
    )
