"""Plays the SSM agent for moto's in-process SSM backend (moto never runs commands).

It picks up each command sent to moto, marks the invocation InProgress, runs the script
for real the way the agent does (`sh -c <script file>`), then records status, exit code,
truncated inline output and the full stdout in the S3 output prefix, exactly as the
reference describes the agent. Modes let a test ask for what moto cannot produce.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.ssm.models import ssm_backends

INLINE_STDOUT = 24000
INLINE_STDERR = 8000
MARK = "--output truncated--"


def truncate(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) < limit:
        return text
    return data[: limit - len(MARK)].decode(errors="ignore") + MARK


@dataclass
class FakeAgent:
    region: str
    s3: Any
    env: dict[str, str]
    mode: str = "run"
    """run | fail:<code> | timeout-exec | timeout-delivery | cancelled | hide:<seconds> | truncate"""
    handled: set[str] = field(default_factory=set)
    scripts: list[str] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def backend(self):
        return ssm_backends[DEFAULT_ACCOUNT_ID][self.region]

    def __enter__(self) -> FakeAgent:
        # Commands sent before this agent existed belong to earlier tests: never run them again.
        self.handled.update(c.command_id for c in self.backend()._commands)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            for command in list(self.backend()._commands):
                if command.command_id in self.handled:
                    continue
                self.handled.add(command.command_id)
                hidden = list(command.invocations)
                if self.mode.startswith("hide:"):
                    command.invocations.clear()  # the InvocationDoesNotExist race
                threading.Thread(target=self._run, args=(command, hidden), daemon=True).start()
            time.sleep(0.02)

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
            code, out, err = self._execute(script)
            if self.mode.startswith("fail:"):
                code = int(self.mode.split(":", 1)[1])
            if self.mode == "timeout-exec":
                code = 137
            if self.mode == "truncate":
                out = "x" * 30000 + "\n" + out
            status = "Success" if code == 0 else ("TimedOut" if code == 137 else "Failed")
            details = {"Success": "Success", "Failed": "Failed", "TimedOut": "Execution Timed Out"}[status]
            if out:
                key = f"{command.output_s3_key_prefix}/{command.command_id}/{inv['InstanceId']}/awsrunShellScript/0.awsrunShellScript/stdout"
                self.s3.put_object(Bucket=command.output_s3_bucket_name, Key=key, Body=out.encode())
            inv.update(Status=status, StatusDetails=details, ResponseCode=code,
                       StandardOutputContent=truncate(out, INLINE_STDOUT), StandardErrorContent=truncate(err, INLINE_STDERR))

    def _execute(self, script: str) -> tuple[int, str, str]:
        with tempfile.NamedTemporaryFile("w", suffix="_script.sh", delete=False) as fh:
            fh.write(script)
        os.chmod(fh.name, 0o700)
        try:
            proc = subprocess.run(["sh", "-c", fh.name], capture_output=True, text=True, env=self.env, timeout=600, check=False)
            return proc.returncode, proc.stdout, proc.stderr
        finally:
            os.unlink(fh.name)
