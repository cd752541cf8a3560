"""The ``data`` stage: read every source, convert to canonical records, account for each one, split.

Outputs in ``runs/<run>/data/``:

* ``splits/<split>.jsonl``: canonical records per split;
* ``rejects.jsonl``: every rejected input with its file, line and reason;
* ``stats.json``: per source, read = kept + deduplicated + filtered + rejected.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import Recipe
from lmforge.data.sources import RawItem, display_path, expand_source, read_items
from lmforge.errors import DataError
from lmforge.records import Record, chat_record, messages_problem, record_problem, text_record
from lmforge.rundir import StageDir, atomic_write_json, atomic_write_jsonl, fingerprint_data, fingerprint_files


@dataclass
class SourceStats:
    """Counts for one source; ``read == kept + deduplicated + filtered + rejected`` always."""

    read: int = 0
    kept: int = 0
    deduplicated: int = 0
    filtered: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    emitted: int = 0
    """Records written to the splits after the source's mixing weight (repeats or sampling)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "emitted": self.emitted,
            "deduplicated": self.deduplicated,
            "filtered": dict(self.filtered),
            "rejected": dict(self.rejected),
        }


@dataclass
class DataResult:
    splits: dict[str, int]
    stats_path: Path
    skipped: bool


def run(recipe: Recipe) -> DataResult:
    """Prepare the recipe's data; reuse the previous output when inputs and settings are unchanged."""
    stage = StageDir.open(recipe.run_path(), "data")
    files = {spec.path: expand_source(spec.path) for spec in recipe.data.sources}
    for spec_path, found in files.items():
        if not found:
            raise DataError("the source matches no file", path=spec_path, hint="check the path or glob")
    config = {"data": recipe.data.model_dump(mode="json"), "seed": recipe.seed}
    inputs = {"files": fingerprint_files([f for found in files.values() for f in found])}
    fingerprint = fingerprint_data([config, inputs])
    if stage.is_done(fingerprint):
        return DataResult(splits=stage.manifest["metrics"]["splits"], stats_path=stage.path("stats.json"), skipped=True)

    stage.start(fingerprint, config, inputs)
    by_split: dict[str, list[Record]] = {spec.split or "train": [] for spec in recipe.data.sources}
    rejects: list[dict[str, Any]] = []
    stats: dict[str, SourceStats] = {}
    seen: set[str] = set()
    for spec in recipe.data.sources:
        counts = stats.setdefault(spec.path, SourceStats())
        kept: list[Record] = []
        for file in files[spec.path]:
            shown = display_path(file, spec.path)
            for item in read_items(file, shown):
                counts.read += 1
                record, reason = to_record(item, spec.format, spec.domain, recipe.data.system_prompts)
                if record is None:
                    counts.rejected[reason] += 1
                    rejects.append({"source": {"path": item.path, "line": item.line}, "reason": reason})
                    continue
                if record["id"] in seen:
                    counts.deduplicated += 1
                    continue
                seen.add(record["id"])
                counts.kept += 1
                kept.append(record)
        mixed = apply_weight(kept, spec.weight, recipe.seed)
        counts.emitted = len(mixed)
        by_split.setdefault(spec.split or "train", []).extend(mixed)

    if recipe.data.val_fraction > 0 and by_split.get("train"):
        by_split["train"], by_split["val"] = split_off(by_split["train"], recipe.data.val_fraction, recipe.seed)

    outputs = {}
    for split, records in by_split.items():
        outputs[split] = str(stage.path("splits", f"{split}.jsonl"))
        atomic_write_jsonl(outputs[split], records)
    atomic_write_jsonl(stage.path("rejects.jsonl"), rejects)
    stats_doc = {"sources": {path: s.as_dict() for path, s in stats.items()}, "splits": _split_counts(by_split)}
    atomic_write_json(stage.path("stats.json"), stats_doc)
    totals = {key: sum(s.as_dict()[key] for s in stats.values()) for key in ("read", "kept", "deduplicated")}
    totals["rejected"] = sum(sum(s.rejected.values()) for s in stats.values())
    stage.finish({"splits": _split_counts(by_split), **totals}, outputs={"splits": outputs})
    return DataResult(splits=_split_counts(by_split), stats_path=stage.path("stats.json"), skipped=False)


def _split_counts(by_split: dict[str, list[Record]]) -> dict[str, int]:
    return {split: len(records) for split, records in sorted(by_split.items())}


def apply_weight(records: list[Record], weight: float, seed: int) -> list[Record]:
    """Repeat records ``int(weight)`` times and add a seeded sample for the fractional part."""
    whole = int(weight)
    extra = round(len(records) * (weight - whole))
    sample = random.Random(seed).sample(records, extra) if extra else []
    return records * whole + sample


def split_off(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Move a seeded ``fraction`` of records to a second list (at least one when fraction > 0)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    count = max(1, round(len(records) * fraction))
    held = set(order[:count])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def to_record(
    item: RawItem, fmt: str, domain: str | None, system_prompts: dict[str, str] | None = None
) -> tuple[Record | None, str]:
    """Convert one raw item to a canonical record (with its domain's system prompt), or return (None, reason)."""
    record, reason = _convert(item, fmt, domain)
    if record is not None and record["kind"] == "chat" and (system_prompts or {}).get(record.get("domain") or ""):
        messages = record["messages"]
        if messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompts[record["domain"]]}, *messages]
            record = chat_record(messages, record["source"], record["domain"], record.get("meta"))
    return record, reason


def _convert(item: RawItem, fmt: str, domain: str | None) -> tuple[Record | None, str]:
    if item.error:
        return None, item.error
    source = {"path": item.path, "line": item.line} if item.line else {"path": item.path}
    value = item.value
    if isinstance(value, str):
        if fmt not in ("auto", "text"):
            return None, f"a document cannot be read as format {fmt!r}"
        if not value.strip():
            return None, "empty document"
        return text_record(value.strip(), source, domain), ""
    if not isinstance(value, dict):
        return None, f"expected a JSON object, got {type(value).__name__}"
    if "kind" in value and "id" in value:
        problem = record_problem(value)
        if problem:
            return None, problem
        record = dict(value)
        record["domain"] = record.get("domain") or domain
        return record, ""
    if "messages" in value:
        problem = messages_problem(value["messages"])
        if problem:
            return None, problem
        return chat_record(value["messages"], source, value.get("domain") or domain, value.get("meta")), ""
    if "text" in value:
        if not isinstance(value["text"], str) or not value["text"].strip():
            return None, "empty 'text'"
        return text_record(value["text"], source, value.get("domain") or domain, value.get("meta")), ""
    return None, f"unrecognised record with keys {sorted(value)[:8]}; expected canonical, 'messages' or 'text'"
