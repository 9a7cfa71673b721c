"""Read a request trace on the node: the twin of the control side's reader (disagglab/plan/trace.py).

The control side has already refused a malformed trace when the plan loaded; this copy reads
the deployed file (its sha256 checked by the caller) so that the node needs nothing but
scripts/. tests/test_workload_trace.py checks that both readers agree on every sample.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime

# Tokens per Mooncake hash id (Mooncake's trace and Dynamo's data generator use 512).
# twin: disagglab/plan/trace.py:MOONCAKE_BLOCK_TOKENS
MOONCAKE_BLOCK_TOKENS = 512
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: when it arrives (s after the first) and its lengths."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()
    line: int = field(default=0, compare=False)
    """Where it is in the file (1-based), for messages."""


class TraceLineError(ValueError):
    """A line of a trace that cannot be replayed: its number (1-based), the field and why."""

    def __init__(self, line: int, field: str, reason: str):
        super().__init__(f"line {line}: {field}: {reason}")
        self.line, self.field, self.reason = line, field, reason


def _count(value: object, line: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TraceLineError(line, field, f"must be a whole number >= 1, got {value!r}")
    return value


def _mooncake_line(text: str, line: int) -> TraceRequest:
    try:
        row = json.loads(text)
    except ValueError as exc:
        raise TraceLineError(line, "(line)", f"not JSON: {exc}") from None
    if not isinstance(row, dict):
        raise TraceLineError(line, "(line)", "not a JSON object")
    for key in ("timestamp", "input_length", "output_length"):
        if key not in row:
            raise TraceLineError(line, key, "missing")
    stamp = row["timestamp"]
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not 0 <= stamp < 1e15:
        raise TraceLineError(line, "timestamp", f"must be milliseconds >= 0, got {stamp!r}")
    hash_ids = row.get("hash_ids", [])
    if not isinstance(hash_ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in hash_ids):
        raise TraceLineError(line, "hash_ids", "must be a list of whole numbers >= 0")
    return TraceRequest(stamp / 1000.0, _count(row["input_length"], line, "input_length"),
                        _count(row["output_length"], line, "output_length"), tuple(hash_ids), line)


def _azure_time(value: str, line: int) -> datetime:
    whole, _, fraction = value.strip().partition(".")
    try:
        stamp = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
        micros = int((fraction + "000000")[:6]) if fraction else 0
    except ValueError:
        raise TraceLineError(line, "TIMESTAMP", f"not 'YYYY-MM-DD HH:MM:SS[.fraction]': {value!r}") from None
    return stamp.replace(microsecond=micros)


def _azure_int(value: str, line: int, field: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise TraceLineError(line, field, f"not a whole number: {value!r}") from None
    return _count(number, line, field)


def _read_azure(text: str) -> list[TraceRequest]:
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or any(col not in header for col in AZURE_COLUMNS):
        raise TraceLineError(1, "(header)", f"needs the columns {', '.join(AZURE_COLUMNS)}, got {header}")
    at = {col: header.index(col) for col in AZURE_COLUMNS}
    stamps: list[datetime] = []
    lengths: list[tuple[int, int, int]] = []
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise TraceLineError(line, "(line)", f"{len(row)} fields, the header has {len(header)}")
        stamps.append(_azure_time(row[at["TIMESTAMP"]], line))
        lengths.append((_azure_int(row[at["ContextTokens"]], line, "ContextTokens"),
                        _azure_int(row[at["GeneratedTokens"]], line, "GeneratedTokens"), line))
    first = min(stamps, default=None)
    return [TraceRequest((s - first).total_seconds(), i, o, (), n) for s, (i, o, n) in zip(stamps, lengths, strict=True)] if first else []


# twin: disagglab/plan/trace.py:read_trace
def read_trace(text: str, fmt: str) -> list[TraceRequest]:
    """Every request of a trace in file order; TraceLineError at the first line that is wrong."""
    if fmt == "azure":
        requests = _read_azure(text)
    elif fmt == "mooncake":
        requests = [_mooncake_line(body, n) for n, body in enumerate(text.splitlines(), start=1) if body.strip()]
    else:
        raise ValueError(f"unknown trace format {fmt!r}")
    if not requests:
        raise TraceLineError(1, "(file)", "no requests")
    origin = min(r.arrival_s for r in requests)
    return [TraceRequest(r.arrival_s - origin, r.input_tokens, r.output_tokens, r.hash_ids, r.line) for r in requests]
