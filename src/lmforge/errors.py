"""Typed exceptions. Library code raises these; only ``cli.py`` turns them into exit codes.

Every error says what was received, what was expected and, where it helps, how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass


class LmforgeError(Exception):
    """Base class of every error lmforge raises on purpose (exit code 1 in the CLI)."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One problem in a recipe: where it is, what was found and what was expected."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ConfigError(LmforgeError):
    """A recipe (or a ``--set`` override) is invalid. Lists every problem found, not just the first."""

    exit_code = 2

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = [f"{source}: {count}"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def refuse(source: str, problems: list[Problem]) -> None:
    """Raise one :class:`ConfigError` listing ``problems`` (a command's settings), if there are any."""
    if problems:
        raise ConfigError(source, problems)


class DataError(LmforgeError):
    """Bad input data. Carries the file and line where the problem is, and a hint on how to fix it."""

    exit_code = 2

    def __init__(self, message: str, path: str | None = None, line: int | None = None, hint: str | None = None):
        self.path = path
        self.line = line
        self.hint = hint
        where = f"{path}:{line}" if path and line else (path or "")
        text = f"{where}: {message}" if where else message
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class ModelError(LmforgeError):
    """A model reference cannot be resolved or loaded."""

    exit_code = 2


class StageError(LmforgeError):
    """A stage cannot run: a missing predecessor, an empty split, an impossible setting."""


class LaunchError(LmforgeError):
    """A multi-process job went wrong: a misconfigured launcher (inconsistent ranks, an unreachable or
    taken rendezvous port) or a process that failed; the message names the rank and what happened."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
