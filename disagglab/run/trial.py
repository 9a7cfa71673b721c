"""Run one trial of a pattern over a transport and a storage: the same code for local and remote nodes.

Sequence: fetch on every node -> producer (or unified) up -> consumer up -> benchmark ->
stop every node (always, also after a failure or an interrupt) -> collect logs and the
node result -> a TrialOutcome (plain data) that results/records.py writes as one result JSON,
or as one failure record naming the step, node and cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disagglab.errors import Interrupted, StepFailed
from disagglab.hashing import atomic_write_bytes, sha256_file
from disagglab.paths import PhaseLayout, phase_key, safe_join, safe_segment
from disagglab.plan import faults, local_vllm
from disagglab.plan.model import Pattern, Plan
from disagglab.results.outcome import TrialOutcome
from disagglab.run.fleet import Fleet, NodePair
from disagglab.run.ledger import RunLedger
from disagglab.run.preflight import before_servers as nixl_preflight
from disagglab.run.steps import StepRunner
from disagglab.run.transport import RUNNER_PATH, Node

ROLE_NODE = {"unified": "node1", "producer": "node1", "consumer": "node2"}
STEP_TIMEOUT_S = {"fetch": 300.0, "stop": 120.0, "collect": 300.0}
DUPLICATE_SIGNAL_S = 2.0
"""A SIGTERM to the process group reaches us twice (directly and forwarded by Snakemake)."""


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    last: dict[int, float] = {}

    def handler(signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if now - last.get(signum, -DUPLICATE_SIGNAL_S) < DUPLICATE_SIGNAL_S:
            return  # the same signal again at once: one interrupt, not "interrupted while stopping"
        last[signum] = now
        raise Interrupted(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@dataclass
class TrialRun:
    """One measured trial of a pattern: `trial` is 1-based (results/fold.py folds the trials)."""

    plan: Plan
    pattern: Pattern
    phase: str
    cfg: dict[str, Any]
    fleet: Fleet
    layout: PhaseLayout
    trial: int = 1
    steps: StepRunner = field(init=False)

    def __post_init__(self) -> None:
        self.steps = StepRunner(self.fleet.transport, self.phase, f"{self.pattern.id} trial {self.trial}")

    def log(self, msg: str) -> None:
        self.steps.log(msg)

    @property
    def logs_dir(self) -> Path:
        return self.layout.trial_logs(self.pattern.id, self.trial)

    # ------------------------------------------------------------------ inputs
    def _deployed(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Files the nodes need (from the deploy marker) and the task sha256 per role.

        The task files on disk must be exactly what was deployed; anything else means the
        markers are stale and running would measure something other than what is recorded.
        """
        marker = json.loads(self.layout.deploy_marker(self.pattern.id).read_text())
        task_sha = {}
        for item in marker["files"]:
            if not item["path"].startswith("tasks/"):
                continue
            role = Path(item["path"]).stem
            local = self.layout.task(self.pattern.id, role)
            actual = sha256_file(local)
            if actual != item["sha256"]:
                raise StepFailed("deploy", "control", f"{local} has sha256 {actual} but {item['key']} was deployed with {item['sha256']}; rerun the deploy")
            task_sha[role] = item["sha256"]
        missing = set(self.pattern.roles) - set(task_sha)
        if missing:
            raise StepFailed("deploy", "control", f"roles {sorted(missing)} missing from the task deploy marker")
        return marker["files"], task_sha

    def _put_manifest(self, files: list[dict[str, Any]], run_id: str) -> tuple[str, str]:
        manifest = {"pattern": self.pattern.id, "trial": self.trial, "run_id": run_id, "files": files}
        local = self.logs_dir / "manifest.json"
        atomic_write_bytes(local, json.dumps(manifest, indent=2, sort_keys=True).encode())
        key = phase_key(self.phase, "manifests", self.pattern.id, f"trial-{self.trial}.json")
        return key, self.fleet.storage.put_file(local, key).sha256

    # ------------------------------------------------------------------ steps
    def run(self) -> TrialOutcome:
        """Measure; never raises for a failed step: the outcome carries the error instead."""
        safe_segment(self.pattern.id)  # validated by the plan; checked again where it becomes a path
        run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        outcome = TrialOutcome(self.phase, self.pattern, self.trial, self.cfg, run_id, time.time(), log_lines=self.steps.lines)
        used: list[Node] = []
        prepared: list[Node] = []
        """Nodes that have the runner: only these can be stopped or collected from."""
        stop_errors: list[str] = []
        interrupted_at = self.steps.current
        try:
            with interrupts_raise(), self.fleet.lease_pair() as pair:
                outcome.nodes = {n.name: n.address for n in (pair.node1, pair.node2)}
                outcome.ports = pair.ports
                try:
                    self._measure(pair, outcome, used, prepared)
                except (StepFailed, Interrupted, Exception) as exc:  # noqa: BLE001 - any failure becomes a failure record
                    outcome.error = exc
                finally:
                    interrupted_at = self.steps.current
                    stop_errors = self._stop_all(prepared)
                    if self.steps.ledger is not None and not stop_errors:
                        self.steps.ledger.clear(self.fleet.transport)
                        self.steps.ledger = None
                    outcome.collected = self._collect_all(prepared, run_id)
        except Interrupted as exc:  # a second signal while stopping
            outcome.error = outcome.error or exc
            stop_errors = stop_errors or ["interrupted while stopping"]
        except Exception as exc:  # noqa: BLE001 - no pair could be leased
            outcome.error = outcome.error or exc
        outcome.finished = time.time()
        if outcome.error is None and stop_errors:
            outcome.error = StepFailed("stop", "/".join(n.name for n in used), "; ".join(stop_errors))
        outcome.at = interrupted_at
        return outcome

    def _measure(self, pair: NodePair, outcome: TrialOutcome, used: list[Node], prepared: list[Node]) -> None:
        """fetch -> preflight -> servers -> benchmark; `used` and `prepared` grow as it goes."""
        refused = local_vllm.refusal(self.cfg, self.pattern.backend)
        if refused:
            raise StepFailed("prepare", "control", refused)
        try:  # test-only fault injection (DISAGGLAB_FAULTS); empty in every real run
            fault_roles = faults.for_pattern(os.environ, self.pattern, self.cfg["engine"])
        except faults.FaultError as exc:
            raise StepFailed("prepare", "control", str(exc)) from None
        files, outcome.task_sha = self._deployed()
        used.extend(pair.node(n) for n in dict.fromkeys(ROLE_NODE[r] for r in self.pattern.roles))
        self.log(f"node pair {pair.index}: " + ", ".join(f"{n.name}={n.instance_id or n.address}" for n in used))
        manifest_key, manifest_sha = self._put_manifest(files, outcome.run_id)
        runner = next(f for f in files if f["path"] == RUNNER_PATH)
        python = f"{self.pattern.spec['infrastructure']['venv_path'].rstrip('/')}/bin/python"
        for node in used:
            self._fetch(pair, node, runner, python, manifest_key, manifest_sha)
            prepared.append(node)
        self.steps.ledger = self._open_ledger(used, runner, python, outcome.run_id)
        preflight = nixl_preflight(self.steps, self.cfg, self.pattern, self.layout, pair, outcome.run_id)
        if preflight is not None:
            outcome.preflight, outcome.steps["preflight"] = preflight
        grace = str(self.cfg["server"]["stop_grace_s"])
        for role in self.pattern.roles:
            node = pair.node(ROLE_NODE[role])
            self.log(f"start {role} on {node.name}")
            outcome.steps[f"start:{role}"] = self.steps.run(node, [
                "start", *self._node_args(node), "--task", f"tasks/{self.pattern.id}/{role}.json",
                "--bindings", json.dumps(pair.bindings(node)), "--grace", grace, *faults.step_args(fault_roles, [role]),
            ], float(self.cfg["server"]["health_timeout_s"]) + 60)
        bench_role = self.pattern.roles[-1]
        node = pair.node(ROLE_NODE[bench_role])
        self.log(f"benchmark on {node.name}")
        outcome.steps["bench"] = self.steps.run(node, [
            "bench", *self._node_args(node), "--task", f"tasks/{self.pattern.id}/{bench_role}.json",
            "--bindings", json.dumps(pair.bindings(node)), "--grace", grace, *faults.step_args(fault_roles, ["proxy", "benchmark"]),
        ], self._bench_timeout())

    def _node_args(self, node: Node) -> list[str]:
        return ["--node-dir", self.fleet.transport.node_dir(node, self.phase)]

    def _fetch(self, pair: NodePair, node: Node, runner: dict[str, Any], python: str, manifest_key: str, manifest_sha: str) -> None:
        self.log(f"fetch on {node.name}")
        self.steps.at("fetch", node.name)
        try:
            self.fleet.transport.prepare(node, self.phase, self.fleet.storage, runner["key"], runner["sha256"], python)
        except Exception as exc:  # noqa: BLE001 - offline node, wrong storage, tampered runner
            if "PingStatus" in str(exc) or "not registered" in str(exc):
                self.fleet.report_bad_pair(pair, str(exc))
                self.log(f"node pair {pair.index} is not used again in this run: {exc}")
            raise StepFailed("fetch", node.name, str(exc)) from None
        self.steps.run(node, ["fetch", *self._node_args(node), "--store", self.fleet.storage.url,
                              "--manifest-key", manifest_key, "--manifest-sha256", manifest_sha], STEP_TIMEOUT_S["fetch"])

    def _open_ledger(self, used: list[Node], runner: dict[str, Any], python: str, run_id: str) -> RunLedger:
        """The ledger entry of this trial, about to start servers on `used`; local step runners are noted too."""
        transport = self.fleet.transport
        nodes = [{"name": n.name, "address": n.address, "instance_id": n.instance_id, "node_dir": transport.node_dir(n, self.phase)}
                 for n in used]
        local_dir = str(transport.nodes_dir) if transport.nodes_dir else None
        ledger = RunLedger.begin(self.layout.root, self.phase, self.pattern.id, self.pattern.layer, run_id, self.cfg, nodes,
                                 {"key": runner["key"], "sha256": runner["sha256"]}, python, local_dir, self.trial, self.pattern.repeats)
        ledger.watch(transport)
        return ledger

    def _bench_timeout(self) -> float:
        spec = self.pattern.spec
        requests = spec["warmup_iterations"] + spec["measurement_iterations"]
        return float(self.cfg["benchmark"]["request_timeout_s"]) * max(1, requests // max(1, spec["concurrency"])) + 120

    def _stop_all(self, nodes: list[Node]) -> list[str]:
        errors = []
        for node in reversed(nodes):
            try:
                self.steps.run(node, ["stop", *self._node_args(node), "--pattern", self.pattern.id,
                                      "--grace", str(self.cfg["server"]["stop_grace_s"])], STEP_TIMEOUT_S["stop"])
            except StepFailed as exc:
                errors.append(f"{node.name}: {exc.cause}")
            except Exception as exc:  # noqa: BLE001 - keep stopping the other node whatever broke here
                errors.append(f"{node.name}: {type(exc).__name__}: {exc}")
        return errors

    def _collect_all(self, nodes: list[Node], run_id: str) -> dict[str, dict[str, Path]]:
        """Bring each node's result and logs back through the store into the trial's log folder."""
        collected: dict[str, dict[str, Path]] = {}
        for node in nodes:
            prefix = f"{self.phase}/outputs/{self.pattern.id}/{run_id}/{node.name}"
            try:
                report = self.steps.run(node, ["collect", *self._node_args(node), "--pattern", self.pattern.id,
                                               "--store", self.fleet.storage.url, "--output-prefix", prefix], STEP_TIMEOUT_S["collect"])
            except Exception as exc:  # noqa: BLE001 - logs are best effort; the result check comes later
                self.log(f"collect on {node.name} failed: {getattr(exc, 'cause', exc)}")
                continue
            collected[node.name] = self._bring_back(node, prefix, report.get("uploaded", []))
        return collected

    def _bring_back(self, node: Node, prefix: str, uploaded: list[dict[str, Any]]) -> dict[str, Path]:
        files = {}
        for item in uploaded:
            # The node names these keys: each must stay below this run's output prefix.
            rel = item["key"][len(prefix) + 1:]
            try:
                if not item["key"].startswith(prefix + "/"):
                    raise ValueError(f"outside {prefix}/")
                dest = safe_join(self.logs_dir / node.name, *rel.split("/"))
                got = self.fleet.storage.get_file(item["key"], dest)
            except ValueError as exc:
                self.log(f"collect: refused {item['key']!r} from {node.name}: {exc}")
                continue
            if got != item["sha256"]:
                self.log(f"collect: {item['key']} sha256 mismatch ({got} != {item['sha256']})")
                continue
            files[rel] = dest
        return files
