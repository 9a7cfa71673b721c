"""The timing model's parameters (docs/node-programs.md, "Timing model").

Validated strictly at start-up: a typo in a profile must stop the server, not
skew every number it produces.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

TRANSPORTS = ("tcp", "efa")


@dataclass
class Profile:
    """The timing model; docs/node-programs.md says what each key means."""

    startup_s: float = 3.0
    prefill_tokens_per_s: float = 8000.0
    prefill_overhead_ms: float = 15.0
    decode_ms_per_step: float = 25.0
    decode_batch_slowdown: float = 0.04
    kv_bytes_per_token: int = 57344
    bandwidth_gbps: dict[str, float] = field(default_factory=lambda: {"tcp": 10.0, "efa": 100.0})
    transfer_overhead_ms: dict[str, float] = field(default_factory=lambda: {"tcp": 2.0, "efa": 0.3})
    tp_efficiency: float = 0.9
    kv_lease_s: float = 30.0
    default_max_model_len: int = 32768
    time_scale: float = 1.0

    def tp_speedup(self, tp_size: int) -> float:
        """How much faster a server on ``tp_size`` GPUs computes than one on a single GPU.

        The profile's rates are per GPU; each doubling of the GPUs keeps ``tp_efficiency`` of
        the ideal gain (all-reduce costs), so a tp2 server is 1.8x a tp1 one at 0.9 and a
        per-GPU comparison of tp1 and tp2 layouts is not skewed by a server that ignores its GPUs.
        """
        return tp_size * self.tp_efficiency ** math.log2(tp_size) if tp_size > 1 else 1.0

    def prefill_s(self, tokens: int, tp_size: int = 1) -> float:
        """Simulated seconds for one prefill step computing ``tokens`` tokens on ``tp_size`` GPUs."""
        compute = tokens / self.prefill_tokens_per_s / self.tp_speedup(tp_size)
        return (self.prefill_overhead_ms / 1000.0 + compute) * self.time_scale

    def decode_step_s(self, n_running: int, tp_size: int = 1) -> float:
        """Simulated seconds for one decode step over ``n_running`` sequences on ``tp_size`` GPUs."""
        factor = 1.0 + self.decode_batch_slowdown * max(n_running - 1, 0)
        return self.decode_ms_per_step / 1000.0 * factor / self.tp_speedup(tp_size) * self.time_scale


def _number(key: str, value: Any, *, positive: bool, integer: bool = False) -> float:
    """Validate one numeric profile value so a typo fails at startup, not mid-run."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"--profile-json: {key} must be a finite number, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"--profile-json: {key} must be an integer, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"--profile-json: {key} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return int(value) if integer else float(value)


_POSITIVE_KEYS = {
    "prefill_tokens_per_s",
    "tp_efficiency",
    "kv_bytes_per_token",
    "default_max_model_len",
    "kv_lease_s",
}
_INTEGER_KEYS = {"kv_bytes_per_token", "default_max_model_len"}


def parse_profile(text: str | None) -> Profile:
    """Build the effective profile from ``--profile-json`` (JSON text or ``@file``)."""
    profile = Profile()
    if text is None:
        return profile
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"--profile-json: cannot read {text[1:]}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--profile-json: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("--profile-json: must be a JSON object")
    known = {f for f in asdict(profile)}
    for key in data:
        if key not in known:
            raise ConfigError(f"--profile-json: unknown key {key!r} (known: {', '.join(sorted(known))})")
    for key, value in data.items():
        if key in ("bandwidth_gbps", "transfer_overhead_ms"):
            if not isinstance(value, dict):
                raise ConfigError(f"--profile-json: {key} must be an object keyed by transport")
            merged = dict(getattr(profile, key))
            for transport, number in value.items():
                if transport not in TRANSPORTS:
                    raise ConfigError(f"--profile-json: unknown transport {transport!r} in {key}")
                merged[transport] = _number(f"{key}.{transport}", number, positive=key == "bandwidth_gbps")
            setattr(profile, key, merged)
        else:
            setattr(
                profile,
                key,
                _number(
                    key,
                    value,
                    positive=key in _POSITIVE_KEYS,
                    integer=key in _INTEGER_KEYS,
                ),
            )
    if profile.tp_efficiency > 1:
        raise ConfigError(f"--profile-json: tp_efficiency must be <= 1 (a share of the ideal gain), got {profile.tp_efficiency!r}")
    return profile
