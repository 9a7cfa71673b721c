"""Plays the SSM agent for moto's in-process SSM backend (moto never runs commands).

It picks up each command sent to moto, marks the invocation InProgress, runs the script
for real the way the agent does (`sh -c <script file>` as a process-group leader), then
records status, exit code, elapsed time, truncated inline output and the full stdout in the
S3 output prefix, exactly as the reference describes the agent (amazon-ssm-agent
`executers.ExecuteCommand` + `pluginutil.GetStatus`):
- the execution timeout and a cancel SIGKILL the script's process group: exit 137,
  status TimedOut (timeout) or Cancelled (cancel);
- exit 137 from the script itself (e.g. dash reporting a child killed by SIGKILL) is also
  TimedOut; a script killed by a signal has no exit status: ResponseCode -1, Failed;
- background processes that left the group (setsid) are not touched, as on a real node.

Test-only faults (never reachable from a plan or the pipeline's config): `mode` applies to
every command (kept for the transport tests); `faults` target one step of one pattern on one
node, as a real node would misbehave:
- Fault(kind="exec-timeout", after_s=x): the agent's execution timer fires x real seconds
  after the step's ledger names `when` (default: the benchmark is running), and the
  invocation reports the full executionTimeout as elapsed, as the real agent does when its
  timer fires;
- Fault(kind="sigkill", after_s=x): at the same moment the step's process (the runner,
  child of `sh`) is killed with SIGKILL, as the OOM killer would; `sh` then exits 137.
Waiting for `when` makes the fault land mid-benchmark whatever the machine's load.
`cancel_command`, which moto lacks, is patched in by `install_cancel_command`: it marks the
invocation Cancelling and this agent kills the command's process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.ssm.models import ssm_backends

INLINE_STDOUT = 24000
INLINE_STDERR = 8000
MARK = "--output truncated--"
CANCEL_REQUESTS: set[str] = set()
"""Command ids whose cancel_command reached moto (filled by the patched response)."""


def truncate(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) < limit:
        return text
    return data[: limit - len(MARK)].decode(errors="ignore") + MARK


def install_cancel_command() -> Any:
    """Patch moto's SSM responses with cancel_command; returns the previous attribute."""
    from moto.core.responses import ActionResult
    from moto.ssm.responses import SimpleSystemManagerResponse

    def cancel_command(self):  # noqa: ANN001, ANN202 - moto response method
        command_id = self._get_param("CommandId")
        CANCEL_REQUESTS.add(command_id)
        command = self.ssm_backend.get_command_by_id(command_id)
        for inv in command.invocations:
            if inv.get("Status") in ("Pending", "InProgress", "Delayed"):
                inv.update(Status="Cancelling", StatusDetails="Cancelling")
        return ActionResult({})

    previous = getattr(SimpleSystemManagerResponse, "cancel_command", None)
    SimpleSystemManagerResponse.cancel_command = cancel_command
    return previous


def command_target(script: str) -> tuple[str, str, str]:
    """(step, pattern, node name) of a task-runner command script (its last line execs the runner)."""
    words = shlex.split(script.strip().splitlines()[-1])
    args = words[3:]
    step = args[0] if args else ""
    opts = dict(zip(args[1::2], args[2::2], strict=False))
    pattern = opts.get("--pattern", "")
    if not pattern and "--task" in opts:
        pattern = opts["--task"].split("/")[1]
    if not pattern and "--manifest-key" in opts:  # <phase>/manifests/<pattern>/trial-<k>.json
        parts = opts["--manifest-key"].split("/")
        pattern = parts[parts.index("manifests") + 1] if "manifests" in parts[:-1] else ""
    node = node_dir_of(script).parent.name if "--node-dir" in opts else ""
    return step, pattern, node


def node_dir_of(script: str) -> Path:
    words = shlex.split(script.strip().splitlines()[-1])
    return Path(words[words.index("--node-dir") + 1])


@dataclass
class Fault:
    """Misbehave on one step of one pattern on one node (see the module docstring)."""

    pattern: str
    step: str
    node: str
    kind: str
    """exec-timeout | sigkill"""
    after_s: float = 0.3
    when: str = "benchmark"
    """The fault's clock starts once the node's process ledger for the pattern names this process."""
    fired: int = 0

    def armed(self, node_dir: Path, since: float) -> bool:
        ledger = node_dir / "runs" / self.pattern / "procs.json"
        try:
            entries = json.loads(ledger.read_text())
        except (OSError, ValueError):
            return False
        return any(e["name"] == self.when and e.get("started_at", 0) >= since and not e.get("stopped_at") for e in entries)


_CLAIMED: set[str] = set()
"""Command ids some agent of this process has taken: moto's backend is process-global, so an
agent of another test module (another moto server, same backend) must never run them again."""
_CLAIM_LOCK = threading.Lock()


