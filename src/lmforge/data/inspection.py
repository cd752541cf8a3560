"""``lmforge data inspect``: what the data stage would make of a recipe's sources or of one path.

Nothing is written: the records are prepared in memory and summarised as rich renderables (per
file: kind, detected format, encoding and counts; per split: records and token-length percentiles;
optionally a few examples with the tokens that carry loss highlighted).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.config import DataSpec, Recipe
from lmforge.data import clean
from lmforge.data.stage import Prepared, prepare_records
from lmforge.records import Record

if TYPE_CHECKING:
    from rich.console import RenderableType
    from transformers import PreTrainedTokenizerBase

PERCENTILES = (50, 90, 99, 100)
LabelFn = Callable[["PreTrainedTokenizerBase", list[dict[str, str]]], list[int]]
"""Labels of one conversation, aligned with the tokens of its rendered chat template (-100: no loss)."""


def inspect_data(target: Path, recipe: Recipe | None) -> tuple[Prepared, DataSpec]:
    """Prepare (in memory) a recipe's data, or one file or folder with default settings."""
    if recipe is not None:
        return prepare_records(recipe.data, recipe.seed), recipe.data
    spec = DataSpec.model_validate({"sources": [{"path": str(target)}]})
    return prepare_records(spec, seed=0), spec


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank percentiles (p50, p90, p99, max) of token counts."""
    if not values:
        return {}
    ordered = sorted(values)
    return {f"p{p}": ordered[min(len(ordered) - 1, max(0, -(-p * len(ordered) // 100) - 1))] for p in PERCENTILES}


def files_table(prepared: Prepared) -> RenderableType:
    """One row per input file: what it is and what happened to its records (per source totals below).

    File names, encodings and reasons are escaped: a file named ``[bold]x[/bold].jsonl`` is shown as it is.
    """
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="inputs", title_justify="left")
    for column in ("file", "kind", "format", "encoding", "read"):
        table.add_column(column, justify="right" if column == "read" else "left")
    for name, stats in prepared.stats.items():
        for file, report in stats.files.items():
            fmt = escape(report["format"]) if report.get("format") else "[red]not recognised[/red]"
            cells = (file, report["kind"], report.get("encoding", ""))
            file_cell, kind, encoding = (escape(cell) for cell in cells)
            table.add_row(file_cell, kind, fmt, encoding, str(report["read"]))
        counts = stats.as_dict()
        summary = (
            f"kept {counts['kept']}, duplicates {counts['deduplicated']}, "
            f"filtered {reasons(counts['filtered'])}, rejected {reasons(counts['rejected'])}"
        )
        source = escape(Path(name).name)
        table.add_row(f"[bold]{source}[/bold]", "", escape(summary), "", f"[bold]{counts['read']}[/bold]")
    return table


def reasons(counts: dict[str, int]) -> str:
    """``3 (empty question 1, invalid JSON 2)``, or ``0``."""
    total = sum(counts.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) + ")"


def splits_table(prepared: Prepared, tokenizer: PreTrainedTokenizerBase | None) -> RenderableType:
    """Records per split and kind, and token-length percentiles when a tokenizer is given."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="splits" + (" (tokens after the chat template)" if tokenizer else ""), title_justify="left")
    table.add_column("split")
    table.add_column("chat", justify="right")
    table.add_column("text", justify="right")
    if tokenizer is not None:
        for p in PERCENTILES:
            table.add_column("max" if p == 100 else f"p{p}", justify="right")
    for split, records in sorted(prepared.splits.items()):
        chats = sum(r["kind"] == "chat" for r in records)
        row = [escape(split), str(chats), str(len(records) - chats)]
        if tokenizer is not None:
            row += [str(v) for v in percentiles(clean.token_lengths(tokenizer, records)).values()] or ["-"] * 4
        table.add_row(*row)
    return table


def labelled_examples(
    records: list[Record], tokenizer: PreTrainedTokenizerBase, labels_for: LabelFn, count: int
) -> list[RenderableType]:
    """Up to ``count`` chat examples as the model sees them: tokens with loss in bold green, the rest dim."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.text import Text

    panels = []
    for record in [r for r in records if r["kind"] == "chat"][:count]:
        labels = labels_for(tokenizer, record["messages"])
        text = Text()
        for piece, trained_on in label_pieces(tokenizer, record["messages"], labels):
            text.append(piece, style="bold green" if trained_on else "dim")
        trained = sum(label != -100 for label in labels)
        where = escape(_where(record["source"]))
        panels.append(Panel(text, title=f"{where}  ({trained}/{len(labels)} tokens carry loss)", title_align="left"))
    return panels


def label_pieces(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], labels: list[int]
) -> list[tuple[str, bool]]:
    """The rendered conversation cut into runs of text the loss sees (True) or not (False); ``labels`` are
    aligned with the rendered template's tokens. The pieces join back into the rendered text."""
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    offsets = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    pieces: list[tuple[str, bool]] = []

    def add(text: str, trained_on: bool) -> None:
        if not text:
            return
        if pieces and pieces[-1][1] == trained_on:
            pieces[-1] = (pieces[-1][0] + text, trained_on)
        else:
            pieces.append((text, trained_on))

    done = 0
    for (begin, end), label in zip(offsets, labels, strict=False):
        begin = max(begin, done)
        add(rendered[done:begin], False)
        add(rendered[begin:end], label != -100)
        done = max(done, end)
    add(rendered[done:], False)
    return pieces


def _where(source: dict[str, Any]) -> str:
    parts = [str(source.get("path"))]
    for key in ("page", "line", "row"):
        if key in source:
            parts.append(f"{key} {source[key]}")
    return ", ".join(parts)
