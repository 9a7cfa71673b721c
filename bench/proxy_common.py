"""Helpers shared by the bench/proxy_* processes (they run as scripts; bench/ is on sys.path)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run_fast(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run on uvloop when it is importable (as vLLM's venvs have it), else stdlib."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
