"""Deploy: copy node-side files and a pattern's tasks into the store, record key + sha256.

One marker per pattern (results/<phase>/deploy/<pattern>.json) listing exactly the node-side
files that pattern runs and its tasks, so an edit to the proxy re-deploys only the patterns
that run the proxy, and adding a pattern never changes what a finished pattern depends on.

The marker is written last and atomically: a deploy cut short (the store went away, 5xx
after botocore's retries) leaves no marker, so the pattern is deployed again next run. What
did reach the store is complete (one PUT per object, its sha256 in the metadata) and is
skipped next time only if its bytes match.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from disagglab.deploy.storage import Storage, StorageError
from disagglab.hashing import atomic_write_json
from disagglab.paths import ROOT, phase_key, safe_segment
from disagglab.results.failure import failure_record


class DeployFailed(Exception):
    """The store failed mid-deploy; carries the cause and what was done before it."""

    def __init__(self, cause: str, progress: list[str]):
        super().__init__(cause)
        self.cause = cause
        self.progress = progress


def _put_all(storage: Storage, items: list[tuple[Path, str, str]]) -> list[dict[str, Any]]:
    files, uploaded, unchanged, size = [], 0, 0, 0
    progress: list[str] = []
    for src, key, rel in items:
        try:
            res = storage.put_file(src, key)
        except StorageError as exc:
            progress.append(f"FAILED {key}: {exc}")
            print(progress[-1], file=sys.stderr)
            raise DeployFailed(str(exc), progress) from None
        files.append({"path": rel, "key": res.key, "sha256": res.sha256, "size": res.size})
        progress.append(f"{'uploaded' if res.uploaded else 'unchanged'} {key} ({res.size} bytes)")
        print(progress[-1], file=sys.stderr)
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


def deploy_failure_record(phase: str, layer: str, pattern: str, engine: str, error: DeployFailed, started: float) -> dict[str, Any]:
    """The same record a failed trial leaves (results/<phase>/failures/<pattern>.json), for step deploy."""
    return failure_record(phase, layer, pattern, engine, "deploy", "control", error.cause, log_tail=error.progress[-20:],
                          started=started, finished=time.time())
