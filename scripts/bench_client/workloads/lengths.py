"""Request lengths drawn from a stated distribution (workload kind `lengths`).

Real traffic is not one prompt length: a fixed length hides how a server batches a long
prompt behind short ones. Draws are seeded, rounded to whole tokens and capped at the
pattern's prompt_tokens / max_tokens (which size the servers); outputs are forced with
ignore_eos, so each request generates exactly its drawn length.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def draw_lengths(dist: dict[str, Any], count: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` lengths in [1, cap] from ``dist`` (fixed, uniform min..max, lognormal mean/sigma)."""
    kind = dist["distribution"]
    if kind == "fixed":
        values = np.full(count, dist["tokens"], dtype=np.int64)
    elif kind == "uniform":
        values = rng.integers(dist["min"], dist["max"] + 1, size=count)
    elif kind == "lognormal":
        sigma = float(dist["sigma"])
        mu = math.log(float(dist["mean"])) - sigma * sigma / 2  # so that the mean of the draws is `mean`
        values = np.rint(rng.lognormal(mu, sigma, size=count)).astype(np.int64)
    else:
        raise ValueError(f"unknown length distribution {kind!r}")
    return np.clip(values, 1, cap)


def clipped(dist: dict[str, Any], values: np.ndarray, cap: int) -> int:
    """How many draws the cap cut short (only a lognormal can reach past it)."""
    return int(np.count_nonzero(values == cap)) if dist["distribution"] == "lognormal" else 0


def workload_lengths(workload: dict[str, Any], count: int, prompt_cap: int, output_cap: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(input lengths, output lengths, a summary for the result) of ``count`` requests."""
    base = int(workload.get("seed", seed))
    inputs = draw_lengths(workload["input"], count, prompt_cap, np.random.default_rng([base, 1]))
    outputs = draw_lengths(workload["output"], count, output_cap, np.random.default_rng([base, 2]))
    summary = {
        "seed": base,
        "input_tokens": {"mean": float(inputs.mean()), "min": int(inputs.min()), "max": int(inputs.max()),
                         "at_cap": clipped(workload["input"], inputs, prompt_cap)},
        "output_tokens": {"mean": float(outputs.mean()), "min": int(outputs.min()), "max": int(outputs.max()),
                          "at_cap": clipped(workload["output"], outputs, output_cap)},
    }
    return inputs, outputs, summary
