"""The stand-in's own exceptions, and the timeouts it must catch on any Python."""

from __future__ import annotations

import asyncio

# asyncio.TimeoutError is only an alias of TimeoutError from Python 3.11 on; nodes
# may run an older vLLM venv.
TIMEOUT_ERRORS = (TimeoutError, asyncio.TimeoutError)


class ConfigError(Exception):
    """A startup configuration problem; reported on stderr with exit status 2."""


class RequestError(Exception):
    """A client error turned into vLLM's JSON error body."""

    def __init__(self, message: str, status: int = 400, err_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.err_type = err_type
