"""Where the project's files are. The package sits at the project root, beside the Snakefile."""

from __future__ import annotations

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
