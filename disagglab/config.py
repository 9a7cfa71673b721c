"""The pipeline configuration: config/config.yaml merged with Snakemake's --config overrides.

Snakemake jobs run in their own processes; they receive the merged configuration through
the DISAGGLAB_CONFIG environment variable so that every job sees exactly what the DAG saw.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError, Problem
from .jsonpath import format_path
from .paths import CONFIG_DIR, SCHEMA_DIR

ENV_VAR = "DISAGGLAB_CONFIG"


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / "config.schema.json").read_text()))


def validate_config(cfg: Any, source: str) -> dict[str, Any]:
    problems = [
        Problem(source, format_path(list(e.absolute_path)), e.message)
        for e in sorted(_validator().iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if not problems and cfg["benchmark"]["token_id_low"] >= cfg["benchmark"]["token_id_high"]:
        problems.append(Problem(source, "benchmark.token_id_low", "must be less than benchmark.token_id_high"))
    if not problems:
        from .faults import reserved_env_problems

        problems += reserved_env_problems(cfg, source)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config_file(path: str | Path = CONFIG_DIR / "config.yaml") -> dict[str, Any]:
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(str(path), "", f"invalid YAML: {exc}")]) from None
    return validate_config(cfg, str(path))


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

    cfg = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())
    for name in configfiles:
        try:
            extra = yaml.safe_load(Path(name).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError([Problem(name, "", f"cannot read config file: {exc}")]) from None
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
