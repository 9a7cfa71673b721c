"""Shared-prefix prompts: each request is one of K shared prefixes plus a suffix of its own.

This is what a fleet serving a few system prompts sees, and what makes prefix caching pay.
The ids are exact (``/v1/completions`` token ids), drawn with the benchmark's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SharedPrefixPrompts:
    ids: np.ndarray
    """count x prompt_tokens token ids, row = request (warmup rows first)."""
    prefix_of: np.ndarray
    """Which prefix (0..K-1) each row starts with."""
    prefix_tokens: int


def shared_prefix_prompts(count: int, prompt_tokens: int, prefix_tokens: int, num_prefixes: int,
                          low: int, high: int, seed: int) -> SharedPrefixPrompts:
    """Rows of one drawn prefix followed by a suffix whose first token no other row has.

    The distinct first suffix token keeps two requests from sharing any block beyond their
    prefix, so the only reuse a cache can find is the one the workload states.
    """
    if not 1 <= prefix_tokens < prompt_tokens:
        raise ValueError(f"prefix_tokens must be in [1, prompt_tokens - 1], got {prefix_tokens} for {prompt_tokens}")
    if num_prefixes < 1 or high - low < count:
        raise ValueError("need at least one prefix and a token id range of at least one id per request")
    rng = np.random.default_rng(seed)
    prefixes = rng.integers(low, high, size=(num_prefixes, prefix_tokens))
    prefix_of = rng.integers(num_prefixes, size=count)
    ids = np.empty((count, prompt_tokens), dtype=np.int64)
    ids[:, :prefix_tokens] = prefixes[prefix_of]
    ids[:, prefix_tokens] = rng.choice(high - low, size=count, replace=False) + low
    ids[:, prefix_tokens + 1 :] = rng.integers(low, high, size=(count, prompt_tokens - prefix_tokens - 1))
    return SharedPrefixPrompts(ids=ids, prefix_of=prefix_of, prefix_tokens=prefix_tokens)


def expected_hit_tokens(prefix_of: np.ndarray, prefix_tokens: int, prompt_tokens: int, block_size: int) -> int:
    """Prompt tokens an ideal prefix cache (unbounded, requests one after another) would serve.

    A prefix hits from its second use on, in whole blocks only (vLLM caches full blocks), and
    never the whole prompt (vLLM recomputes at least the last token).
    """
    per_hit = min((prefix_tokens // block_size) * block_size, prompt_tokens - 1)
    seen: set[int] = set()
    hits = 0
    for k in prefix_of.tolist():
        if k in seen:
            hits += per_hit
        seen.add(k)
    return hits
