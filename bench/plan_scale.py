#!/usr/bin/env python3
"""How do planning and status scale with the plan? Timed side by side with Snakemake's own floor.

For each size N a throwaway copy of the project gets ``plans/phase90.json`` with N patterns
(unified, tcp and efa over prompt lengths and concurrencies, every id distinct) and no results.
Timed, each as its own process (what a user waits for), best of ``--repeats``:

* ``validate``: ``load_plan`` alone (schema, sweeps, cross-field rules, the effective specs);
* ``render``: every task of every pattern rendered in memory and hashed (what the DAG's params
  need), after one plan load;
* ``dry-run``: ``snakemake -n results/phase90/all.done``;
* ``status``: ``python -m disagglab status phase90``;
* ``floor``: ``snakemake -n`` of N trivial jobs (one rule with a wildcard, one aggregate target)
  in a minimal Snakefile: what Snakemake itself needs for a DAG that wide.

The table shows seconds and the dry run's ratio to the floor; the last line is
``RESULT plan_scale n=<largest> dry_run_s=<x> floor_s=<y> ratio=<x/y> status_s=<z>``.

    .venv/bin/python bench/plan_scale.py --quick     # 200 and 1000 patterns, ~2 min on 2 cores
    .venv/bin/python bench/plan_scale.py             # 1k, 5k, 10k, 20k (long: tens of minutes)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT_ITEMS = ("Snakefile", "rules", "config", "plans", "templates", "scripts", "remote", "profiles", "disagglab")
PYTHON = sys.executable
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
BACKENDS = ("unified", "tcp", "efa")


def plan_doc(n: int) -> dict:
    """N patterns: backends x prompt lengths x concurrencies, as many as needed, ids all distinct."""
    patterns = []
    i = 0
    while len(patterns) < n:
        backend, tokens, conc = BACKENDS[i % 3], 1000 + 100 * ((i // 3) % 40), 1 + i // 120
        patterns.append({"id": f"p90-{backend}-{tokens}-c{conc}", "backend": backend, "prompt_tokens": tokens, "concurrency": conc})
        i += 1
    return {
        "phase": 90, "name": "scale", "description": f"{n} patterns for bench/plan_scale.py",
        "infrastructure": {"instance_type": "g5.12xlarge", "node_count": 2, "model": "Qwen/Qwen2.5-7B-Instruct",
                           "vllm_version": "v0.15.1", "venv_path": "/opt/venv", "gpu_count_per_node": 4, "tp_size": 1},
        "common_settings": {"max_tokens": 10, "warmup_iterations": 2, "measurement_iterations": 10, "gpu_memory_utilization": 0.9,
                            "max_num_batched_tokens": 8192, "measurement_type": "online"},
        "layers": [{"id": "L0", "name": "all", "priority": "P0", "description": "every pattern", "patterns": patterns}],
    }


def make_project(dest: Path, n: int) -> Path:
    dest.mkdir(parents=True)
    for item in PROJECT_ITEMS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "phase17.json", "traces"))
        else:
            shutil.copy2(src, dest / item)
    (dest / "plans" / "phase90.json").write_text(json.dumps(plan_doc(n)))
    return dest


FLOOR_SNAKEFILE = """
N = {n}
rule all:
    input: expand("out/{{i}}.txt", i=range(N))
rule one:
    output: "out/{{i}}.txt"
    shell: "touch {{output}}"
"""

VALIDATE = "from disagglab.plan.model import load_plan; load_plan('plans/phase90.json')"
RENDER = ("from disagglab.plan.config import current_config; from disagglab.paths import PLANS_DIR;"
          "from disagglab.tasks.dag import Phases; p = Phases(PLANS_DIR, current_config());"
          "[p.task_digests('phase90', pid) for pid in p.plan('phase90').patterns]")


def timed(argv: Sequence[str], cwd: Path, repeats: int) -> float:
    """Best wall time of `repeats` runs; a failed run stops the benchmark with its output."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
        took = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"plan_scale: {' '.join(argv)} failed in {cwd}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        best = min(best, took)
    return best


def measure(n: int, work: Path, repeats: int) -> dict[str, float]:
    project = make_project(work / f"proj-{n}", n)
    floor = work / f"floor-{n}"
    floor.mkdir()
    (floor / "Snakefile").write_text(FLOOR_SNAKEFILE.format(n=n))
    return {
        "validate": timed([PYTHON, "-c", VALIDATE], project, repeats),
        "render": timed([PYTHON, "-c", RENDER], project, repeats),
        "dry-run": timed([SNAKEMAKE, "-n", "results/phase90/all.done", "--quiet", "rules"], project, repeats),
        "status": timed([PYTHON, "-m", "disagglab", "status", "phase90"], project, repeats),
        "floor": timed([SNAKEMAKE, "-n", "--cores", "1", "--quiet", "rules"], floor, repeats),
    }


def table(rows: dict[int, dict[str, float]]) -> str:
    head = f"{'patterns':>9} {'validate s':>11} {'render s':>9} {'dry-run s':>10} {'status s':>9} {'floor s':>8} {'dry-run/floor':>14}"
    lines = [head, "-" * len(head)]
    for n, t in rows.items():
        lines.append(f"{n:>9} {t['validate']:>11.2f} {t['render']:>9.2f} {t['dry-run']:>10.2f} {t['status']:>9.2f} {t['floor']:>8.2f} "
                     f"{t['dry-run'] / t['floor']:>14.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 and 1000 patterns, one run each")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None, help="comma-separated pattern counts")
    parser.add_argument("--repeats", type=int, default=None, help="runs per measurement, best kept (default 1 quick, 2 full)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = args.sizes or ([200, 1000] if args.quick else [1000, 5000, 10000, 20000])
    repeats = args.repeats or (1 if args.quick else 2)
    rows: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="plan-scale-") as tmp:
        for n in sizes:
            rows[n] = measure(n, Path(tmp), repeats)
            print(f"{n} patterns: " + ", ".join(f"{k} {v:.2f} s" for k, v in rows[n].items()), flush=True)
    print(table(rows))
    n = max(rows)
    t = rows[n]
    print(f"RESULT plan_scale n={n} dry_run_s={t['dry-run']:.2f} floor_s={t['floor']:.2f} ratio={t['dry-run'] / t['floor']:.2f} "
          f"status_s={t['status']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
