"""Strict reading of YAML config files: a key set twice in one mapping is an error.

PyYAML's safe_load keeps the last of two equal keys without a word, so a config that sets
`engine:` twice runs with whichever came last. The document is composed first (nodes carry
their lines), every mapping is checked, and only then constructed, exactly as safe_load would.
Merge keys (`<<`) are left to YAML: overriding a merged key is what they are for.
"""

from __future__ import annotations

from typing import Any

import yaml

from disagglab.errors import InputError, Problem
from disagglab.plan.jsonpath import format_path
from disagglab.plan.strictjson import lines

MERGE_TAG = "tag:yaml.org,2002:merge"


def load(text: str, file: str, error: type[InputError] = InputError) -> Any:
    """The YAML document in `text` (None when empty); raise `error` naming duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems = [Problem(file, path, reason) for path, reason in _duplicates(node, [])]
        if problems:
            raise error(problems)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise error([Problem(file, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()


def _duplicates(node: yaml.Node, path: list[str | int], visited: set[int] | None = None) -> list[tuple[str, str]]:
    visited = set() if visited is None else visited
    if id(node) in visited:  # an alias: checked where its anchor is (and anchors may be recursive)
        return []
    visited.add(id(node))
    found: list[tuple[str, str]] = []
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicates(item, [*path, i], visited)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            line = key_node.start_mark.line + 1
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                found.append((format_path([*path, key_node.value]), f"duplicate key {key_node.value!r} ({lines(seen[ident], line)}): "
                              "YAML keeps only the last, so one value would be silently ignored"))
            seen.setdefault(ident, line)
            found += _duplicates(value_node, [*path, key_node.value], visited)
    return found
