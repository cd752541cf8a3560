"""The run's time budget (``budget:`` in a recipe, ``lmforge run --budget 15m``): when the run must end, and how
much of what is left each training stage may use.

The pipeline starts the clock (:func:`start`) and reserves time for the stages that follow training (eval's
estimate, :func:`reserve`); a training stage asks :func:`allotted` how long it may train, and the trainer's
budget callback (``lmforge.engine.deadline``) fits its schedule into that. Without a budget every function
here answers None and nothing changes.

This module imports nothing of lmforge.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_duration(value: str | float | int) -> float:
    """Seconds in ``value``: a number of seconds, or ``15m``, ``1h30m``, ``90s``, ``1h 5m 30s``.

    Raises:
        ValueError: anything else (the recipe's validation names the key).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            match = DURATION.match(text)
            if not text or match is None or not any(match.groups()):
                raise ValueError(f"got {value!r}; expected a duration such as 15m, 1h30m, 90s or a number of seconds")
            hours, minutes, secs = (float(part) if part else 0.0 for part in match.groups())
            seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(f"got {value!r}; expected a duration above zero")
    return seconds


def shown(seconds: float) -> str:
    """``14m 05s`` / ``1h 02m`` / ``45s``."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Budget:
    seconds: float
    started: float
    reserved: dict[str, float] = field(default_factory=dict)
    """Seconds kept for a later stage (by name), which earlier stages may not use."""
    training_left: list[str] = field(default_factory=list)
    """Training stages still to run, in order: the time left for training is shared among them."""


_budget: Budget | None = None


def start(seconds: float | None, training_stages: list[str] | None = None) -> None:
    """Start the run's clock (None: no budget)."""
    global _budget
    _budget = Budget(seconds, time.monotonic(), training_left=list(training_stages or [])) if seconds else None


def stop() -> None:
    start(None)


def active() -> bool:
    return _budget is not None


def elapsed() -> float | None:
    return None if _budget is None else time.monotonic() - _budget.started


def remaining() -> float | None:
    """Seconds until the run must end (may be negative once over), or None without a budget."""
    return None if _budget is None else _budget.seconds - (time.monotonic() - _budget.started)


def reserve(stage: str, seconds: float) -> None:
    if _budget is not None:
        _budget.reserved[stage] = max(0.0, seconds)


def reserved(stage: str) -> float:
    return 0.0 if _budget is None else _budget.reserved.get(stage, 0.0)


def allotted(stage: str) -> float | None:
    """How long training stage ``stage`` may take: what is left, less the later stages' reserves, shared
    equally with the training stages still to run after it; None without a budget."""
    if _budget is None:
        return None
    left = remaining() or 0.0
    left -= sum(seconds for name, seconds in _budget.reserved.items() if name != stage)
    later = _budget.training_left[_budget.training_left.index(stage) + 1 :] if stage in _budget.training_left else []
    return max(0.0, left / (1 + len(later)))


def finished(stage: str) -> None:
    """A stage is done: its reserve and its place among the training stages are released."""
    if _budget is not None:
        _budget.reserved.pop(stage, None)
        if stage in _budget.training_left:
            _budget.training_left.remove(stage)


__all__ = ["active", "allotted", "elapsed", "finished", "parse_duration", "remaining", "reserve", "shown", "start"]
