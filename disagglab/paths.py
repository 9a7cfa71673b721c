"""Where the project's files are. The package sits at the project root, beside the Snakefile."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"
SCHEMA_DIR = CONFIG_DIR / "schemas"
TEMPLATE_DIR = ROOT / "templates"
PLANS_DIR = ROOT / "plans"
# Node-side trees: copied to the nodes, never imported by the control side.
NODE_TREES = ("scripts", "remote")


def results_dir(phase: str, base: Path | None = None) -> Path:
    return (base or Path("results")) / phase


# ---------------------------------------------------------------------------- safe names
# Plan validation already restricts pattern and layer ids; these checks repeat the rule where
# ids become paths and store keys, so a bypassed or buggy validator still cannot make a path
# leave results/ or a key leave its phase prefix.
PHASE_RE = re.compile(r"phase[0-9]+")
SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class UnsafeName(ValueError):
    """An id or key part that could leave its folder or prefix."""


def safe_segment(part: str) -> str:
    """One path segment: ASCII letters, digits, '.', '_', '-'; not '.', '..', empty, or with a separator."""
    if not isinstance(part, str) or not SEGMENT_RE.fullmatch(part) or part in (".", ".."):
        raise UnsafeName(f"unsafe path segment {part!r}: only ASCII letters, digits, '.', '_' and '-' (not '.' or '..')")
    return part


def safe_join(base: Path, *parts: str) -> Path:
    """base/part/... where every part is a safe segment (a file name may carry a suffix)."""
    path = Path(base)
    for part in parts:
        path = path / safe_segment(part)
    return path


def phase_key(phase: str, *parts: str) -> str:
    """A store key `<phase>/<part>/...`; each part may itself hold '/'-separated safe segments."""
    if not isinstance(phase, str) or not PHASE_RE.fullmatch(phase):
        raise UnsafeName(f"unsafe phase {phase!r}: expected phase<N>")
    segments = [safe_segment(s) for part in parts for s in part.split("/")]
    return "/".join([phase, *segments])
