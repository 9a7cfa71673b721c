"""Check every `vllm serve` command line of a plan with vLLM's own parser, before any GPU is booked.

    .venv/bin/python -m disagglab.tasks.flagcheck plans/phase14.json [plans/phase15.json ...]
    make check-vllm-flags

Each pattern's server task definitions are rendered exactly as the AWS nodes will get them
(engine vllm, executor ssm; `--local` checks the local vLLM-CPU rendering instead), run-time
tokens are bound to placeholder addresses and the configured ports, and the words after
`serve` go to tools/vllm_argcheck.py, run by a python whose vLLM is the plan's
`vllm_version` (default `.venv-argcheck-<version>/bin/python`, built by
tools/setup_vllm_argcheck.sh). Every rejection is printed as
`<plan>: <pattern> <role>: [<stage>] <vLLM's message>`; the exit status is 1 when any
command line was rejected, 2 when the checker itself could not run or is the wrong version.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from disagglab.errors import InputError
from disagglab.paths import ROOT
from disagglab.plan.config import current_config
from disagglab.plan.model import Plan, load_plan
from disagglab.tasks.render import render_task

CHECKER = ROOT / "tools" / "vllm_argcheck.py"
_TOKEN = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
PLACEHOLDER_HOSTS = {"bind_host": "10.0.0.1", "node1_host": "10.0.0.1", "node2_host": "10.0.0.2"}


def node_config(cfg: dict[str, Any], local: bool) -> dict[str, Any]:
    """The configuration the servers are rendered with: the nodes' (ssm) or this machine's."""
    out = copy.deepcopy(cfg)
    out["engine"] = "vllm"
    out["executor"] = "local" if local else "ssm"
    return out


def bindings(cfg: dict[str, Any]) -> dict[str, str]:
    return {**PLACEHOLDER_HOSTS, **{k: str(v) for k, v in cfg["aws"]["ports"].items()},
            "python": "/usr/bin/python3", "node_dir": "/node", "out_dir": "/node/out"}


def serve_cases(plan: Plan, phase: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One case per server of every pattern: id `<pattern> <role>`, args = the words after `serve`."""
    values = bindings(cfg)
    cases = []
    for pattern in plan.patterns.values():
        for role in pattern.roles:
            task = json.loads(render_task(pattern, role, phase, cfg))
            for server in task["servers"]:
                argv = [_TOKEN.sub(lambda m: values[m.group(1)], word) for word in server["argv"]]
                cases.append({"id": f"{pattern.id} {role}", "args": argv[argv.index("serve") + 1:]})
    return cases


def run_checker(python: str, cases: list[dict[str, Any]], timeout_s: float = 600) -> list[dict[str, Any]]:
    lines = "".join(json.dumps(c) + "\n" for c in cases)
    out = subprocess.run([python, str(CHECKER)], input=lines, capture_output=True, text=True, timeout=timeout_s, check=False)
    verdicts = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode not in (0, 1) or len(verdicts) != len(cases):
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-15:])
        raise RuntimeError(f"{CHECKER.name} under {python} exited with {out.returncode} after {len(verdicts)} of {len(cases)} verdicts:\n{tail}")
    return verdicts


def checker_version(python: str) -> str:
    out = subprocess.run([python, str(CHECKER), "--version"], capture_output=True, text=True, timeout=300, check=False)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["vllm_version"]
    except (IndexError, ValueError, KeyError):
        raise RuntimeError(f"{python} cannot build vLLM's parser: {(out.stdout + out.stderr).strip()[-1500:]}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disagglab.tasks.flagcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("plans", nargs="+", type=Path)
    parser.add_argument("--python", help="python of a venv with the plan's vLLM (default .venv-argcheck-<vllm_version>/bin/python)")
    parser.add_argument("--local", action="store_true", help="check the local vLLM-CPU rendering (config local_vllm) instead of the nodes'")
    parser.add_argument("--any-version", action="store_true", help="accept a checker whose vLLM is not the plan's vllm_version")
    args = parser.parse_args(argv)
    cfg = node_config(current_config(), args.local)
    rejected = 0
    for path in args.plans:
        try:
            plan = load_plan(path)
        except InputError as exc:
            print(exc, file=sys.stderr)
            return 2
        version = str(plan.infrastructure["vllm_version"]).lstrip("v")
        python = args.python or str(ROOT / f".venv-argcheck-{version}" / "bin" / "python")
        if not Path(python).exists():
            print(f"{path}: {python} does not exist: build it with `make check-vllm-flags` (tools/setup_vllm_argcheck.sh {version} ...)", file=sys.stderr)
            return 2
        try:
            found = checker_version(python)
            if found.split("+")[0] != version and not args.any_version:
                print(f"{path}: the checker has vLLM {found} but the plan says vllm_version {version} (use --any-version to accept)", file=sys.stderr)
                return 2
            cases = serve_cases(plan, path.stem, cfg)
            verdicts = run_checker(python, cases)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
        bad = [v for v in verdicts if not v["ok"]]
        rejected += len(bad)
        for v in bad:
            print(f"{path}: {v['id']}: [{v['stage']}] {v['error']}")
        print(f"{path}: {len(cases) - len(bad)} of {len(cases)} server command lines accepted by vLLM {found}"
              f" ({'local vLLM-CPU' if args.local else 'node'} rendering)")
    return 1 if rejected else 0


if __name__ == "__main__":
    sys.exit(main())
