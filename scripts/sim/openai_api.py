"""The OpenAI wire format as vLLM speaks it: what a request asks for, what comes back.

Kept apart from the server so that the shapes of vLLM's bodies, frames and
errors can be compared with vLLM's in one place.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .engine import SimRequest
from .errors import RequestError

TOKEN_TEXT = " tok"


def error_body(message: str, err_type: str, status: int) -> dict[str, Any]:
    """vLLM's error JSON shape."""
    return {"error": {"message": message, "type": err_type, "param": None, "code": status}}


def error_response(message: str, err_type: str = "BadRequestError", status: int = 400) -> web.Response:
    """An HTTP error answer in vLLM's JSON shape."""
    return web.json_response(error_body(message, err_type, status), status=status)


def _count_text(text: Any) -> list[str]:
    """Whitespace words stand in for tokens: no tokenizer is available on CPU-only test nodes."""
    if not isinstance(text, str):
        raise RequestError("prompt must be a string or a list of token ids")
    return text.split()


def prompt_units(body: dict[str, Any], chat: bool) -> list[Any]:
    """The prompt as a list of "tokens" (ids, or words as the documented approximation)."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list")
        words: list[Any] = []
        for msg in messages:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, str):
                words.extend(content.split())
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        words.extend(part["text"].split())
        return words
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise RequestError("the sim accepts one prompt per request: a string or a list of token ids")
        return prompt
    if prompt is None:
        raise RequestError("prompt is required")
    return _count_text(prompt)


def requested_max_tokens(body: dict[str, Any], chat: bool, prompt_tokens: int, max_model_len: int) -> int:
    """vLLM defaults: 16 for completions, the rest of the context for chat."""
    value = body.get("max_completion_tokens") if chat else None
    if value is None:
        value = body.get("max_tokens")
    if value is None:
        return 16 if not chat else max(max_model_len - prompt_tokens, 1)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"max_tokens must be an integer, got {value!r}")
    if value < 1:
        raise RequestError(f"max_tokens must be at least 1, got {value}.")
    return value


def full_body(req: SimRequest, chat: bool, created: int, model: str, kv_out: dict[str, Any] | None) -> dict[str, Any]:
    """The non-streaming response; P's answer carries kv_transfer_params at top level."""
    text = TOKEN_TEXT * req.generated
    usage = {
        "prompt_tokens": req.prompt_tokens,
        "total_tokens": req.prompt_tokens + req.generated,
        "completion_tokens": req.generated,
        "prompt_tokens_details": None,
    }
    if chat:
        choice = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": text,
                "reasoning_content": None,
                "tool_calls": [],
            },
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
        }
        return {
            "id": req.request_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
            "prompt_logprobs": None,
            "kv_transfer_params": kv_out,
        }
    choice = {
        "index": 0,
        "text": text,
        "logprobs": None,
        "finish_reason": "length",
        "stop_reason": None,
        "prompt_logprobs": None,
    }
    return {
        "id": req.request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage,
        "kv_transfer_params": kv_out,
    }


def sse_frames(req: SimRequest, chat: bool, created: int, model: str) -> tuple[bytes, bytes, bytes]:
    """Pre-serialised SSE frames (middle token, last token, chat role) - one dumps per request."""
    head = {
        "id": req.request_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
    }

    def frame(choice: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n"

    def token_choice(finish: str | None) -> dict[str, Any]:
        if chat:
            return {
                "index": 0,
                "delta": {"content": TOKEN_TEXT},
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
        return {
            "index": 0,
            "text": TOKEN_TEXT,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }

    role = (
        frame(
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        )
        if chat
        else b""
    )
    return frame(token_choice(None)), frame(token_choice("length")), role
