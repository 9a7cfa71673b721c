"""The SSM transport: run a task-runner step on an EC2 node with AWS-RunShellScript.

What bites, and what we do about it (see shared/reference/aws-ssm-s3-moto.md):
- the agent runs `sh -c script`: the script is bash, explicitly, every value shlex-quoted;
- exit 137 is reported as TimedOut and 194 reboots the node: our scripts exit 0/1/3 only;
  so TimedOut + 137 is either the execution timeout or a SIGKILL from outside (the OOM
  killer): the invocation's ExecutionElapsedTime (else our own clock) tells them apart;
- a step process killed by a signal when no shell stands between it and the agent ends
  Failed with ResponseCode -1 (the agent's Go code reads -1 for a signalled process);
- an invocation may not exist for a while after send_command: bounded grace, then error;
- inline output stops at 24,000 bytes: the full stdout comes from the S3 output prefix;
- a background child holding the agent's pipes keeps the command InProgress: the runner
  starts servers with setsid and redirects their output to files;
- on timeout or interrupt the command is cancelled; the orchestrator always sends `stop`.
Nothing secret goes into the command text: it holds keys, hashes, paths and ports.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from disagglab.deploy.storage import S3Storage, Storage
from disagglab.run.transport import RUNNER_PATH, Node, StepOutcome, parse_runner_output

TRUNCATION_MARK = "--output truncated--"
INLINE_LIMIT = 24000
TERMINAL = {"Success", "Failed", "Cancelled", "TimedOut"}
# botocore already retried these; the poll loop keeps going (with its own backoff) until its deadline.
THROTTLING = {"Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded", "TooManyRequestsException", "RequestThrottled"}
BOOTSTRAP_EXIT = 3
ELAPSED = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?$")


def elapsed_seconds(value: Any) -> float | None:
    """ExecutionElapsedTime is an ISO 8601 duration ("PT0.083S", "PT1M2.5S"); None if absent."""
    m = ELAPSED.match(str(value or ""))
    if not m or not any(m.groups()):
        return None
    d, h, mi, sec = (float(g) if g else 0.0 for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + sec


def api_error(op: str, exc: Exception) -> str:
    """One line for a failed SSM API call: throttling says how many attempts botocore made."""
    resp = getattr(exc, "response", None) or {}
    code = resp.get("Error", {}).get("Code") or type(exc).__name__
    msg = resp.get("Error", {}).get("Message") or str(exc)
    attempts = int(resp.get("ResponseMetadata", {}).get("RetryAttempts", 0)) + 1
    if code in THROTTLING:
        return f"SSM throttled: {code} on {op} after {attempts} attempts ({msg})"
    return f"SSM {op} failed: {code}: {msg}" + (f" (after {attempts} attempts)" if attempts > 1 else "")


@dataclass
class Bootstrap:
    bucket: str
    key: str
    sha256: str
    python: str


def build_script(node_dir: str, boot: Bootstrap, args: list[str], region: str | None) -> str:
    """The bash script one step sends: fetch the runner by key, verify it, exec it."""
    q = shlex.quote
    runner = f"{node_dir}/{RUNNER_PATH}"
    # quotes and backslashes are dropped from the cause so the line stays valid JSON
    fail = (f"m=${{1//[\\\"\\\\]/}}; echo 'RUNNER-RESULT {{\"ok\": false, \"step\": \"bootstrap\", \"cause\": \"'\"$m\"'\"}}'; exit {BOOTSTRAP_EXIT}")
    lines = [
        "#!/bin/bash",
        "set -u",
        f"fail() {{ {fail}; }}",
        *([f"export AWS_DEFAULT_REGION={q(region)}"] if region else []),
        f"NODE_DIR={q(node_dir)}",
        f"RUNNER={q(runner)}",
        f"PY={q(boot.python)}",
        f"BUCKET={q(boot.bucket)}",
        f"KEY={q(boot.key)}",
        f"SHA={q(boot.sha256)}",
        'mkdir -p "$NODE_DIR/remote" || fail "cannot create $NODE_DIR"',
        '[ -x "$PY" ] || fail "no python at $PY (the plan venv_path)"',
        # sha256sum reads stdin: with a file name, it escapes names holding '\\' or a newline
        'if [ ! -f "$RUNNER" ] || [ "$(sha256sum < "$RUNNER" | cut -d" " -f1)" != "$SHA" ]; then',
        '  TMP="$RUNNER.tmp.$$"',
        '  if command -v aws >/dev/null 2>&1; then',
        '    aws s3api get-object --bucket "$BUCKET" --key "$KEY" "$TMP" >/dev/null 2>&1 || fail "cannot fetch s3://$BUCKET/$KEY"',
        "  else",
        '    "$PY" -c "import sys, boto3; boto3.client(\'s3\').download_file(sys.argv[1], sys.argv[2], sys.argv[3])" "$BUCKET" "$KEY" "$TMP" >/dev/null 2>&1'
        ' || fail "cannot fetch s3://$BUCKET/$KEY (no aws CLI, boto3 failed)"',
        "  fi",
        '  if [ "$(sha256sum < "$TMP" | cut -d" " -f1)" != "$SHA" ]; then rm -f "$TMP"; fail "task runner sha256 mismatch"; fi',
        '  mv -f "$TMP" "$RUNNER"',
        "fi",
        'exec "$PY" "$RUNNER" ' + " ".join(q(a) for a in args),
    ]
    return "\n".join(lines) + "\n"


def describe_failure(node: Node, instance_id: str, inv: dict[str, Any], execution_timeout: int, delivery_timeout: int,
                     elapsed_s: float | None = None) -> str:
    """The cause of a terminal status, in words. `elapsed_s` is how long the step ran, from the
    invocation's ExecutionElapsedTime or, when that is absent, an upper bound from our clock."""
    status, details, code = inv.get("Status"), inv.get("StatusDetails", ""), inv.get("ResponseCode")
    where = f"{node.name} ({instance_id})"
    ran = f" after {elapsed_s:.1f} s" if elapsed_s is not None else ""
    if status == "TimedOut":
        if "Delivery" in details or code == -1:
            return f"SSM could not deliver the command to {where} within {delivery_timeout} s (is the agent online?)"
        if elapsed_s is not None and elapsed_s < execution_timeout - 1:
            return (f"exit 137 (killed by SIGKILL: out of memory?) on {where}{ran}, well before its "
                    f"{execution_timeout} s execution timeout")
        return f"execution timed out after {execution_timeout} s on {where}: the step ran past its executionTimeout and SSM killed it (exit 137)"
    if status == "Cancelled":
        return f"the command on {where} was cancelled"
    if status == "Failed":
        if code == 137:
            return f"the step on {where} was killed (exit 137: SIGKILL, out of memory, or the agent stopping)"
        if code == -1 and details not in ("Undeliverable", "Terminated"):
            return f"the step's process on {where} was killed by a signal{ran} (no exit status, ResponseCode -1: SIGKILL, out of memory?)"
        if code == BOOTSTRAP_EXIT:
            return f"bootstrap failed on {where}"
        if details in ("Undeliverable", "Terminated"):
            return f"SSM marked the command {details.lower()} on {where}"
        return f"the step failed on {where} with exit code {code}"
    return f"SSM status {status} ({details}) on {where}"


