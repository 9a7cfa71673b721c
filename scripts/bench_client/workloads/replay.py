"""A trace's requests as prompts: shared hash ids become shared token blocks.

A Mooncake hash id names one 512-token block; two requests whose ids agree from the start
share that prefix. Each id is turned into the same token ids every time (seeded by the id),
and what the ids do not cover is a tail unique to the request, so the only reuse a prefix
cache can find is the one the trace records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .trace_file import MOONCAKE_BLOCK_TOKENS, TraceRequest


def _unique_tail(index: int, length: int, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """Tokens no other request's tail starts with: the index written in base (high - low)."""
    span = high - low
    head = [low + index % span, low + (index // span) % span]
    return np.concatenate([np.array(head[:length], dtype=np.int64), rng.integers(low, high, size=max(0, length - 2))])


def trace_prompts(requests: Sequence[TraceRequest], low: int, high: int, seed: int, first_index: int = 0) -> list[np.ndarray]:
    """Token ids of each request: its hash-id blocks, then its own tail, cut to input_tokens."""
    blocks: dict[int, np.ndarray] = {}
    rng = np.random.default_rng([seed, 3])
    prompts = []
    for i, req in enumerate(requests):
        parts = []
        for hid in req.hash_ids[: -(-req.input_tokens // MOONCAKE_BLOCK_TOKENS)]:
            if hid not in blocks:
                blocks[hid] = np.random.default_rng([seed, 4, hid]).integers(low, high, size=MOONCAKE_BLOCK_TOKENS)
            parts.append(blocks[hid])
        ids = np.concatenate(parts)[: req.input_tokens] if parts else np.empty(0, dtype=np.int64)
        if len(ids) < req.input_tokens:
            ids = np.concatenate([ids, _unique_tail(first_index + i, req.input_tokens - len(ids), low, high, rng)])
        prompts.append(ids)
    return prompts


def expected_trace_hits(requests: Sequence[TraceRequest], cache_block: int) -> int:
    """Prompt tokens an ideal prefix cache (unbounded, requests one after another) would serve.

    A block hits as far as an earlier request materialised it; the run stops at the first
    block that does not hit. As in vLLM, at least the last token is recomputed and hits
    count whole cache blocks.
    """
    seen: dict[int, int] = {}
    total = 0
    for req in requests:
        spans = [(hid, min(MOONCAKE_BLOCK_TOKENS, req.input_tokens - j * MOONCAKE_BLOCK_TOKENS))
                 for j, hid in enumerate(req.hash_ids) if req.input_tokens > j * MOONCAKE_BLOCK_TOKENS]
        hit = 0
        for hid, span in spans:
            got = min(seen.get(hid, 0), span)
            hit += got
            if got < span:
                break
        for hid, span in spans:
            seen[hid] = max(seen.get(hid, 0), span)
        total += (min(hit, req.input_tokens - 1) // cache_block) * cache_block
    return total
