"""The pipeline configuration: config/config.yaml merged with Snakemake's --config overrides.

Snakemake jobs run in their own processes; they receive the merged configuration through
the DISAGGLAB_CONFIG environment variable so that every job sees exactly what the DAG saw.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from disagglab.errors import ConfigError, Problem
from disagglab.paths import CONFIG_DIR, SCHEMA_DIR
from disagglab.plan import strictjson, strictyaml
from disagglab.plan.config_checks import cross_field_problems
from disagglab.plan.schema import schema_problems, strict_validator

ENV_VAR = "DISAGGLAB_CONFIG"


@lru_cache(maxsize=1)
def _validator() -> Any:
    # ECMA-262 patterns (`$` is the end of the string): no value may end in a newline.
    return strict_validator(json.loads((SCHEMA_DIR / "config.schema.json").read_text()), formats=True)


Source = tuple[str, Any]
"""(name shown to the user, parsed document): a config file, or `--config` overrides."""


def _has(doc: Any, parts: list[str | int]) -> bool:
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and isinstance(part, int) and part < len(doc):
            doc = doc[part]
        else:
            return False
    return True


def _parts(path: str) -> list[str | int]:
    """`aws.pairs[0].node2` -> ['aws', 'pairs', 0, 'node2'] (the inverse of format_path)."""
    out: list[str | int] = []
    for m in re.finditer(r"([^.\[\]]+)|\[(\d+)\]", path):
        out.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
    return out


def _owner(doc: Any, parts: list[str | int]) -> bool:
    """Does this source decide the value at `parts`? It does when it sets the path itself, or a
    list or scalar on the way (Snakemake merges mappings key by key but replaces anything else)."""
    for part in parts:
        if not isinstance(doc, dict):
            return True
        if part not in doc:
            return False
        doc = doc[part]
    return True


def _attribute(problem: Problem, sources: list[Source]) -> Problem:
    """Name the source the offending value came from: the last one that decides its path,
    else (a missing key) the last one that sets its deepest existing parent."""
    parts = _parts(problem.path) if problem.path != "(top level)" else []
    for name, doc in reversed(sources):
        if _owner(doc, parts):
            return Problem(name, problem.path, problem.reason)
    for depth in range(len(parts) - 1, -1, -1):
        for name, doc in reversed(sources):
            if _has(doc, parts[:depth]):
                return Problem(name, problem.path, problem.reason)
    return problem


def validate_config(cfg: Any, source: str, sources: list[Source] | None = None) -> dict[str, Any]:
    """Validate a merged configuration; raise ConfigError listing every problem.

    With `sources` (the files and overrides it was merged from, in order), each problem
    names the file that set the offending value; otherwise it names `source`.
    """
    problems = schema_problems(_validator(), cfg, source)
    if not problems:
        if cfg["benchmark"]["token_id_low"] >= cfg["benchmark"]["token_id_high"]:
            problems.append(Problem(source, "benchmark.token_id_low", "must be less than benchmark.token_id_high"))
        problems += cross_field_problems(cfg, source)
        from disagglab.plan.faults import reserved_env_problems

        problems += reserved_env_problems(cfg, source)
    if problems:
        raise ConfigError([_attribute(p, sources) for p in problems] if sources else problems)
    return cfg


def display_path(path: str | Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_config_file(path: str | Path, name: str | None = None) -> Any:
    """A config file's document, read as Snakemake reads it (JSON when it is JSON, else YAML), but strictly.

    A key set twice in one mapping is an error naming both lines (json and PyYAML keep the last
    without a word), and so are JSON's non-numbers NaN/Infinity. A UTF-8 byte-order mark is fine.
    """
    name = display_path(path) if name is None else name
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(name, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(name, "", f"not UTF-8 text: {exc}")]) from None
    try:
        json.loads(text.removeprefix(strictjson.BOM))
    except ValueError:
        return strictyaml.load(text, name, ConfigError)
    return strictjson.loads(text, name, ConfigError)


def load_sources(files: list[str | Path], overrides: dict[str, Any] | None = None) -> list[Source]:
    """Parse each config file (an error names its file) plus `--config` overrides, in merge order."""
    sources: list[Source] = [(display_path(f), read_config_file(f)) for f in files]
    if overrides:
        sources.append(("--config", dict(overrides)))
    return sources


def merge(sources: list[Source]) -> Any:
    """Deep-merge the sources as Snakemake does (mappings merge key by key, anything else replaces)."""
    def update(base: Any, new: Any) -> Any:
        if isinstance(base, dict) and isinstance(new, dict):
            out = dict(base)
            for k, v in new.items():
                out[k] = update(base.get(k), v)
            return out
        return new

    merged: Any = {}
    for _, doc in sources:
        merged = update(merged, doc if doc is not None else {})
    return merged


def load_config_file(path: str | Path = CONFIG_DIR / "config.yaml") -> dict[str, Any]:
    path = Path(path)
    return validate_config(read_config_file(path, str(path)), str(path))


def current_config() -> dict[str, Any]:
    """The configuration a job should use: the DAG's (env) when run by Snakemake, else the file."""
    raw = os.environ.get(ENV_VAR)
    if raw:
        return validate_config(json.loads(raw), f"${ENV_VAR}")
    return load_config_file()


def merged_config(configfiles: list[str]) -> dict[str, Any]:
    """config/config.yaml with each file merged over it, key by key, as Snakemake's --configfile does."""

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for key, value in b.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    cfg = read_config_file(CONFIG_DIR / "config.yaml", "config/config.yaml")
    for name in configfiles:
        extra = read_config_file(name, name) or {}
        if not isinstance(extra, dict):
            raise ConfigError([Problem(name, "", "expected a mapping at the top level")])
        cfg = merge(cfg, extra)
    return validate_config(cfg, " + ".join(["config/config.yaml", *configfiles]))


def sim_profile(cfg: dict[str, Any], model: str) -> dict[str, Any]:
    """The stand-in's timing profile for a model: the default profile overlaid by the model's."""
    profiles = cfg["sim"]["profiles"]
    merged: dict[str, Any] = {}
    for source in (profiles["default"], profiles.get(model, {})):
        for key, value in source.items():
            if isinstance(value, dict):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    if "time_scale" in cfg["sim"]:
        merged["time_scale"] = cfg["sim"]["time_scale"]
    return merged
