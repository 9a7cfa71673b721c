"""Check every `vllm serve` command line of a plan with vLLM's own parser, before any GPU is booked.

    .venv/bin/python -m disagglab.tasks.flagcheck plans/phase14.json [plans/phase15.json ...]
    make check-vllm-flags

Each pattern's server task definitions are rendered exactly as the AWS nodes will get them
(engine vllm, executor ssm; `--local` checks the local vLLM-CPU rendering instead), run-time
tokens are bound to placeholder addresses and the configured ports, and the words after
`serve` go to tools/vllm_argcheck.py, run by a python whose vLLM is the plan's
`vllm_version` (default `.venv-argcheck-<version>/bin/python`, built by
tools/setup_vllm_argcheck.sh). The checker runs vLLM's parser and then vLLM's own config
classes as far as they can be built without a GPU or the model's config.json (KVTransferConfig's
connector lookup, SchedulerConfig, CacheConfig, ParallelConfig; what cannot run is printed at
the end, `not checked ...`). Every rejection is printed as
`<plan>: <pattern> <role>: [<stage>] <flag value ...>: <vLLM's message>`; the exit status is 1
when any command line was rejected, 2 when the checker itself could not run or is the wrong version.

Each server is asked twice: its command line as rendered, and the same line holding the
pattern's requests in flight at once (`--max-num-seqs N`, id `<pattern> <role> holding N`).
Our templates never give `--max-num-seqs`, and then vLLM 0.15.1 quietly lowers its default of
256 to max_num_batched_tokens (EngineArgs._set_default_max_num_seqs_and_batched_tokens_args),
so `--max-num-batched-tokens 16` alone starts and runs 16 sequences at a time. The second
question gets vLLM's own answer to what the pattern needs: SchedulerConfig refuses
max_num_batched_tokens below max_num_seqs. The plan's own rules (plan/checks.py, which say
the same without vLLM) are printed first and do not stop vLLM from being asked.
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
from disagglab.plan.bounds import in_flight
from disagglab.plan.checks import plan_findings, print_warnings
from disagglab.plan.config import current_config
from disagglab.plan.model import Plan, load_plan
from disagglab.plan.topology import fixed_ports
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
    return {**PLACEHOLDER_HOSTS, **{k: str(v) for k, v in fixed_ports(cfg["aws"]["ports"]).items()},
            "python": "/usr/bin/python3", "node_dir": "/node", "out_dir": "/node/out"}


def serve_cases(plan: Plan, phase: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Two cases per server of every pattern (see the module docstring): as rendered, id
    `<pattern> <role>`, and holding the requests in flight, id `<pattern> <role> holding N`;
    args = the words after `serve`."""
    values = bindings(cfg)
    cases = []
    for pattern in plan.patterns.values():
        held = in_flight(pattern.spec)
        for role in pattern.roles:
            task = json.loads(render_task(pattern, role, phase, cfg))
            for server in task["servers"]:
                argv = [_TOKEN.sub(lambda m: values[m.group(1)], word) for word in server["argv"]]
                args = argv[argv.index("serve") + 1:]
                cases.append({"id": f"{pattern.id} {role}", "args": args})
                if "--max-num-seqs" not in args:
                    cases.append({"id": f"{pattern.id} {role} holding {held}", "args": [*args, "--max-num-seqs", str(held)]})
    return cases


def run_checker(python: str, cases: list[dict[str, Any]], timeout_s: float = 600) -> list[dict[str, Any]]:
    lines = "".join(json.dumps(c) + "\n" for c in cases)
    out = subprocess.run([python, str(CHECKER)], input=lines, capture_output=True, text=True, timeout=timeout_s, check=False)
    verdicts = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode not in (0, 1) or len(verdicts) != len(cases):
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-15:])
        raise RuntimeError(f"{CHECKER.name} under {python} exited with {out.returncode} after {len(verdicts)} of {len(cases)} verdicts:\n{tail}")
    return verdicts


