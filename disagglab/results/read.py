"""Reading results back, and the one verdict on a damaged file.

A result file on disk can be damaged (a full disk, a bad copy, a hand edit). Everything that
reads results (status, summary, report, MLflow, compare, the rerun check) reads them here, so
a damaged file is reported the same way everywhere (file + what is wrong) and skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REQUIRED_RESULT_KEYS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "pattern_id": (str,), "validity": (dict,), "spec": (dict,), "description": (dict,),
    "completed": (int,), "failed": (int,), "median_ttft_ms": (int, float), "median_tpot_ms": (int, float),
}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", dict: "an object"}


class CorruptResult(ValueError):
    """A result file that cannot be used; the message names the file and what is wrong."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def read_result(path: Path, pattern_id: str | None = None) -> dict[str, Any]:
    """The result at `path`, or CorruptResult saying why it cannot be used."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CorruptResult(path, f"cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptResult(path, f"not UTF-8 text ({len(raw)} bytes of binary data)") from None
    if not text.strip():
        raise CorruptResult(path, "empty file")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = " (truncated?)" if exc.pos >= len(text.rstrip()) else ""
        raise CorruptResult(path, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}{cut}") from None
    if not isinstance(doc, dict):
        raise CorruptResult(path, f"expected a JSON object, got {_kind(doc)}")
    for key, types in REQUIRED_RESULT_KEYS.items():
        if key not in doc:
            raise CorruptResult(path, f"missing key {key!r}")
        value = doc[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise CorruptResult(path, f"key {key!r} should be {_TYPE_NAMES[types[-1]]}, got {_kind(value)} {json.dumps(value)[:40]}")
    if not isinstance(doc["validity"].get("valid"), bool):
        raise CorruptResult(path, "key 'validity.valid' should be a boolean")
    if pattern_id is not None and doc["pattern_id"] != pattern_id:
        raise CorruptResult(path, f"holds pattern {doc['pattern_id']!r}, not {pattern_id!r}")
    return doc


def result_problem(path: Path, pattern_id: str | None = None) -> str | None:
    """Why an existing result file cannot be used, or None (also None when there is no file)."""
    if not Path(path).exists():
        return None
    try:
        read_result(path, pattern_id)
    except CorruptResult as exc:
        return exc.reason
    return None


# ---------------------------------------------------------------------------- accepted results
DIGEST_KEYS = ("task_sha256", "node_files_sha256")


def acceptances(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The `disagglab accept` entries of a trial or result (provenance.accepted), oldest first."""
    accepted = (doc.get("provenance") or {}).get("accepted") or []
    return [a for a in accepted if isinstance(a, dict)] if isinstance(accepted, list) else []


def measured_under(doc: dict[str, Any]) -> dict[str, Any]:
    """The task and node-file sha256s a trial counts as measured under: the latest accepted
    "new" digests, else the ones that really ran (provenance.task_sha256 / node_files_sha256)."""
    accepted = acceptances(doc)
    source = accepted[-1].get("new") or {} if accepted else doc.get("provenance") or {}
    return {key: source.get(key) for key in DIGEST_KEYS}


def changed_keys(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """Keys whose value differs, was added or was removed."""
    old, new = old or {}, new or {}
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def acceptance_note(entry: dict[str, Any]) -> str:
    """'accepted 2026-12-03 09:10 (node files changed: scripts/benchmark_common.py)'."""
    old, new = entry.get("old") or {}, entry.get("new") or {}
    bits = []
    for key, what in (("node_files_sha256", "node files"), ("task_sha256", "tasks")):
        changed = changed_keys(old.get(key), new.get(key))
        if changed:
            bits.append(f"{what} changed: {', '.join(changed)}")
    when = str(entry.get("at") or "?")[:16].replace("T", " ")
    return f"accepted {when}" + (f" ({'; '.join(bits)})" if bits else "")


def latest_acceptance_note(doc: dict[str, Any]) -> str | None:
    accepted = acceptances(doc)
    return acceptance_note(accepted[-1]) if accepted else None
