"""What the synth tasks make before it becomes records: items, the tally of what was rejected, where a chunk is from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lmforge.records import Record


@dataclass
class Item:
    """One synthesized example before it becomes a record."""

    user: str
    assistant: str
    origin: Record
    kind: str = "original"
    """``original``, ``paraphrase``, ``answer``, ``fact`` (a question answered by a listed fact) or ``relation``."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tally:
    rejected: Counter = field(default_factory=Counter)
    filtered: Counter = field(default_factory=Counter)
    repaired: int = 0
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, phase: str, origin: Record, reason: str, raw: str | None) -> None:
        short = reason.split(":")[0]
        self.rejected[f"{phase}: {short}"] += 1
        self.rejects.append({"phase": phase, "source": origin.get("source"), "reason": reason, "raw": raw})


def where(record: Record) -> str:
    source = record.get("source") or {}
    return f"{source.get('path', '?')}" + (f", line {source['line']}" if source.get("line") else "")
