"""Run one pattern over a transport and a storage: the same code for local and remote nodes.

Sequence: fetch on every node -> producer (or unified) up -> consumer up -> benchmark ->
stop every node (always, also after a failure or an interrupt) -> collect logs and the
node result -> one result JSON, or one failure record naming the step, node and cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disagglab.errors import StepFailed
from disagglab.hashing import atomic_write_bytes, sha256_file
from disagglab.paths import phase_key, safe_join, safe_segment
from disagglab.plan import faults, local_vllm
from disagglab.plan.model import Pattern, Plan
from disagglab.results.records import build_result, failure_record, write_failure, write_result
from disagglab.run.fleet import Executor, NodePair
from disagglab.run.ledger import RunLedger
from disagglab.run.preflight import before_servers as nixl_preflight
from disagglab.run.transport import RUNNER_PATH, Node

ROLE_NODE = {"unified": "node1", "producer": "node1", "consumer": "node2"}
STEP_TIMEOUT_S = {"fetch": 300.0, "stop": 120.0, "collect": 300.0}
DUPLICATE_SIGNAL_S = 2.0
"""A SIGTERM to the process group reaches us twice (directly and forwarded by Snakemake)."""


class Interrupted(BaseException):
    """SIGTERM/SIGINT reached the control process; unwinds through the stop steps."""


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
class PatternRun:
    plan: Plan
    pattern: Pattern
    phase: str
    cfg: dict[str, Any]
    executor: Executor
    results_dir: Path
    trial: int = 1
    """Which measured trial of the pattern this run is (1-based; see trials.py)."""
    current: tuple[str, str] = ("prepare", "control")
    """The step and node in progress, so an interrupt can say what it cut short."""
    preflight: dict[str, Any] | None = None
    """The NIXL preflight marker of the pair (tcp/efa patterns), copied into the result."""
    lines: list[str] = field(default_factory=list)
    """This run's own log lines: the failure record's tail when the step left no output."""
    ledger: RunLedger | None = None
    """The run-ledger entry while servers may be up (what `recover` needs after a kill -9)."""

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {self.pattern.id} trial {self.trial}: {msg}"
        self.lines.append(line)
        print(line, file=sys.stderr, flush=True)

    @property
    def logs_dir(self) -> Path:
        """Each trial keeps its own logs: a later trial never overwrites an earlier one's evidence."""
        return self.results_dir / "logs" / self.pattern.id / f"trial-{self.trial}"

    @property
    def output(self) -> Path:
        return self.results_dir / "trials" / self.pattern.id / f"{self.trial}.json"

    # ------------------------------------------------------------------ inputs
    def _deployed(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Files the nodes need (from the deploy markers) and the task sha256 per role.

        The task files on disk must be exactly what was deployed; anything else means the
        markers are stale and running would measure something other than what is recorded.
        """
        marker = json.loads((self.results_dir / "deploy" / f"{self.pattern.id}.json").read_text())
        task_sha = {}
        for item in marker["files"]:
            if not item["path"].startswith("tasks/"):
                continue
            role = Path(item["path"]).stem
            local = self.results_dir / "tasks" / self.pattern.id / f"{role}.json"
            actual = sha256_file(local)
            if actual != item["sha256"]:
                raise StepFailed("deploy", "control", f"{local} has sha256 {actual} but {item['key']} was deployed with {item['sha256']}; rerun the deploy")
            task_sha[role] = item["sha256"]
        missing = set(self.pattern.roles) - set(task_sha)
        if missing:
            raise StepFailed("deploy", "control", f"roles {sorted(missing)} missing from the task deploy marker")
        return marker["files"], task_sha

    # ------------------------------------------------------------------ steps
    def _step(self, node: Node, args: list[str], timeout_s: float) -> dict[str, Any]:
        self.current = (args[0], node.name)
        if self.ledger is not None:
            self.ledger.note_step(args[0], node.name)
        outcome = self.executor.transport.run_step(node, self.phase, args, timeout_s)
        if not outcome.ok:
            tail = outcome.report.get("log_tail") or outcome.output_tail
            raise StepFailed(args[0], node.name, outcome.cause, outcome.report.get("exit_status", outcome.exit_status), tail)
        return outcome.report

    def run(self) -> Path:
        safe_segment(self.pattern.id)  # validated by the plan; checked again where it becomes a path
        run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        started = time.time()
        storage = self.executor.storage
        transport = self.executor.transport
        failure_path = self.results_dir / "failures" / f"{self.pattern.id}.json"
        pair: NodePair | None = None
        used: list[Node] = []
        prepared: list[Node] = []
        """Nodes that have the runner: only these can be stopped or collected from."""
        step_reports: dict[str, Any] = {}
        error: BaseException | None = None
        stop_errors: list[str] = []
        collected: dict[str, dict[str, Path]] = {}
        interrupted_at = self.current
        try:
            with interrupts_raise(), self.executor.lease_pair() as pair:
                try:
                    refused = local_vllm.refusal(self.cfg, self.pattern.backend)
                    if refused:
                        raise StepFailed("prepare", "control", refused)
                    try:  # test-only fault injection (DISAGGLAB_FAULTS); empty in every real run
                        fault_roles = faults.for_pattern(os.environ, self.pattern, self.cfg["engine"])
                    except faults.FaultError as exc:
                        raise StepFailed("prepare", "control", str(exc)) from None
                    files, task_sha = self._deployed()
                    used = [pair.node(n) for n in dict.fromkeys(ROLE_NODE[r] for r in self.pattern.roles)]
                    self.log(f"node pair {pair.index}: " + ", ".join(f"{n.name}={n.instance_id or n.address}" for n in used))
                    manifest = {"pattern": self.pattern.id, "trial": self.trial, "run_id": run_id, "files": files}
                    manifest_local = self.logs_dir / "manifest.json"
                    atomic_write_bytes(manifest_local, json.dumps(manifest, indent=2, sort_keys=True).encode())
                    manifest_key = phase_key(self.phase, "manifests", self.pattern.id, f"trial-{self.trial}.json")
                    manifest_sha = storage.put_file(manifest_local, manifest_key).sha256
                    runner = next(f for f in files if f["path"] == RUNNER_PATH)
                    python = f"{self.pattern.spec['infrastructure']['venv_path'].rstrip('/')}/bin/python"
                    for node in used:
                        self.log(f"fetch on {node.name}")
                        self.current = ("fetch", node.name)
                        try:
                            transport.prepare(node, self.phase, storage, runner["key"], runner["sha256"], python)
                        except Exception as exc:  # noqa: BLE001 - offline node, wrong storage, tampered runner
                            if "PingStatus" in str(exc) or "not registered" in str(exc):
                                self.executor.report_bad_pair(pair, str(exc))
                                self.log(f"node pair {pair.index} is not used again in this run: {exc}")
                            raise StepFailed("fetch", node.name, str(exc)) from None
                        prepared.append(node)
                        self._step(node, ["fetch", "--node-dir", transport.node_dir(node, self.phase), "--store", storage.url,
                                          "--manifest-key", manifest_key, "--manifest-sha256", manifest_sha], STEP_TIMEOUT_S["fetch"])
                    self.ledger = RunLedger.for_pattern_run(self, used, runner, python, run_id)
                    nixl_preflight(self, pair, run_id, step_reports)
                    grace = str(self.cfg["server"]["stop_grace_s"])
                    for role in self.pattern.roles:
                        node = pair.node(ROLE_NODE[role])
                        self.log(f"start {role} on {node.name}")
                        step_reports[f"start:{role}"] = self._step(node, [
                            "start", "--node-dir", transport.node_dir(node, self.phase), "--task", f"tasks/{self.pattern.id}/{role}.json",
                            "--bindings", json.dumps(pair.bindings(node)), "--grace", grace, *faults.step_args(fault_roles, [role]),
                        ], float(self.cfg["server"]["health_timeout_s"]) + 60)
                    bench_role = self.pattern.roles[-1]
                    node = pair.node(ROLE_NODE[bench_role])
                    self.log(f"benchmark on {node.name}")
                    step_reports["bench"] = self._step(node, [
                        "bench", "--node-dir", transport.node_dir(node, self.phase), "--task", f"tasks/{self.pattern.id}/{bench_role}.json",
                        "--bindings", json.dumps(pair.bindings(node)), "--grace", grace, *faults.step_args(fault_roles, ["proxy", "benchmark"]),
                    ], self._bench_timeout())
                except (StepFailed, Interrupted, Exception) as exc:  # noqa: BLE001 - any failure becomes a failure record
                    error = exc
                finally:
                    interrupted_at = self.current
                    stop_errors = self._stop_all(prepared)
                    if self.ledger is not None and not stop_errors:
                        self.ledger.clear(self.executor.transport)
                        self.ledger = None
                    collected = self._collect_all(prepared, run_id)
        except Interrupted as exc:  # a second signal while stopping
            error = error or exc
            stop_errors = stop_errors or ["interrupted while stopping"]
        except Exception as exc:  # noqa: BLE001 - no pair could be leased
            error = error or exc
        finished = time.time()
        if error is None and stop_errors:
            error = StepFailed("stop", "/".join(n.name for n in used), "; ".join(stop_errors))
        result: dict[str, Any] | None = None
        if error is None:
            assert pair is not None
            try:
                result = build_result(self, pair, task_sha, run_id, started, finished, collected, step_reports)
            except Exception as exc:  # noqa: BLE001 - e.g. the node result never came back
                error = exc if isinstance(exc, StepFailed) else StepFailed("collect", "control", f"{type(exc).__name__}: {exc}")
        if error is not None:
            self.current = interrupted_at
            record = failure_record(self, error, started, finished, run_id, collected)
            record["log_tail"] = record["log_tail"] or self.lines[-20:]  # e.g. a command that never reached the node
            write_failure(failure_path, record)
            self.log(f"FAILED: {record['message']}")
            if isinstance(error, Interrupted):
                raise KeyboardInterrupt(str(error))
            raise SystemExit(1)
        assert result is not None
        output = self.output
        write_result(output, result)
        failure_path.unlink(missing_ok=True)
        (self.results_dir / "corrupt" / "trials" / self.pattern.id / output.name).unlink(missing_ok=True)  # a damaged copy, now replaced
        self.log(f"done: {result['completed']} requests, valid={result['validity']['valid']}"
                 + ("" if result["validity"]["valid"] else f"; the result is marked INVALID: {'; '.join(result['validity']['reasons'])}"))
        return output

    def _bench_timeout(self) -> float:
        spec = self.pattern.spec
        requests = spec["warmup_iterations"] + spec["measurement_iterations"]
        return float(self.cfg["benchmark"]["request_timeout_s"]) * max(1, requests // max(1, spec["concurrency"])) + 120

    def _stop_all(self, nodes: list[Node]) -> list[str]:
        errors = []
        for node in reversed(nodes):
            try:
                self._step(node, ["stop", "--node-dir", self.executor.transport.node_dir(node, self.phase),
                                  "--pattern", self.pattern.id, "--grace", str(self.cfg["server"]["stop_grace_s"])], STEP_TIMEOUT_S["stop"])
            except StepFailed as exc:
                errors.append(f"{node.name}: {exc.cause}")
            except Exception as exc:  # noqa: BLE001 - keep stopping the other node whatever broke here
                errors.append(f"{node.name}: {type(exc).__name__}: {exc}")
        return errors

    def _collect_all(self, nodes: list[Node], run_id: str) -> dict[str, dict[str, Path]]:
        """Bring each node's result and logs back through the store into results/<phase>/logs/."""
        collected: dict[str, dict[str, Path]] = {}
        storage = self.executor.storage
        for node in nodes:
            prefix = f"{self.phase}/outputs/{self.pattern.id}/{run_id}/{node.name}"
            try:
                report = self._step(node, ["collect", "--node-dir", self.executor.transport.node_dir(node, self.phase),
                                           "--pattern", self.pattern.id, "--store", storage.url, "--output-prefix", prefix], STEP_TIMEOUT_S["collect"])
            except Exception as exc:  # noqa: BLE001 - logs are best effort; the result check comes later
                self.log(f"collect on {node.name} failed: {getattr(exc, 'cause', exc)}")
                continue
            files = {}
            for item in report.get("uploaded", []):
                # The node names these keys: each must stay below this run's output prefix.
                rel = item["key"][len(prefix) + 1:]
                try:
                    if not item["key"].startswith(prefix + "/"):
                        raise ValueError(f"outside {prefix}/")
                    dest = safe_join(self.logs_dir / node.name, *rel.split("/"))
                    got = storage.get_file(item["key"], dest)
                except ValueError as exc:
                    self.log(f"collect: refused {item['key']!r} from {node.name}: {exc}")
                    continue
                if got != item["sha256"]:
                    self.log(f"collect: {item['key']} sha256 mismatch ({got} != {item['sha256']})")
                    continue
                files[rel] = dest
            collected[node.name] = files
        return collected