@dataclass
class SsmTransport:
    """Nodes are EC2 instances reached through SSM; outputs are kept under an S3 prefix."""

    ssm: Any
    storage: Storage
    node_root: str
    execution_timeout_s: int = 3600
    delivery_timeout_s: int = 120
    invocation_grace_s: float = 60.0
    poll_initial_s: float = 0.5
    poll_max_s: float = 5.0
    region: str | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    boot: dict[str, Bootstrap] = field(default_factory=dict)
    online: set[str] = field(default_factory=set)
    sent: list[str] = field(default_factory=list)
    nodes_dir: None = None
    """Remote nodes have no folder on this host."""
    on_spawn: Callable[[Node, str, int], None] | None = None
    """Never called: SSM starts no local process."""

    def node_dir(self, node: Node, phase: str) -> str:
        """<node_root>/<node1|node2>/<phase>: distinct even when one machine plays both roles."""
        return f"{self.node_root.rstrip('/')}/{node.name}/{phase}"

    def ensure_online(self, node: Node) -> None:
        """A node that is not an Online managed instance would only time out later."""
        iid = node.instance_id
        if iid in self.online:
            return
        try:
            resp = self.ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [iid]}])
        except Exception as exc:  # noqa: BLE001 - generated botocore error classes
            raise RuntimeError(f"{node.name} ({iid}): {api_error('DescribeInstanceInformation', exc)}") from None
        info = resp.get("InstanceInformationList", [])
        status = info[0].get("PingStatus") if info else None
        if status != "Online":
            why = "is not registered with SSM (agent not running, or no instance profile)" if not info else f"is not online (PingStatus {status})"
            raise RuntimeError(f"{node.name} ({iid}) {why}; check `aws ssm describe-instance-information`")
        self.online.add(iid)

    def prepare(self, node: Node, phase: str, storage: Storage, runner_key: str, runner_sha256: str, python: str = "python3") -> None:
        if not isinstance(storage, S3Storage):
            raise RuntimeError("the ssm executor needs storage: s3 (nodes fetch from the bucket)")
        self.ensure_online(node)
        full_key = f"{storage.prefix}/{runner_key}" if storage.prefix else runner_key
        self.boot[node.instance_id] = Bootstrap(storage.bucket, full_key, runner_sha256, python)

    def _output_prefix(self) -> str:
        assert isinstance(self.storage, S3Storage)
        return f"{self.storage.prefix}/ssm-output" if self.storage.prefix else "ssm-output"

    def run_step(self, node: Node, phase: str, args: list[str], timeout_s: float) -> StepOutcome:
        iid = node.instance_id
        boot = self.boot[iid]
        # The step's own budget, capped by aws.ssm.execution_timeout_s (SSM allows 1 s to 48 h).
        execution_timeout = max(60, min(self.execution_timeout_s, 172800, int(timeout_s)))
        script = build_script(self.node_dir(node, phase), boot, args, self.region)
        assert isinstance(self.storage, S3Storage)
        sent_at = self.clock()
        try:
            resp = self.ssm.send_command(
                InstanceIds=[iid],
                DocumentName="AWS-RunShellScript",
                Comment=f"disagglab {phase} {args[0]}"[:100],
                Parameters={"commands": [script], "executionTimeout": [str(execution_timeout)]},
                TimeoutSeconds=max(30, self.delivery_timeout_s),
                OutputS3BucketName=self.storage.bucket,
                OutputS3KeyPrefix=self._output_prefix(),
            )
        except Exception as exc:  # noqa: BLE001 - botocore already retried; the step never reached the node
            return StepOutcome(node.name, args[0], False, None, {"cause": f"{api_error('SendCommand', exc)}; {args[0]} on {node.name} ({iid}) was not sent"})
        command_id = resp["Command"]["CommandId"]
        self.sent.append(command_id)
        try:
            inv = self._wait(command_id, iid, execution_timeout)
        except BaseException as exc:
            self._cancel(command_id, iid)
            if isinstance(exc, Exception):  # API errors: a failed step; interrupts unwind
                return StepOutcome(node.name, args[0], False, None, {"cause": f"{exc}; command cancelled",
                                                                     "ssm": {"command_id": command_id, "instance_id": iid}})
            raise
        if inv is None:
            self._cancel(command_id, iid)
            return StepOutcome(node.name, args[0], False, None, {"cause": f"no final SSM status for {args[0]} on {node.name} ({iid}) after {execution_timeout + self.delivery_timeout_s} s; command cancelled"})
        stdout = self._full_stdout(command_id, iid, inv)
        code = inv.get("ResponseCode")
        outcome = parse_runner_output(node.name, args[0], code if inv["Status"] != "Success" else 0, stdout)
        if inv["Status"] != "Success":
            outcome.ok = False
            if not outcome.report.get("cause") or code in (137, -1) or inv["Status"] in ("TimedOut", "Cancelled"):
                elapsed = elapsed_seconds(inv.get("ExecutionElapsedTime"))
                elapsed = self.clock() - sent_at if elapsed is None else elapsed
                outcome.report["cause"] = describe_failure(node, iid, inv, execution_timeout, self.delivery_timeout_s, elapsed) + (
                    f": {outcome.report['cause']}" if outcome.report.get("cause") else "")
            stderr = inv.get("StandardErrorContent", "")
            if stderr and not outcome.report.get("log_tail"):
                outcome.report["log_tail"] = stderr.splitlines()[-20:]
        outcome.report["ssm"] = {"command_id": command_id, "instance_id": iid, "status": inv["Status"], "details": inv.get("StatusDetails")}
        return outcome

    def _wait(self, command_id: str, iid: str, execution_timeout: int) -> dict[str, Any] | None:
        start = self.clock()
        deadline = start + execution_timeout + self.delivery_timeout_s + 60
        delay = self.poll_initial_s
        while self.clock() < deadline:
            try:
                inv = self.ssm.get_command_invocation(CommandId=command_id, InstanceId=iid)
            except Exception as exc:  # noqa: BLE001 - generated botocore error classes
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                if code in THROTTLING:
                    delay = self.poll_max_s
                elif code != "InvocationDoesNotExist":
                    raise RuntimeError(f"{api_error('GetCommandInvocation', exc)} (command {command_id} on {iid})") from None
                elif self.clock() - start > self.invocation_grace_s:
                    raise RuntimeError(f"SSM has no invocation of command {command_id} on {iid} after {self.invocation_grace_s:g} s") from None
            else:
                if inv.get("Status") in TERMINAL:
                    return inv
            self.sleep(delay)
            delay = min(self.poll_max_s, delay * 1.5)
        return None

    def _cancel(self, command_id: str, iid: str) -> None:
        try:
            self.ssm.cancel_command(CommandId=command_id, InstanceIds=[iid])
        except Exception:  # noqa: BLE001, S110 - best effort; the stop step follows anyway
            pass

    def _full_stdout(self, command_id: str, iid: str, inv: dict[str, Any]) -> str:
        text = inv.get("StandardOutputContent", "") or ""
        if len(text.encode()) < INLINE_LIMIT and not text.endswith(TRUNCATION_MARK):
            return text
        assert isinstance(self.storage, S3Storage)
        key = stdout_key(self._output_prefix(), command_id, iid)
        try:
            obj = self.storage.client.get_object(Bucket=self.storage.bucket, Key=key)
        except Exception:  # noqa: BLE001 - keep the truncated text rather than fail the step
            return text
        return obj["Body"].read().decode(errors="replace")


def stdout_key(prefix: str, command_id: str, iid: str) -> str:
    """Where the agent uploads a command's full stdout (it skips empty streams)."""
    return f"{prefix}/{command_id}/{iid}/awsrunShellScript/0.awsrunShellScript/stdout"
