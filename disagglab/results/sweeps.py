"""Parse-time sweeps: what rules/common.smk fixes in results/ before Snakemake builds the DAG.

Snakemake only sees whether a file exists. These sweeps make "exists" mean "usable": a layer
marker whose results are gone, a result the user deleted (measure again) and a damaged file
(build again) are each turned into a missing file, with the evidence kept, never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from disagglab.paths import AGGREGATED
from disagglab.results.read import CorruptResult, read_result
from disagglab.results.status import running_outputs


def sweep_stale_layer_markers(results_root: Path = Path("results")) -> list[str]:
    """Remove layer markers whose results are gone.

    A layer marker claims "every pattern of this layer has a result". When a user deletes
    a result, Snakemake would keep trusting the up-to-date marker and never rebuild the
    missing result, so the false claim is withdrawn before the DAG is built.
    """
    removed = []
    for marker in sorted(results_root.glob("phase*/*.done")):
        try:
            doc = json.loads(marker.read_text())
            paths = [Path(p["result"]) for p in doc["patterns"].values()]
        except (OSError, ValueError, KeyError, TypeError):
            paths = None
        if paths is None or any(not p.exists() for p in paths):
            missing = "unreadable marker" if paths is None else ", ".join(str(p) for p in paths if not p.exists())
            marker.unlink(missing_ok=True)
            print(f"disagglab: {marker} was stale ({missing}); it will be rebuilt", file=sys.stderr)
            removed.append(str(marker))
    return removed


def sweep_deleted_results(results_root: Path = Path("results"), in_flight: set[str] | None = None) -> list[str]:
    """Deleting a pattern's result means "measure it again": set its folded trials aside.

    The result is built from trial files; if they stayed, deleting the result would only
    rebuild it from the same trials. Trials whose result the user deleted are moved (never
    deleted) to trials/<pattern>/superseded-<time>/, so nothing paid for is lost. A result
    missing because Snakemake is (or was, when killed) rewriting it is not a deletion:
    outputs Snakemake marks incomplete are left alone.
    """
    if in_flight is None:
        in_flight, _ = running_outputs(Path("."))
    moved = []
    for marker in sorted(results_root.glob(f"phase*/trials/*/{AGGREGATED}")):
        try:
            doc = json.loads(marker.read_text())
            result = Path(doc["result"])
            files = [Path(f) for f in doc["trials"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if result.exists() or str(result) in in_flight or (result.parents[1] / "corrupt" / result.name).exists():
            continue  # (a result moved aside as corrupt is rebuilt from these trials: quarantine_corrupt_results)
        dest = marker.parent / time.strftime("superseded-%Y%m%dT%H%M%S")
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            if f.exists():
                shutil.move(str(f), str(dest / f.name))
        shutil.move(str(marker), str(dest / AGGREGATED))
        print(f"disagglab: {result} was deleted; its {len(files)} trial(s) moved to {dest} and will be measured again", file=sys.stderr)
        moved.append(str(result))
    return moved


def quarantine_corrupt_results(results_root: Path = Path("results")) -> list[str]:
    """Move result and trial files that cannot be read to results/<phase>/corrupt/, so they count as not done.

    Snakemake only sees that a file exists; a damaged one (truncated, binary, wrong types,
    missing keys) would count as finished forever. Moving it aside (kept as evidence, never
    deleted) makes it missing, so the next run rebuilds exactly that: a damaged result is
    folded again from its trials (nothing is measured again when they are intact), a damaged
    trial is measured again when its result has to be folded again (an intact result already
    holds its numbers). Status and the report say "corrupt", with the file and the
    reason, until the result is rebuilt. Runs before the sweeps: sweep_deleted_results must
    not take a result moved here for one the user deleted.
    """
    moved = []
    found = [(p, p.stem, p.parents[1] / "corrupt" / p.name) for p in sorted(results_root.glob("phase*/runs/*.json"))]
    found += [(p, p.parent.name, p.parents[2] / "corrupt" / "trials" / p.parent.name / p.name)
              for p in sorted(results_root.glob("phase*/trials/*/*.json")) if p.stem.isdigit()]
    for path, pattern_id, dest in found:
        try:
            read_result(path, pattern_id)
        except CorruptResult as exc:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            print(f"disagglab: {exc}; moved to {dest}; it will be built again", file=sys.stderr)
            moved.append(str(path))
    return moved
