"""The client's JSON, parsed once and never re-encoded.

P's and D's request bodies are spliced from the client's own bytes and P's
``kv_transfer_params`` text: re-encoding a long token-id prompt twice per
request would be the proxy's largest cost.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from typing import Any

# Arrays at least this long (token-id prompts) are validated while P works, not before.
DEFER_MIN_CHARS = 512

# The block P needs in order to keep its KV for a remote decoder (vLLM's NixlConnector).
PREFILL_KV_TRANSFER_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
# P gets the client's request with these members replaced (and these dropped: they
# contradict a one-token, non-streamed request).
_P_REPLACED = frozenset({"kv_transfer_params", "stream", "max_tokens", "max_completion_tokens"})
_P_DROPPED = frozenset({"stream_options", "min_tokens", "min_completion_tokens"})
_P_MEMBERS = '"kv_transfer_params":' + json.dumps(PREFILL_KV_TRANSFER_PARAMS, separators=(",", ":")) + ',"stream":false,"max_tokens":1'
_KV_KEY = "kv_transfer_params"

_decoder = json.JSONDecoder()
_scan_value = json.scanner.make_scanner(_decoder)  # the C scanner json.loads uses
_scan_string = json.decoder.scanstring
_skip_ws = re.compile(r"[ \t\n\r]*").match


class NotAnObject(ValueError):
    """Valid JSON, but not an object."""


def parse_members(text: str, deferred: list[tuple[int, int]] | None = None) -> list[tuple[str, Any, int, int]]:
    """The members of a top-level JSON object: (key, value, start, end) with
    ``text[start:end]`` the member's own text (``"key": value``).

    Exactly as strict as ``json.loads`` (every value goes through the same C scanner), but
    the spans let a changed request be spliced from the original text instead of re-encoded.
    With ``deferred``, long flat arrays (token-id prompts: no string, array or object inside)
    are only delimited, not parsed: their value is None and their span is added to
    ``deferred``; check_deferred() must then parse them before the request is trusted.
    """
    i = _skip_ws(text, 0).end()
    if text[i : i + 1] != "{":
        json.loads(text)  # the precise error for invalid JSON
        raise NotAnObject("not a JSON object")
    members: list[tuple[str, Any, int, int]] = []
    i = _skip_ws(text, i + 1).end()
    if text[i : i + 1] == "}":
        i += 1
    else:
        while True:
            if text[i : i + 1] != '"':
                raise ValueError(f"Expecting property name enclosed in double quotes: char {i}")
            start = i
            key, i = _scan_string(text, i + 1)
            i = _skip_ws(text, i).end()
            if text[i : i + 1] != ":":
                raise ValueError(f"Expecting ':' delimiter: char {i}")
            i = _skip_ws(text, i + 1).end()
            end = _flat_array_end(text, i) if deferred is not None else -1
            if end > 0:
                deferred.append((i, end))  # type: ignore[union-attr]
                value, i = None, end
            else:
                try:
                    value, i = _scan_value(text, i)
                except StopIteration as exc:
                    raise ValueError(f"Expecting value: char {exc.value}") from None
            members.append((key, value, start, i))
            i = _skip_ws(text, i).end()
            delimiter = text[i : i + 1]
            i = _skip_ws(text, i + 1).end()
            if delimiter == "}":
                break
            if delimiter != ",":
                raise ValueError(f"Expecting ',' delimiter: char {i}")
    if _skip_ws(text, i).end() != len(text):
        raise ValueError(f"Extra data: char {i}")
    return members


def _flat_array_end(text: str, i: int) -> int:
    """End of a long array at ``i`` holding no string, array or object (found with memchr-speed
    searches, nothing parsed); -1 if ``i`` starts anything else."""
    if text[i : i + 1] != "[":
        return -1
    close = text.find("]", i)
    if close - i < DEFER_MIN_CHARS or text.find('"', i, close) >= 0 or text.find("[", i + 1, close) >= 0 or text.find("{", i, close) >= 0:
        return -1
    return close + 1


class InvalidClientJSON(ValueError):
    """A deferred part of the client's body is not valid JSON (a 400, found late)."""


def check_deferred(text: str, deferred: list[tuple[int, int]]) -> None:
    """Parse what parse_members() only delimited; InvalidClientJSON as json.loads would fail."""
    for start, end in deferred:
        try:
            _, stop = _scan_value(text, start)
        except StopIteration as exc:
            raise InvalidClientJSON(f"Expecting value: char {exc.value}") from None
        except ValueError as exc:
            raise InvalidClientJSON(str(exc)) from None
        if stop != end:
            raise InvalidClientJSON(f"Expecting ',' delimiter: char {stop}")


def prefill_body(text: str, members: list[tuple[str, Any, int, int]]) -> bytes:
    """P gets a one-token, non-streaming copy so it only prefills and then parks the KV."""
    parts = [text[s:e] for key, _, s, e in members if key not in _P_REPLACED and key not in _P_DROPPED]
    parts.append(_P_MEMBERS)
    if any(key == "max_completion_tokens" for key, _, _, _ in members):
        parts.append('"max_completion_tokens":1')
    return ("{" + ",".join(parts) + "}").encode()


def decode_body(raw: bytes, text: str, members: list[tuple[str, Any, int, int]], kv_member: str | None) -> bytes:
    """D gets the original request plus P's KV location (as vLLM's proxy: only if non-empty)."""
    if kv_member is None:
        return raw
    parts = [text[s:e] for key, _, s, e in members if key != _KV_KEY]
    parts.append(kv_member)
    return ("{" + ",".join(parts) + "}").encode()


def kv_member_of(raw: bytes) -> str | None:
    """The ``"kv_transfer_params": {...}`` member of P's answer, as P wrote it; None if P
    sent none (or an empty one). ValueError if P's answer is not JSON."""
    text = raw.decode("utf-8")
    try:
        members = parse_members(text)
    except NotAnObject:
        return None
    found = None
    for key, value, s, e in members:
        if key == _KV_KEY:
            found = text[s:e] if isinstance(value, dict) and value else None
    return found
