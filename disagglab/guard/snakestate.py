"""Snakemake's own bookkeeping in `.snakemake/`, read and changed from our side.

Layout (Snakemake's file persistence backend, snakemake/persistence/file.py):
`.snakemake/incomplete/<urlsafe base64 of the output path>` marks an output whose job
started and never finished (names longer than NAME_MAX are split into `@`-prefixed
folders, `_record_path`); `.snakemake/locks/<n>.input.lock` and `<n>.output.lock` list one
locked path per line.

- An interrupted job that handled its interrupt cleanly withdraws its own marker: when
  Snakemake is interrupted (Ctrl-C) it returns without its error handling for the jobs it
  was waiting on, so the marker would survive although the job stopped its servers, wrote
  a failure record and never wrote the output (`status` would then say "incomplete").
- After a killed run, `recover` reads and removes lock files and markers per phase:
  `snakemake --unlock` would drop every lock in the folder, a live run's on another phase
  included, and would parse the whole workflow to do it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
from base64 import urlsafe_b64encode
from pathlib import Path

PHASE_PATH = re.compile(r"(?:^|/)results/(phase[0-9]+)/")


def phases_in(paths: list[str]) -> set[str]:
    return {m.group(1) for p in paths if (m := PHASE_PATH.search(p))}


def incomplete_marker(workdir: Path, output: str) -> Path:
    folder = workdir / ".snakemake" / "incomplete"
    max_len = os.pathconf(folder, "PC_NAME_MAX") if folder.is_dir() else 255
    b64 = urlsafe_b64encode(output.encode()).decode()
    parts = [b64[i: i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    return folder.joinpath(*["@" + p for p in parts[:-1]], parts[-1])


def withdraw_incomplete_marker(output: Path, workdir: Path | None = None) -> bool:
    """Remove Snakemake's incomplete marker for `output` (relative to the workdir), if the
    output was not written. Returns whether a marker was removed."""
    workdir = workdir or Path.cwd()
    if (workdir / output).exists():
        return False
    marker = incomplete_marker(workdir, str(output))
    try:
        marker.unlink()
    except FileNotFoundError:
        return False
    return True


def lock_files(workdir: Path) -> dict[Path, list[str]]:
    """Each Snakemake lock file -> the paths it locks."""
    out: dict[Path, list[str]] = {}
    locks = Path(workdir) / ".snakemake" / "locks"
    if not locks.is_dir():
        return out
    for path in sorted(locks.glob("*.lock")):
        try:
            out[path] = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError:
            continue
    return out


def phase_lock_files(workdir: Path, phase: str) -> dict[Path, list[str]]:
    """Lock files that lock any file of the phase."""
    return {p: paths for p, paths in lock_files(workdir).items() if phase in phases_in(paths)}


def incomplete_markers(workdir: Path) -> dict[Path, str]:
    """Each incomplete marker file -> the output path it marks."""
    root = Path(workdir) / ".snakemake" / "incomplete"
    out: dict[Path, str] = {}
    if not root.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(root):
        rel_parts = Path(dirpath).relative_to(root).parts
        for name in files:
            if name == "migration_underway":
                continue
            encoded = "".join(part.lstrip("@") for part in (*rel_parts, name))
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                out[Path(dirpath) / name] = base64.urlsafe_b64decode(encoded.encode()).decode()
    return out


def phase_incomplete(workdir: Path, phase: str) -> dict[Path, str]:
    return {m: p for m, p in incomplete_markers(workdir).items() if phase in phases_in([p])}


def remove_marker(marker: Path, root: Path) -> None:
    """Remove a marker and the `@` folders it leaves empty."""
    marker.unlink(missing_ok=True)
    parent = marker.parent
    while parent != root and parent.name.startswith("@"):
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent
