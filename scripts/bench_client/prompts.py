"""Prompts and request bodies, all built before the first request is sent.

Why up front: serialising long token lists at dispatch time would bill client
CPU to the server's latency and spread an offline batch over milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from .model import BenchConfig, RequestSpec

# Common English words that are a single token, with a leading space, in the
# usual BPE vocabularies. Used only for the chat endpoint, where a prompt must
# be text; the count is approximate by design (docs/node-programs.md, "Prompts").
_CHAT_WORDS_TEXT = """
    the of and to in is that for it as was with be by on not he this are or
    his from at which but have an had they you were their one all we can her
    has there been if more when will would who so no out up into than them
    only some time could new about two may then do first any like my now
    over such our man me even most made after also did many before must
    through back years where much your way well down should because each
    just those people how too little state good very make world still own
    see men work long get here between both life being under never day same
    another know while last might us great old year off come since against
    go came right used take three water house city river light table
"""
CHAT_WORDS: tuple[str, ...] = tuple(_CHAT_WORDS_TEXT.split())


def prompt_id_matrix(count: int, prompt_tokens: int, low: int, high: int, seed: int) -> np.ndarray:
    """``count`` x ``prompt_tokens`` token ids in [low, high), row = prompt.

    The first ids are drawn without replacement, so every prompt differs from
    every other one already in its first token: no request can reuse another
    one's KV blocks through prefix caching, which would fake a fast prefill.
    Deterministic for a given seed, so repeated runs send the same prompts.
    """
    if count < 0 or prompt_tokens < 1:
        raise ValueError("count must be >= 0 and prompt_tokens >= 1")
    if high - low < count:
        raise ValueError(f"token id range [{low}, {high}) has fewer than {count} ids: cannot give every request a distinct first token")
    rng = np.random.default_rng(seed)
    ids = np.empty((count, prompt_tokens), dtype=np.int64)
    ids[:, 0] = rng.choice(high - low, size=count, replace=False) + low
    ids[:, 1:] = rng.integers(low, high, size=(count, prompt_tokens - 1))
    return ids


def build_prompts(count: int, prompt_tokens: int, low: int, high: int, seed: int) -> list[list[int]]:
    """The prompts of ``prompt_id_matrix`` as lists of Python ints."""
    return prompt_id_matrix(count, prompt_tokens, low, high, seed).tolist()


def chat_text_from_ids(ids: Sequence[int]) -> str:
    """Render token ids as chat text: the first id as a number, then words.

    The leading number keeps the unique first id visible at the start of the
    user message, so chat prompts also differ right after the chat template.
    """
    words = [str(ids[0])]
    words.extend(CHAT_WORDS[i % len(CHAT_WORDS)] for i in ids[1:])
    return " ".join(words)


def completions_payload(model: str, prompt_ids: list[int], max_tokens: int) -> dict[str, Any]:
    """/v1/completions body as ``vllm bench serve`` (openai, --ignore-eos).

    Greedy, streamed with a final usage event, and ``ignore_eos`` so every
    request generates exactly ``max_tokens`` tokens: the server does the same
    work as under vLLM's own client.
    """
    return {
        "model": model,
        "prompt": prompt_ids,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


def chat_payload(model: str, prompt_ids: list[int], max_tokens: int) -> dict[str, Any]:
    """/v1/chat/completions body as vLLM's openai-chat backend.

    vLLM's chat client sends ``max_completion_tokens`` and the prompt as one
    text content part; the text is rendered from the ids.
    """
    text = chat_text_from_ids(prompt_ids)
    return {
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        "max_completion_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def build_specs(cfg: BenchConfig) -> tuple[list[RequestSpec], list[RequestSpec]]:
    """Warmup and measured request specs, indices 0..W-1 then W..W+N-1."""
    total = cfg.warmup_requests + cfg.num_requests
    ids = prompt_id_matrix(total, cfg.prompt_tokens, cfg.token_id_low, cfg.token_id_high, cfg.seed)
    make_payload = chat_payload if cfg.is_chat else completions_payload
    prefix = cfg.label or "bench"
    specs = []
    for i in range(total):
        row = ids[i].tolist()
        specs.append(
            RequestSpec(
                index=i,
                warmup=i < cfg.warmup_requests,
                request_id=f"{prefix}-{i}",
                prompt_tokens=len(row),
                first_token_id=row[0],
                body=_dumps(make_payload(cfg.model, row, cfg.max_tokens)),
            )
        )
    return specs[: cfg.warmup_requests], specs[cfg.warmup_requests :]
