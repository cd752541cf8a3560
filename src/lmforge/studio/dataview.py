"""What ``lmforge data inspect`` sees, as tables and chart data for the studio's data page.

The records are prepared in memory by the data stage's own code (:func:`lmforge.data.inspection.inspect_data`);
nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.studio.reach import Reach

HISTOGRAM_BINS = 20


@dataclass
class DataView:
    files: list[dict[str, Any]]
    """Per input file: kind, detected format, encoding, records read."""
    sources: list[dict[str, Any]]
    """Per source: read, kept, duplicates, filtered and rejected (with reasons)."""
    splits: list[dict[str, Any]]
    """Per split: chat and text records, token-length percentiles."""
    lengths: list[dict[str, Any]] = field(default_factory=list)
    """Token-length histogram: ``{"split", "tokens" (bin start), "records"}``."""
    rejects: list[dict[str, Any]] = field(default_factory=list)
    """Every rejected input: where (file:line) and why."""
    labels: list[list[tuple[str, str | None]]] = field(default_factory=list)
    """A few train examples as (text, "loss" or None) pieces: the tokens the loss sees."""


def inspect(target: str | Path, model: str | None = None, reach: Reach | None = None, examples: int = 2) -> DataView:
    """Inspect a recipe (its sources, model and chat template) or a data file or folder; with ``reach``, only
    one (and a recipe's sources) inside the folders the studio may read.

    Raises:
        ConfigError, DataError: as ``lmforge data inspect`` (a bad recipe, an unreadable file).
        ReachError: the target or a source lies outside ``reach``.
    """
    from lmforge.config import load_recipe
    from lmforge.data import clean, inspection
    from lmforge.models import load_tokenizer, resolve_model

    target = reach.check(target) if reach is not None else Path(target).expanduser()
    recipe = load_recipe(target) if target.suffix.lower() in (".yaml", ".yml") else None
    if recipe is not None and reach is not None:
        reach.check_recipe({"data": {"sources": [{"path": s.path} for s in recipe.data.sources]}}, target.parent)
    prepared, _ = inspection.inspect_data(target, recipe)
    ref = model or (recipe.model.ref if recipe else None)
    tokenizer = load_tokenizer(resolve_model(ref)) if ref else None
    files, sources = [], []
    for name, stats in prepared.stats.items():
        for file, report in stats.files.items():
            files.append(
                {
                    "file": file,
                    "kind": report["kind"],
                    "format": report.get("format") or "not recognised",
                    "encoding": report.get("encoding", ""),
                    "read": report["read"],
                }
            )
        counts = stats.as_dict()
        sources.append(
            {
                "source": Path(name).name,
                "read": counts["read"],
                "kept": counts["kept"],
                "duplicates": counts["deduplicated"],
                "filtered": inspection.reasons(counts["filtered"]),
                "rejected": inspection.reasons(counts["rejected"]),
            }
        )
    splits, lengths = [], []
    for split, records in sorted(prepared.splits.items()):
        chats = sum(r["kind"] == "chat" for r in records)
        row: dict[str, Any] = {"split": split, "chat": chats, "text": len(records) - chats}
        if tokenizer is not None and records:
            counts_per_record = clean.token_lengths(tokenizer, records)
            row.update(inspection.percentiles(counts_per_record))
            lengths += _histogram(split, counts_per_record)
        splits.append(row)
    rejects = [
        {
            "where": _where(reject),
            "reason": str(reject.get("reason", "")),
            "detail": str(reject.get("detail", ""))[:200],
        }
        for reject in prepared.rejects
    ]
    labels = []
    if tokenizer is not None and examples:
        train = prepared.splits.get("train") or next(iter(prepared.splits.values()), [])
        on_inputs = bool(recipe and recipe.sft.train_on_inputs)
        chats = [r for r in train if r["kind"] == "chat"]
        if recipe is not None and recipe.sft.template != "chat":
            from lmforge.engine.templates import install_template

            install_template(tokenizer, recipe.sft.template, chats, recipe.model.ref)
        labels = [_pieces(tokenizer, record["messages"], on_inputs) for record in chats[:examples]]
    return DataView(files, sources, splits, lengths, rejects, labels)


def _pieces(tokenizer: Any, messages: list[dict[str, str]], on_inputs: bool) -> list[tuple[str, str | None]]:
    """The rendered conversation cut where the loss starts and stops (sft's own labels), tagged ``loss``."""
    from lmforge.data.inspection import label_pieces
    from lmforge.engine.tokenize import tokenize_chat

    labels = tokenize_chat(tokenizer, messages, max_length=1 << 30, train_on_inputs=on_inputs).labels
    return [(text, "loss" if trained_on else None) for text, trained_on in label_pieces(tokenizer, messages, labels)]


def _histogram(split: str, counts: list[int]) -> list[dict[str, Any]]:
    """Records per token-length bin, at most HISTOGRAM_BINS bins from the shortest to the longest record."""
    if not counts:
        return []
    low, top = min(counts), max(counts)
    width = max(1, -(-(top - low + 1) // HISTOGRAM_BINS))
    bins = [0] * ((top - low) // width + 1)
    for count in counts:
        bins[(count - low) // width] += 1
    return [{"split": split, "tokens": low + i * width, "records": n} for i, n in enumerate(bins)]


def _where(reject: dict[str, Any]) -> str:
    source = reject.get("source") if isinstance(reject.get("source"), dict) else reject
    parts = [str(source.get("path") or source.get("file") or "")]
    for key in ("line", "row", "page"):
        if source.get(key) is not None:
            parts.append(str(source[key]))
    return ":".join(part for part in parts if part)
