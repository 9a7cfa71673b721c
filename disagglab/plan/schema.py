"""JSON Schema validation with the semantics the schemas were written for, and readable problems.

Two things the stock `jsonschema` validator gets wrong for us:
- `pattern` uses Python's `re.search`, where `$` also matches *before a trailing newline*: the
  id pattern `^[A-Za-z0-9][A-Za-z0-9.-]*$` would accept "p14-x\\n", and a newline in a value that
  reaches a command line or a store key is exactly what validation must refuse. JSON Schema
  patterns are ECMA-262, where `$` (without the m flag) matches only at the end. So a pattern
  is compiled with every unescaped `$` outside a character class turned into `\\Z`.
- its messages ("... is not valid under any of the given schemas") do not say what to fix.
  `schema_problems` turns each error into a Problem with the JSON path and a reason a user
  can act on (unknown key and the allowed ones, missing key, expected type, the rule's
  description for a failed `pattern`/`const`/`maximum`, which alternative of a `oneOf` to pick).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from disagglab.errors import Problem
from disagglab.plan.jsonpath import format_path


def ecma_pattern(pattern: str) -> str:
    """`pattern` with each end anchor `$` (unescaped, outside [...]) made to match only at the very end."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class:
            in_class = False
        out.append("\\Z" if ch == "$" and not in_class else ch)
        i += 1
    return "".join(out)


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(ecma_pattern(pattern))


def _pattern(validator: Any, patrn: str, instance: Any, schema: dict[str, Any]) -> Any:
    if validator.is_type(instance, "string") and not _compiled(patrn).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")


StrictValidator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _pattern})


def strict_validator(schema: dict[str, Any], formats: bool = False) -> Any:
    """A Draft 2020-12 validator whose `pattern` follows ECMA-262 (`$` is the end of the string).

    `formats`: also assert `format` (e.g. ipv4), which Draft 2020-12 treats as a mere annotation.
    """
    Draft202012Validator.check_schema(schema)
    return StrictValidator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER if formats else None)


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "array" if isinstance(value, list) else "object"


def _described(err: Any, reason: str) -> str:
    desc = err.schema.get("description") if isinstance(err.schema, dict) else None
    return f"{reason} ({desc})" if desc else reason


def _one_of_reason(err: Any) -> str:
    """Which alternatives of a oneOf the value is missing or mixes (e.g. {tag} or {instance_id, address})."""
    alternatives = [sorted(s.get("required", [])) for s in err.validator_value]
    options = " or ".join("{" + ", ".join(a) + "}" for a in alternatives)
    inst = err.instance if isinstance(err.instance, dict) else {}
    matching = [a for a in alternatives if all(k in inst for k in a)]
    if len(matching) > 1:
        return f"give exactly one of {options}, not several (has {', '.join(sorted(inst))})"
    return f"needs {options} (has {', '.join(sorted(inst)) or 'nothing'})"


def schema_problems(validator: Any, doc: Any, file: str, where: Callable[[list[str | int]], str] = format_path) -> list[Problem]:
    """Every schema violation of `doc`, each as file + JSON path + a reason that says what to fix.

    `where` names a location (a JSON path as a list); plan/sweep.py passes one that names the
    sweep value an expanded pattern came from.
    """
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        path = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(err.schema.get("properties", {}))
            for key in sorted(k for k in err.instance if k not in allowed):
                problems.append(Problem(file, where([*path, key]), f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})"))
            continue
        if err.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", err.message)
            problems.append(Problem(file, where([*path, missing[0] if missing else "?"]), "required key is missing"))
            continue
        if err.validator == "type":
            problems.append(Problem(file, where(path), f"expected {err.validator_value}, got {json_type(err.instance)} {json.dumps(err.instance)[:60]}"))
            continue
        if err.validator == "const":
            problems.append(Problem(file, where(path), _described(err, f"must be {err.validator_value!r}, got {err.instance!r}")))
            continue
        if err.validator in ("pattern", "maximum"):  # a maximum says why in its description
            problems.append(Problem(file, where(path), _described(err, err.message)))
            continue
        if err.validator == "not" and isinstance(err.schema, dict) and "description" in err.schema:
            problems.append(Problem(file, where(path), err.schema["description"]))
            continue
        if err.validator in ("oneOf", "anyOf"):
            problems.append(Problem(file, where(path), _one_of_reason(err)))
            continue
        problems.append(Problem(file, where(path), err.message))
    return problems
