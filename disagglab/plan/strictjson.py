"""Strict reading of the JSON users write (plans, JSON config files).

Python's `json` quietly keeps the last of two equal keys and accepts `NaN`, `Infinity` and
`-Infinity`, none of which is JSON (RFC 8259). A plan whose pattern says `"concurrency"` twice
would run with whichever came last, so both are refused, each with the JSON path; a duplicate
names both lines. A UTF-8 byte-order mark is skipped (editors on Windows write one).

Detection is json's own (`object_pairs_hook`, `parse_constant`), so it sees exactly what the
parser saw. Only when something is found does a small scanner walk the (already valid) text
again to say where: json's hooks are called without positions.
"""

from __future__ import annotations

import json
import re
from typing import Any

from disagglab.errors import InputError, Problem
from disagglab.plan.jsonpath import format_path

BOM = "\ufeff"
_WS = re.compile(r"[ \t\n\r]*")
_CONSTANT = re.compile(r"NaN|-?Infinity")
_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null")


def lines(first: int, second: int) -> str:
    """Where the two spellings of a key are: 'lines 3 and 7', or 'twice on line 3'."""
    return f"twice on line {first}" if first == second else f"lines {first} and {second}"


def loads(text: str, file: str, error: type[InputError] = InputError) -> Any:
    """The JSON document in `text`; raise `error` naming `file`, the JSON path and the reason."""
    text = text[1:] if text.startswith(BOM) else text
    if not text.strip():
        raise error([Problem(file, "", "file is empty (expected a JSON object)")])
    found = {"duplicate": False, "constant": False}

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        doc = dict(items)
        found["duplicate"] |= len(doc) != len(items)
        return doc

    def constant(name: str) -> float:
        found["constant"] = True
        return float(name)

    try:
        doc = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise error([Problem(file, f"line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}")]) from None
    except RecursionError:
        raise error([Problem(file, "", "invalid JSON: nested too deeply")]) from None
    if found["duplicate"] or found["constant"]:
        try:
            located = _Locator(text).problems()
        except RecursionError:
            located = []
        raise error([Problem(file, path, reason) for path, reason in located]
                    or [Problem(file, "", "duplicate keys or NaN/Infinity (not JSON)")])
    return doc


class _Locator:
    """Walks valid JSON text and says where each duplicate key and each NaN/Infinity is."""

    def __init__(self, text: str):
        self.text = text
        self.found: list[tuple[str, str]] = []

    def problems(self) -> list[tuple[str, str]]:
        self._value(0, [])
        return self.found

    def _line(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1

    def _ws(self, pos: int) -> int:
        return _WS.match(self.text, pos).end()  # type: ignore[union-attr]

    def _value(self, pos: int, path: list[str | int]) -> int:
        pos = self._ws(pos)
        ch = self.text[pos]
        if ch == "{":
            return self._object(pos + 1, path)
        if ch == "[":
            return self._array(pos + 1, path)
        if ch == '"':
            return json.decoder.scanstring(self.text, pos + 1)[1]
        if m := _CONSTANT.match(self.text, pos):
            self.found.append((format_path(path), f"{m.group()} is not a JSON number (line {self._line(pos)})"))
            return m.end()
        return _SCALAR.match(self.text, pos).end()  # type: ignore[union-attr]

    def _object(self, pos: int, path: list[str | int]) -> int:
        seen: dict[str, int] = {}
        pos = self._ws(pos)
        if self.text[pos] == "}":
            return pos + 1
        while True:
            pos = self._ws(pos)
            key, end = json.decoder.scanstring(self.text, pos + 1)
            line = self._line(pos)
            if key in seen:
                self.found.append((format_path([*path, key]), f"duplicate key {key!r} ({lines(seen[key], line)}): "
                                   "JSON keeps only the last, so one value would be silently ignored"))
            seen.setdefault(key, line)
            pos = self._value(self._ws(end) + 1, [*path, key])  # past the ':'
            pos = self._ws(pos)
            if self.text[pos] == "}":
                return pos + 1
            pos += 1  # the ','

    def _array(self, pos: int, path: list[str | int]) -> int:
        pos = self._ws(pos)
        if self.text[pos] == "]":
            return pos + 1
        index = 0
        while True:
            pos = self._ws(self._value(pos, [*path, index]))
            if self.text[pos] == "]":
                return pos + 1
            pos, index = pos + 1, index + 1
