"""Sweeps: a layer's patterns written once, as the cartesian product of the values of a few fields.

A layer may hold, besides (or instead of) `patterns`:

    "base":        {"prompt_tokens": 4000},                  fields every expanded pattern gets
    "sweep":       {"concurrency": [2, 4], "backend": [...]}, field -> the values it takes
    "id_template": "p{phase}-{backend}-{tokens}-c{concurrency}"   (optional)

`expand` turns them into ordinary pattern objects appended after the layer's written patterns,
so every later check, the DAG, `list`, `status`, the estimate and the report see patterns only.

Order: the product runs like nested loops over the sweep's keys as written, the first key
outermost (slowest), each key's values in list order.

Ids: `id_template` (default DEFAULT_TEMPLATE) with `{phase}`, `{layer}`, `{tokens}` (prompt_tokens
as the seed writes it: a multiple of 1000 as `<n/1000>k`, any other count as the number) and
`{<field>}` for any pattern field (its value formatted by `value_text`). Every swept field the
template does not name gets a suffix, in sweep order: backend `-<backend>`, prompt_tokens
`-<tokens>`, concurrency `-c<n>`, any other field `-<initials><value>` (initials of its
`_`-separated words: max_num_batched_tokens 8192 -> `-mnbt8192`). The suffix does not depend on
how many values a field has, so appending a value never changes an existing id.

Problems name the sweep: `layers[1].sweep.concurrency[2]` for a value, `layers[1].base.<field>`
for a shared field and `layers[1].sweep[concurrency[2], backend[1]] (pattern <id>)` for a whole
expanded pattern; `relocate` rewrites the `layers[i].patterns[j]` paths later checks produce.
"""

from __future__ import annotations

import itertools
import json
import re
import string
from dataclasses import dataclass
from typing import Any

from disagglab.errors import Problem
from disagglab.plan.jsonpath import format_path
from disagglab.plan.schema import schema_problems

DEFAULT_TEMPLATE = "p{phase}-{layer}-{backend}-{tokens}-c{concurrency}"
MAX_PATTERNS = 1000
"""Patterns one sweep may expand to: each is rendered while Snakemake builds its DAG, and a
product beyond this is almost surely a mistake (a range written out as values)."""
_SPECIAL = {"phase", "layer", "tokens"}
_VIRTUAL = re.compile(r"layers\[(\d+)\]\.patterns\[(\d+)\]")


def tokens_text(n: int) -> str:
    """prompt_tokens as the seed writes it in ids: 4000 -> 4k, 20000 -> 20k, 1500 -> 1500."""
    return f"{n // 1000}k" if n % 1000 == 0 and n > 0 else str(n)


def value_text(value: Any) -> str:
    """A field value in an id: numbers as JSON writes them, booleans on/off, strings as given,
    objects as <initials(key)><value> in key order joined by '.', arrays joined by '.'."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        return ".".join(f"{initials(k)}{value_text(value[k])}" for k in sorted(value))
    if isinstance(value, list):
        return ".".join(value_text(v) for v in value)
    if value is None:
        return "none"
    return value if isinstance(value, str) else json.dumps(value)


def initials(field: str) -> str:
    return "".join(word[0] for word in field.split("_") if word)


_SEED_FORMS = {"backend": "-", "prompt_tokens": "-", "concurrency": "-c"}


def suffix_head(field: str) -> str:
    """What precedes the value in the suffix of a swept field the template does not name."""
    return _SEED_FORMS.get(field, f"-{initials(field)}")


def _field_text(field: str, value: Any) -> str:
    return tokens_text(value) if field == "prompt_tokens" and isinstance(value, int) else value_text(value)


@dataclass(frozen=True)
class Origin:
    """Where an expanded pattern comes from: its layer, the value index of each swept field, the base keys."""

    layer: int
    picks: tuple[tuple[str, int], ...]
    base: frozenset[str]
    pattern_id: str

    def whole(self) -> str:
        return f"layers[{self.layer}].sweep[{', '.join(f'{k}[{i}]' for k, i in self.picks)}]"

    def field_place(self, key: str, rest: str = "") -> str | None:
        """The JSON path that set `key` in this pattern, or None when neither sweep nor base did."""
        index = dict(self.picks).get(key)
        if index is not None:
            return f"layers[{self.layer}].sweep.{key}[{index}]{rest}"
        if key in self.base:
            return f"layers[{self.layer}].base.{key}{rest}"
        return None

    def locate(self, rest: str) -> str:
        """A later check's path below the pattern (`.concurrency`, `.slo.ttft_ms`, `` or `.id`), named by the sweep."""
        tag = f" (pattern {self.pattern_id})"
        match = re.fullmatch(r"\.([A-Za-z0-9_]+)(.*)", rest)
        if not match or match[1] == "id":
            return self.whole() + tag
        return (self.field_place(match[1], match[2]) or self.whole() + rest) + tag


