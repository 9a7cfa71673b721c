"""Deploy: copy node-side files and a pattern's tasks into the store, record key + sha256.

Markers are split per unit (node files once per phase, tasks once per pattern) so that
adding a pattern never changes what an already-finished pattern depends on.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .hashing import atomic_write_json
from .paths import ROOT, phase_key, safe_segment
from .storage import Storage


def _put_all(storage: Storage, items: list[tuple[Path, str, str]]) -> list[dict[str, Any]]:
    files, uploaded, unchanged, size = [], 0, 0, 0
    for src, key, rel in items:
        res = storage.put_file(src, key)
        files.append({"path": rel, "key": res.key, "sha256": res.sha256, "size": res.size})
        if res.uploaded:
            uploaded += 1
            size += res.size
        else:
            unchanged += 1
    print(f"deploy to {storage.url}: {uploaded} uploaded ({size} bytes), {unchanged} unchanged", file=sys.stderr)
    return files


def deploy_pattern(phase: str, pattern: str, node_files: list[str], task_files: list[Path], storage: Storage, marker: Path) -> None:
    """Put the pattern's node-side files and task definitions in the store; write the marker."""
    items = [(ROOT / rel, phase_key(phase, rel), rel) for rel in node_files]
    for path in task_files:
        rel = f"tasks/{safe_segment(pattern)}/{safe_segment(path.name)}"
        items.append((path, phase_key(phase, rel), rel))
    atomic_write_json(marker, {"kind": "deploy", "phase": phase, "pattern": pattern, "store": storage.url, "files": _put_all(storage, items)})
