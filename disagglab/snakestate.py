"""Snakemake's own bookkeeping for one job output, seen from inside the job.

When Snakemake is interrupted (Ctrl-C), it returns without running its error handling for
the jobs it was waiting on, so an `.snakemake/incomplete/<base64 of the output path>`
marker survives even though our job stopped its servers, wrote a failure record and never
wrote the output. `disagglab status` would then call the pattern "incomplete" and advise
--rerun-incomplete. The job that handled its interrupt cleanly withdraws that marker itself.
Same naming as snakemake/persistence/file.py (`_record_path`, names split at NAME_MAX).
"""

from __future__ import annotations

import os
from base64 import urlsafe_b64encode
from pathlib import Path


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
