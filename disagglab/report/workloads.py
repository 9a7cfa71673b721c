"""What a result was asked to serve, in words: its workload and its latency targets.

The answer section groups results by workload ("which configuration for *this* traffic") and
judges them against the plan's SLO, so both need a name a reader recognises and that is equal
exactly when the traffic is equal. A workload is the prompt and output lengths plus the plan's
`workload` object (absent for the default random prompts): the name spells every field of that
object, so two different workloads never share a name and the name itself can be the group key.
"""

from __future__ import annotations

from typing import Any

_SLO_LABELS = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2el_ms", "E2EL"))


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} {_value(v)}" for k, v in sorted(value.items())) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _fields(rest: dict[str, Any], used: tuple[str, ...]) -> list[str]:
    """'time_scale 2' for every field not already in the head; a file digest is left out (the file names it)."""
    return [f"{k} {_value(rest[k])}" for k in sorted(rest) if k not in used and not k.endswith("sha256")]


def _distribution(dist: Any) -> str:
    """'64', 'uniform 16-64', 'lognormal(mean 900, sigma 0.5)': a length distribution of the lengths kind."""
    if not isinstance(dist, dict):
        return _value(dist)
    kind = dist.get("distribution")
    if kind == "fixed" and "tokens" in dist:
        return str(dist["tokens"])
    if kind == "uniform" and {"min", "max"} <= dist.keys():
        return f"uniform {dist['min']}-{dist['max']}"
    if kind == "lognormal" and {"mean", "sigma"} <= dist.keys():
        return f"lognormal(mean {_value(dist['mean'])}, sigma {_value(dist['sigma'])})"
    return _value(dist)


def _kind_text(workload: dict[str, Any]) -> str:
    """'shared_prefix 768x2', 'trace sample.jsonl (mooncake), time_scale 2': the object, every field named."""
    kind = str(workload.get("kind", "random"))
    rest = {k: v for k, v in workload.items() if k != "kind"}
    used: tuple[str, ...] = ()
    head = kind
    if kind == "shared_prefix" and {"prefix_tokens", "num_prefixes"} <= rest.keys():
        head, used = f"shared_prefix {rest['prefix_tokens']}x{rest['num_prefixes']}", ("prefix_tokens", "num_prefixes")
    elif kind == "trace" and "file" in rest:
        head, used = f"trace {rest['file']}" + (f" ({rest['format']})" if "format" in rest else ""), ("file", "format")
    elif kind == "lengths" and {"input", "output"} <= rest.keys():
        head, used = f"lengths {_distribution(rest['input'])} in / {_distribution(rest['output'])} out", ("input", "output")
    return ", ".join([head, *_fields(rest, used)])


def workload_name(prompt_tokens: Any, max_tokens: Any, workload: dict[str, Any] | None) -> str:
    """'4000 in / 64 out', '4000 in / 64 out, shared_prefix 768x2': a name per distinct workload.

    A trace's requests carry their own input and output lengths (the pattern's prompt_tokens and
    max_tokens only bound them), so the trace alone names it. Drawn lengths are capped at
    prompt_tokens and max_tokens, which therefore stay in the name ('at most').
    """
    kind = (workload or {}).get("kind", "random")
    if workload is None or kind == "random":
        return f"{prompt_tokens} in / {max_tokens} out"
    if kind == "trace":
        return _kind_text(workload)
    if kind == "lengths":
        return f"{_kind_text(workload)}, at most {prompt_tokens} in / {max_tokens} out"
    return f"{prompt_tokens} in / {max_tokens} out, {_kind_text(workload)}"


def slo_text(slo: Any) -> str:
    """'TTFT <= 500 ms, TPOT <= 50 ms' for the plan's slo object; '' when the pattern has none."""
    if not isinstance(slo, dict) or not slo:
        return ""
    known = [f"{label} <= {_value(slo[key])} ms" for key, label in _SLO_LABELS if slo.get(key) is not None]
    other = [f"{key} <= {_value(slo[key])}" for key in sorted(slo) if key not in dict(_SLO_LABELS) and slo[key] is not None]
    return ", ".join(known + other)
