"""Errors that carry a location, so a user can fix the input without reading a traceback."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one input file: where it is and why it is wrong."""

    file: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.reason}"


class InputError(Exception):
    """Bad user input (plan or config). Holds every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PlanError(InputError):
    """A plan file is invalid."""


class ConfigError(InputError):
    """A configuration file or value is invalid."""


class StepFailed(Exception):
    """A node-side step of a pattern failed; carries what the failure record needs."""

    def __init__(
        self,
        step: str,
        node: str,
        cause: str,
        exit_status: int | None = None,
        log_tail: list[str] | None = None,
    ):
        self.step = step
        self.node = node
        self.cause = cause
        self.exit_status = exit_status
        self.log_tail = log_tail or []
        super().__init__(f"step {step!r} on {node} failed: {cause}")


class Interrupted(BaseException):
    """SIGTERM/SIGINT reached the control process; unwinds through the stop steps.

    A BaseException, so no `except Exception` on the way can swallow it.
    """