@dataclass
class FakeAgent:
    region: str
    s3: Any
    env: dict[str, str]
    mode: str = "run"
    """run | fail:<code> | timeout-exec | timeout-delivery | cancelled | hide:<seconds> | truncate"""
    faults: list[Fault] = field(default_factory=list)
    handled: set[str] = field(default_factory=set)
    scripts: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    """Every `sh` this agent started: the tests check none outlives its command."""
    outcomes: list[tuple[tuple[str, str, str], str, int]] = field(default_factory=list)
    """((step, pattern, node), final status, response code) per command run."""
    stop_event: threading.Event = field(default_factory=threading.Event)

    def backend(self):
        return ssm_backends[DEFAULT_ACCOUNT_ID][self.region]

    def __enter__(self) -> FakeAgent:
        # Commands sent before this agent existed belong to earlier tests: never run them again.
        self.handled.update(c.command_id for c in self.backend()._commands)
        self.workers: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)
        for worker in self.workers:
            worker.join(timeout=30)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            for command in list(self.backend()._commands):
                if command.command_id in self.handled:
                    continue
                self.handled.add(command.command_id)
                with _CLAIM_LOCK:  # one execution per command in this process, as SSM runs an invocation once
                    if command.command_id in _CLAIMED:
                        continue
                    _CLAIMED.add(command.command_id)
                hidden = list(command.invocations)
                if self.mode.startswith("hide:"):
                    command.invocations.clear()  # the InvocationDoesNotExist race
                worker = threading.Thread(target=self._run, args=(command, hidden), daemon=True)
                self.workers.append(worker)
                worker.start()
            time.sleep(0.02)

    def _fault_for(self, script: str) -> Fault | None:
        try:
            target = command_target(script)
        except (ValueError, IndexError):
            return None
        for fault in self.faults:
            if (fault.step, fault.pattern, fault.node) == target:
                return fault
        return None

    def _run(self, command: Any, invocations: list[dict[str, Any]]) -> None:
        if self.mode.startswith("hide:"):
            time.sleep(float(self.mode.split(":", 1)[1]))
            command.invocations.extend(invocations)
        for inv in invocations:
            inv.update(Status="InProgress", StatusDetails="InProgress", ResponseCode=-1)
            script = command.parameters["commands"][0]
            self.scripts.append(script)
            if self.mode == "timeout-delivery":
                inv.update(Status="TimedOut", StatusDetails="Delivery Timed Out", ResponseCode=-1)
                continue
            if self.mode == "cancelled":
                inv.update(Status="Cancelled", StatusDetails="Cancelled", ResponseCode=-1)
                continue
            timeout = float(command.parameters.get("executionTimeout", ["3600"])[0])
            fault = self._fault_for(script)
            started = time.monotonic()
            code, out, err, why = self._execute(script, command.command_id, timeout, fault)
            elapsed = time.monotonic() - started
            if self.mode.startswith("fail:"):
                code = int(self.mode.split(":", 1)[1])
            if self.mode == "timeout-exec":
                code, why = 137, "timeout"
            if self.mode == "truncate":
                out = "x" * 30000 + "\n" + out
            if why == "timeout":
                elapsed = timeout  # the agent's timer fired: the step ran its whole budget
            status = self._status(code, why)
            details = {"Success": "Success", "Failed": "Failed", "TimedOut": "Execution Timed Out", "Cancelled": "Cancelled"}[status]
            if out:
                key = f"{command.output_s3_key_prefix}/{command.command_id}/{inv['InstanceId']}/awsrunShellScript/0.awsrunShellScript/stdout"
                self.s3.put_object(Bucket=command.output_s3_bucket_name, Key=key, Body=out.encode())
            with contextlib.suppress(ValueError, IndexError):
                self.outcomes.append((command_target(script), status, code))
            inv.update(Status=status, StatusDetails=details, ResponseCode=code, ExecutionElapsedTime=f"PT{elapsed:.3f}S",
                       StandardOutputContent=truncate(out, INLINE_STDOUT), StandardErrorContent=truncate(err, INLINE_STDERR))

    @staticmethod
    def _status(code: int, why: str) -> str:
        """pluginutil.GetStatus: 0 Success; cancelled -> Cancelled; 137 -> TimedOut; else Failed."""
        if code == 0:
            return "Success"
        if why == "cancel":
            return "Cancelled"
        if code == 137:
            return "TimedOut"
        return "Failed"

    def _execute(self, script: str, command_id: str, timeout_s: float, fault: Fault | None) -> tuple[int, str, str, str]:
        """Run the script as the agent does; returns (exit code, stdout, stderr, why it ended)."""
        with tempfile.NamedTemporaryFile("w", suffix="_script.sh", delete=False) as fh:
            fh.write(script)
        os.chmod(fh.name, 0o700)
        try:
            proc = subprocess.Popen(["sh", "-c", fh.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=self.env, start_new_session=True)
            self.pids.append(proc.pid)
            deadline = time.monotonic() + timeout_s
            kill_at = None
            began = time.time()
            node_dir = node_dir_of(script) if fault else None
            chunks: list[tuple[str, str]] = []
            why = "exit"
            while True:
                try:
                    chunks.append(proc.communicate(timeout=0.05))
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if fault and node_dir and fault.armed(node_dir, began):
                    node_dir = None  # armed once
                    if fault.kind == "exec-timeout":
                        deadline = now + fault.after_s
                    else:
                        kill_at = now + fault.after_s
                if command_id in CANCEL_REQUESTS or now > deadline:
                    why = "cancel" if command_id in CANCEL_REQUESTS else "timeout"
                    if why == "timeout" and fault:
                        fault.fired += 1
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)  # executers_unix.killProcess
                    chunks.append(proc.communicate())
                    break
                if kill_at is not None and now > kill_at:
                    kill_at = None
                    for child in _children(proc.pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child, signal.SIGKILL)
                    assert fault is not None
                    fault.fired += 1
            out = "".join(c[0] or "" for c in chunks)
            err = "".join(c[1] or "" for c in chunks)
            if why in ("cancel", "timeout"):
                return 137, out, err, why  # CommandStoppedPreemptivelyExitCode
            code = proc.returncode
            return (-1 if code < 0 else code), out, err, why  # Go's WaitStatus.ExitStatus() is -1 when signalled
        finally:
            os.unlink(fh.name)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
