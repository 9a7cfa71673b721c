"""Render a JSON location as `layers[1].patterns[3].concurrency`, the form users see in errors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def format_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def written_patterns(doc: dict[str, Any]) -> Iterator[tuple[list[str | int], dict[str, Any]]]:
    """(JSON path, pattern) of every pattern object of a plan document, in file order."""
    for li, layer in enumerate(doc["layers"]):
        for pi, pat in enumerate(layer["patterns"]):
            yield ["layers", li, "patterns", pi], pat
