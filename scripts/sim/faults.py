"""Test-only fault injection (docs/node-programs.md, "Fault injection").

Read from the environment only, never from a flag, so that no task definition
of a real run can carry a fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError


@dataclass
class Fault:
    """Test-only fault injection parsed from DISAGG_SIM_FAULT (docs/node-programs.md)."""

    crash_after: int | None = None
    slow_start_s: float | None = None
    never_healthy: bool = False
    hang_mid_stream: int | None = None
    http_500_from: int | None = None
    malformed_sse_from: int | None = None
    no_kv_params: bool = False
    ignore_kv_params: bool = False

    @property
    def active(self) -> bool:
        return self != Fault()


FAULT_USAGE = (
    "crash_after=N, slow_start=S, never_healthy, hang_mid_stream=N, http_500=N, malformed_sse=N, no_kv_params, ignore_kv_params"
)


def parse_fault(value: str | None) -> Fault:
    """Parse DISAGG_SIM_FAULT; anything unrecognised must stop startup loudly."""
    if not value:
        return Fault()
    name, sep, arg = value.partition("=")
    counted = {"crash_after": "crash_after", "hang_mid_stream": "hang_mid_stream",
               "http_500": "http_500_from", "malformed_sse": "malformed_sse_from"}
    if name in counted and sep and arg.isdigit() and (name == "crash_after" or int(arg) >= 1):
        return Fault(**{counted[name]: int(arg)})
    if name == "slow_start" and sep:
        try:
            seconds = float(arg)
        except ValueError:
            seconds = -1.0
        if seconds >= 0 and math.isfinite(seconds):
            return Fault(slow_start_s=seconds)
    if name in ("never_healthy", "no_kv_params", "ignore_kv_params") and not sep:
        return Fault(**{name: True})
    raise ConfigError(f"DISAGG_SIM_FAULT: unknown value {value!r} (supported: {FAULT_USAGE}; N >= 1 except crash_after)")