def checker_version(python: str) -> dict[str, Any]:
    """The checker's `--version` answer: vllm_version, parser_module and not_checked (what cannot run here)."""
    out = subprocess.run([python, str(CHECKER), "--version"], capture_output=True, text=True, timeout=300, check=False)
    try:
        found = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        found = None
    if not isinstance(found, dict) or "vllm_version" not in found:
        raise RuntimeError(f"{python} cannot build vLLM's parser: {(out.stdout + out.stderr).strip()[-1500:]}")
    return found


def rejection(path: Path, verdict: dict[str, Any]) -> str:
    """`<plan>: <pattern> <role>: [<stage>] <flag value ...>: <vLLM's message>` (no flags for the parser's own)."""
    flags = " ".join(verdict.get("flags") or [])
    return f"{path}: {verdict['id']}: [{verdict['stage']}] {flags + ': ' if flags else ''}{verdict['error']}"


def report(path: Path, cases: list[dict[str, Any]], verdicts: list[dict[str, Any]], version: str, local: bool) -> int:
    """Print the rejections and the plan's tally; the number rejected."""
    bad = [v for v in verdicts if not v["ok"]]
    for v in bad:
        print(rejection(path, v))
    skipped: dict[str, int] = {}
    for v in verdicts:
        for note in v.get("skipped") or []:
            skipped[note] = skipped.get(note, 0) + 1
    for note, count in skipped.items():
        print(f"{path}: {count} of {len(cases)}: {note}")
    print(f"{path}: {len(cases) - len(bad)} of {len(cases)} server command lines accepted by vLLM {version}"
          f" ({'local vLLM-CPU' if local else 'node'} rendering, each as rendered and holding its requests in flight)")
    return len(bad)


def check_plan(path: Path, args: argparse.Namespace, cfg: dict[str, Any], not_checked: dict[str, None]) -> int:
    """Rejections in one plan; raises InputError, RuntimeError (exit 2) when it cannot be checked."""
    plan = load_plan(path)
    # The plan's own rules first; their errors count as rejections but vLLM is still asked,
    # so a refusal both sides make shows vLLM's own message beside ours.
    found = plan_findings(plan, cfg)
    print_warnings(found.warnings)
    for problem in found.errors:
        print(f"{problem} [plan rule]")
    version = str(plan.infrastructure["vllm_version"]).lstrip("v")
    python = args.python or str(ROOT / f".venv-argcheck-{version}" / "bin" / "python")
    if not Path(python).exists():
        raise RuntimeError(f"{python} does not exist: build it with `make check-vllm-flags` (tools/setup_vllm_argcheck.sh {version} ...)")
    checker = checker_version(python)
    if checker["vllm_version"].split("+")[0] != version and not args.any_version:
        raise RuntimeError(f"the checker has vLLM {checker['vllm_version']} but the plan says vllm_version {version} (use --any-version to accept)")
    not_checked.update(dict.fromkeys(checker.get("not_checked") or []))
    cases = serve_cases(plan, path.stem, cfg)
    return len(found.errors) + report(path, cases, run_checker(python, cases), checker["vllm_version"], args.local)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disagglab.tasks.flagcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("plans", nargs="+", type=Path)
    parser.add_argument("--python", help="python of a venv with the plan's vLLM (default .venv-argcheck-<vllm_version>/bin/python)")
    parser.add_argument("--local", action="store_true", help="check the local vLLM-CPU rendering (config local_vllm) instead of the nodes'")
    parser.add_argument("--any-version", action="store_true", help="accept a checker whose vLLM is not the plan's vllm_version")
    args = parser.parse_args(argv)
    cfg = node_config(current_config(), args.local)
    rejected = 0
    not_checked: dict[str, None] = {}  # in the checker's order
    for path in args.plans:
        try:
            rejected += check_plan(path, args, cfg, not_checked)
        except InputError as exc:
            print(exc, file=sys.stderr)
            return 2
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
    for note in not_checked:
        print(f"not checked (no GPU, no config.json): {note}")
    return 1 if rejected else 0


if __name__ == "__main__":
    sys.exit(main())
