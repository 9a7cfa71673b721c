"""Repeated trials of one pattern: their summary statistics and the aggregated result.

One run of a pattern is one sample. A pattern with `repeats: N` is measured N times, each
trial with its own servers and its own result file (results/<phase>/trials/<pattern>/<k>.json);
this module folds those trials into the pattern's result (results/<phase>/runs/<pattern>.json):
the headline metrics become the mean over trials, and `stats` holds, per metric, the standard
deviation, the coefficient of variation and a two-sided 95% Student t confidence interval of
the mean, so the report can refuse to call overlapping intervals a difference.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from disagglab.hashing import sha256_file

# Metrics whose interval the report shows (the `vllm bench serve` names of result keys).
HEADLINE_METRICS = (
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "mean_e2el_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
)
CONFIDENCE = 0.95
# Top-level keys of a trial result that describe the run rather than measure it.
NOT_MEASURED = {"schema_version", "trial"}


HEADLINE_THROUGHPUTS = ("request_throughput", "output_throughput", "total_token_throughput")


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)), -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_critical(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value t* with P(|T| <= t*) = confidence (bisection on the CDF)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    target = 1.0 - (1.0 - confidence) / 2.0
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """n, mean, sample standard deviation, coefficient of variation and the t-interval of the mean.

    With one value there is no spread to estimate: std, cv and the interval are None, which
    the report shows as "1 trial" rather than as a zero-width interval.
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = math.fsum(values) / n
    out: dict[str, Any] = {"n": n, "mean": mean, "std": None, "cv": None, "ci_low": None, "ci_high": None,
                           "confidence": confidence, "min": min(values), "max": max(values)}
    if n >= 2:
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        half = t_critical(n - 1, confidence) * std / math.sqrt(n)
        out.update(std=std, cv=std / abs(mean) if mean else None, ci_low=mean - half, ci_high=mean + half, t=t_critical(n - 1, confidence))
    return out


def intervals_overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool | None:
    """Do two (low, high) intervals overlap? None when either side has none (a single trial).

    The report calls a difference significant only when this is False: disjoint 95%
    intervals. That is stricter than a two-sample t-test, on purpose: overlap never passes.
    """
    if a is None or b is None:
        return None
    return not (a[1] < b[0] or b[1] < a[0])


def _measured_keys(trials: Sequence[dict[str, Any]]) -> list[str]:
    """Top-level numeric keys every trial has: the `vllm bench serve` metrics and counts."""
    def numeric(doc: dict[str, Any]) -> set[str]:
        return {k for k, v in doc.items() if isinstance(v, int | float) and not isinstance(v, bool) and k not in NOT_MEASURED}

    keys = numeric(trials[0])
    for doc in trials[1:]:
        keys &= numeric(doc)
    return sorted(keys)


def aggregate(trials: Sequence[dict[str, Any]], trial_files: Sequence[dict[str, str]]) -> dict[str, Any]:
    """The pattern's result from its trial results (in trial order).

    The first trial supplies what does not vary (description, spec, provenance of the first
    run); every numeric top-level metric becomes the mean over trials; `trials` lists each
    trial's file, sha256, run id, times, validity and metrics; `requests` holds every trial's
    requests, each tagged with its trial. The result is valid only when every trial is.
    """
    if not trials:
        raise ValueError("a pattern result needs at least one trial")
    ids = {t["pattern_id"] for t in trials}
    if len(ids) != 1:
        raise ValueError(f"trials of different patterns cannot be aggregated: {sorted(ids)}")
    result = copy.deepcopy(dict(trials[0]))
    result.pop("trial", None)
    keys = _measured_keys(trials)
    for key in keys:
        values = [t[key] for t in trials]
        mean = math.fsum(values) / len(values)
        result[key] = values[0] if all(v == values[0] for v in values) else mean
    result["repeats"] = len(trials)
    gpus = (result.get("per_gpu") or {}).get("gpus")
    if isinstance(gpus, int) and gpus > 0:  # per GPU of the mean, as the means above
        result["per_gpu"] = {"gpus": gpus, **{f"{k}_per_gpu": result[k] / gpus for k in HEADLINE_THROUGHPUTS if isinstance(result.get(k), int | float)}}
    result["stats"] = {key: summarize([float(t[key]) for t in trials]) for key in HEADLINE_METRICS if key in keys}
    result["trials"] = [
        {
            "trial": doc.get("trial", i + 1),
            "file": info["file"],
            "sha256": info["sha256"],
            "run_id": doc["provenance"]["run_id"],
            "started_at": doc.get("started_at"),
            "finished_at": doc.get("finished_at"),
            "valid": doc["validity"]["valid"],
            "metrics": {key: doc[key] for key in keys},
        }
        for i, (doc, info) in enumerate(zip(trials, trial_files))
    ]
    reasons = [f"trial {doc.get('trial', i + 1)}: {r}" for i, doc in enumerate(trials) for r in doc["validity"]["reasons"]]
    result["validity"] = {"valid": not reasons, "reasons": reasons if len(trials) > 1 else list(trials[0]["validity"]["reasons"])}
    result["started_at"] = min(t["started_at"] for t in trials if t.get("started_at")) if any(t.get("started_at") for t in trials) else None
    result["finished_at"] = max(t["finished_at"] for t in trials if t.get("finished_at")) if any(t.get("finished_at") for t in trials) else None
    result["requests"] = [{**req, "trial": doc.get("trial", i + 1)} for i, doc in enumerate(trials) for req in doc.get("requests", [])]
    return result


def aggregate_files(paths: Sequence[Path]) -> dict[str, Any]:
    """aggregate() over trial files, recording each file's sha256 as provenance."""
    docs, infos = [], []
    for path in paths:
        docs.append(json.loads(path.read_text()))
        infos.append({"file": str(path), "sha256": sha256_file(path)})
    order = sorted(range(len(docs)), key=lambda i: docs[i].get("trial", i + 1))
    return aggregate([docs[i] for i in order], [infos[i] for i in order])