def relocate(problems: list[Problem], origins: dict[tuple[int, int], Origin]) -> list[Problem]:
    """Problems with every `layers[i].patterns[j]...` of an expanded pattern named by its sweep."""
    if not origins:
        return problems

    def whole(m: re.Match[str]) -> str:
        origin = origins.get((int(m[1]), int(m[2])))
        return f"{origin.whole()} (pattern {origin.pattern_id})" if origin else m[0]

    out = []
    for p in problems:
        m = _VIRTUAL.match(p.path)
        origin = origins.get((int(m[1]), int(m[2]))) if m else None
        path = origin.locate(p.path[m.end():]) if origin and m else p.path
        out.append(Problem(p.file, path, _VIRTUAL.sub(whole, p.reason)))
    return list(dict.fromkeys(out))


def _template_problems(layer: dict[str, Any], li: int, phase: int, file: str) -> list[Problem]:
    template = layer.get("id_template", DEFAULT_TEMPLATE)
    where = format_path(["layers", li, "id_template"])
    set_by = set(layer.get("base", {})) | set(layer["sweep"])
    problems = []
    if not (template.startswith("p{phase}-") or template.startswith(f"p{phase}-")):
        problems.append(Problem(file, where, f"{template!r} must start with 'p{{phase}}-' (or 'p{phase}-'): pattern ids start with 'p{phase}-'"))
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return [*problems, Problem(file, where, f"{template!r} is not a template: {exc}")]
    for name, spec, conv in fields:
        if spec or conv:
            problems.append(Problem(file, where, f"{{{name}}}: no format spec or conversion (write {{{name}}})"))
        elif name not in _SPECIAL and name not in set_by:
            problems.append(Problem(file, where, f"{{{name}}} names a field that neither base nor sweep sets "
                                                 f"(placeholders: phase, layer, tokens and the fields of base and sweep: {', '.join(sorted(set_by))})"))
        elif name == "tokens" and "prompt_tokens" not in set_by:
            problems.append(Problem(file, where, "{tokens} needs prompt_tokens in base or sweep"))
    return problems


def _named(template: str) -> set[str]:
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    return names | ({"prompt_tokens"} if "tokens" in names else set())


def _layer_problems(layer: dict[str, Any], li: int, phase: int, fields: set[str], file: str) -> list[Problem]:
    """The sweep's own mistakes: unknown fields, a field in base and sweep, repeated values, suffix clashes, size."""
    problems: list[Problem] = []
    sweep, base = layer["sweep"], layer.get("base", {})
    allowed = ", ".join(sorted(fields))
    for part, keys in (("base", base), ("sweep", sweep)):
        for key in keys:
            if key not in fields and key != "id":  # id: the schema says ids come from id_template
                problems.append(Problem(file, format_path(["layers", li, part, key]), f"unknown pattern field {key!r} (allowed: {allowed})"))
    for key in sweep:
        if key in base:
            problems.append(Problem(file, format_path(["layers", li, "base", key]), f"{key!r} is also swept (layers[{li}].sweep.{key}): give it in one place"))
        seen: dict[str, int] = {}
        for vi, value in enumerate(sweep[key]):
            first = seen.setdefault(json.dumps(value, sort_keys=True), vi)
            if first != vi:
                problems.append(Problem(file, format_path(["layers", li, "sweep", key, vi]), f"duplicate value {json.dumps(value)} (also layers[{li}].sweep.{key}[{first}])"))
    problems += _template_problems(layer, li, phase, file)
    if problems:
        return problems
    named = _named(layer.get("id_template", DEFAULT_TEMPLATE))
    heads: dict[str, str] = {}
    for key in sweep:  # backend, prompt_tokens and concurrency have their seed forms, never ambiguous
        if key not in named and key not in _SEED_FORMS and heads.setdefault(suffix_head(key), key) != key:
            problems.append(Problem(file, format_path(["layers", li, "sweep", key]),
                                    f"its id suffix {suffix_head(key)!r}<value> is also that of {heads[suffix_head(key)]!r}: name one of them in id_template"))
    size = 1
    for values in sweep.values():
        size *= len(values)
    if size > MAX_PATTERNS:
        problems.append(Problem(file, format_path(["layers", li, "sweep"]), f"expands to {size} patterns, more than {MAX_PATTERNS} (split it into layers)"))
    return problems


