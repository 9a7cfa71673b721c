"""The `start` step: the task's servers, detached and in the ledger, each waited on until healthy."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from task_runner import Ledger, StepError, run_dir_for

from .bindings import bind, full_bindings
from .faults import parse_faults
from .health import wait_healthy
from .procs import spawn
from .task import load_task


def step_start(args: argparse.Namespace) -> dict[str, Any]:
    node_dir = Path(args.node_dir)
    task = load_task(node_dir, args.task)
    bindings = full_bindings(args, task)
    run_dir = run_dir_for(node_dir, task["pattern"])
    ledger = Ledger(run_dir)
    faults = parse_faults(args.fault, {srv["name"] for srv in task["servers"]})
    if faults and task.get("engine") != "sim":
        raise StepError(f"--fault {', '.join(sorted(faults))}: server faults exist only in the stand-in (engine sim), this task runs {task.get('engine')!r}")
    started = []
    for server in task["servers"]:  # every instance starts at once, then each is waited on
        argv = bind(server["argv"], bindings)
        env = bind(server.get("env", {}), bindings)
        if server["name"] in faults:
            env["DISAGG_SIM_FAULT"] = faults[server["name"]]
        started.append((server, spawn(server["name"], argv, env, run_dir, ledger)))
    ready = {}
    for server, proc in started:
        log = run_dir / "logs" / f"{server['name']}.log"
        ready[server["name"]] = round(wait_healthy(bind(server["health_url"], bindings), float(server["health_timeout_s"]), proc, server["name"], log), 3)
    return {"healthy_after_s": ready}
