"""Waiting until a started server answers, and failing at once when it dies instead."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from task_runner import StepError

HEALTH_POLL_S = 0.05


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen[bytes], name: str, log: Path) -> float:
    """Poll url every 50 ms until it answers 200; fail at once if the process dies."""
    start = time.monotonic()
    last_error = "no answer yet"
    while True:
        code = proc.poll()
        if code is not None:
            raise StepError(f"{name} exited with status {code} before it became healthy", log, code)
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
                last_error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        if time.monotonic() - start > timeout_s:
            raise StepError(f"{name} not healthy at {url} after {timeout_s:g} s (last: {last_error})", log)
        time.sleep(HEALTH_POLL_S)