def _pattern_id(layer: dict[str, Any], phase: int, pattern: dict[str, Any], swept: list[str]) -> str:
    template = layer.get("id_template", DEFAULT_TEMPLATE)
    values = {k: _field_text(k, v) for k, v in pattern.items()}
    text = template.format(phase=phase, layer=layer["id"], tokens=values.get("prompt_tokens", ""),
                           **{k: v for k, v in values.items() if k not in _SPECIAL})
    named = _named(template)
    return text + "".join(suffix_head(k) + values[k] for k in swept if k not in named)


def expand_layer(layer: dict[str, Any], li: int, phase: int) -> list[tuple[dict[str, Any], Origin]]:
    """The layer's expanded patterns in product order, each with its origin (the layer must have passed `_layer_problems`)."""
    sweep, base = layer["sweep"], layer.get("base", {})
    keys = list(sweep)
    out = []
    for picks in itertools.product(*(range(len(sweep[k])) for k in keys)):
        pattern = {**base, **{k: sweep[k][i] for k, i in zip(keys, picks, strict=True)}}
        pid = _pattern_id(layer, phase, pattern, keys)
        out.append(({"id": pid, **pattern}, Origin(li, tuple(zip(keys, picks, strict=True)), frozenset(base), pid)))
    return out


def _schema_place(origin: Origin, path: list[str | int], layer_has_template: bool) -> str:
    """A schema error of an expanded pattern, at the sweep value or base field that gave it."""
    if not path:
        return origin.whole() + f" (pattern {origin.pattern_id})"
    key, rest = str(path[0]), "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path[1:])
    if key == "id":
        return format_path(["layers", origin.layer, "id_template"]) + ("" if layer_has_template else f" (default {DEFAULT_TEMPLATE!r})")
    return origin.field_place(key, rest) or format_path(["layers", origin.layer, "base", key])


def expand(doc: dict[str, Any], file: str, pattern_validator: Any,
           fields: set[str]) -> tuple[dict[str, Any], dict[tuple[int, int], Origin], list[Problem]]:
    """(the plan with each sweep expanded into its layer's patterns, origin per (layer, pattern) index, problems).

    `pattern_validator` validates one pattern object (the schema's $defs/pattern) and `fields`
    are the pattern fields a sweep or base may set; schema errors of an expanded pattern are
    reported at the sweep value or base field that produced them, once each.
    """
    layers, origins, problems = [], {}, []
    for li, layer in enumerate(doc["layers"]):
        if "sweep" not in layer:
            layers.append(layer)
            continue
        found = _layer_problems(layer, li, doc["phase"], fields, file)
        if found:
            problems += found
            continue
        written = list(layer.get("patterns", []))
        templated = "id_template" in layer
        for pattern, origin in expand_layer(layer, li, doc["phase"]):
            problems += schema_problems(pattern_validator, pattern, file,
                                        where=lambda p, o=origin, t=templated: _schema_place(o, p, t))
            origins[(li, len(written))] = origin
            written.append(pattern)
        layers.append({**layer, "patterns": written})
    return {**doc, "layers": layers}, origins, list(dict.fromkeys(problems))

