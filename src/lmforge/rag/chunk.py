"""Split prepared ``text`` records into retrieval chunks that follow the document's structure.

A document is cut first at its Markdown headings (a chunk never spans two sections), then packed
paragraph by paragraph up to a token budget; a paragraph longer than the budget is cut between
sentences, a sentence longer than the budget between words. When a section needs several chunks,
each one starts with the last sentences of the previous one (up to ``overlap`` tokens), so a fact
cut at a boundary is still whole in one of them.

Every chunk keeps where it came from: the source path, the line it starts on (and the page, for
records that carry one) and its heading path (``Part II > Article 12 — Qualifying period``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lmforge.records import Record

TokenCounter = Callable[[str], int]

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=\S)")


def count_words(text: str) -> int:
    """A tokenizer-free token count (whitespace words); the index stage uses the embedder's tokenizer."""
    return len(text.split())


@dataclass(frozen=True)
class Chunk:
    """One retrievable passage and where it came from."""

    id: str
    """``<document key>#<n>``, e.g. ``articles/art-12.md#0``: stable while the document is unchanged."""
    doc_key: str
    """The document it belongs to: its source path (plus ``:<line>`` or ``:p<page>`` for a section record)."""
    path: str
    line: int
    """1-based line of the source file where the chunk starts."""
    page: int | None
    heading: str
    """Heading path, outermost first, joined with `` > ``; empty before the first heading."""
    text: str

    def search_text(self) -> str:
        """What is embedded and keyword-indexed: the heading path, then the text."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text

    def source(self) -> dict[str, Any]:
        """The source object of the retrieved-passage format."""
        source: dict[str, Any] = {"path": self.path, "line": self.line, "heading": self.heading}
        if self.page is not None:
            source["page"] = self.page
        return source


@dataclass
class _Unit:
    """A sentence (or a word window of a long one), the smallest piece a chunk is built from."""

    text: str
    line: int
    tokens: int
    block: int
    """Index of the paragraph it belongs to; units of one paragraph are joined with a space."""


def document_key(record: Record) -> str:
    """Identity of a document record: its path, plus its page and line, or line, when it is a section of a file."""
    source = record["source"]
    key = source["path"]
    if source.get("page") is not None:
        key += f":p{source['page']}"
        if source.get("line") is not None:  # one of several sections or lines of the page
            key += f":{source['line']}"
    elif source.get("line") not in (None, 1):
        key += f":{source['line']}"
    return key


def chunk_records(
    records: Iterable[Record], max_tokens: int, overlap: int, count_tokens: TokenCounter = count_words
) -> list[Chunk]:
    """Chunk every ``text`` record (other kinds are ignored)."""
    chunks: list[Chunk] = []
    for record in records:
        if record["kind"] == "text":
            chunks += chunk_document(record, max_tokens, overlap, count_tokens)
    return chunks


def chunk_document(
    record: Record, max_tokens: int, overlap: int, count_tokens: TokenCounter = count_words
) -> list[Chunk]:
    """Split one ``text`` record into chunks of at most ``max_tokens`` tokens (see the module docstring).

    Args:
        record: a canonical ``text`` record; ``source.line``/``source.page`` and a ``heading``
            in ``source`` or ``meta`` (set by a data stage that sections documents) are honoured.
        max_tokens: token budget per chunk, counted by ``count_tokens`` over its sentences.
        overlap: tokens of trailing sentences repeated at the start of the next chunk of a section.
        count_tokens: token counter; the index stage passes the embedding model's tokenizer.
    """
    if overlap >= max_tokens:
        raise ValueError(f"overlap ({overlap}) must be smaller than max_tokens ({max_tokens})")
    source = record["source"]
    outer = source.get("heading") or (record.get("meta") or {}).get("heading")
    key = document_key(record)
    chunks: list[Chunk] = []
    for headings, blocks in _sections(record["text"], int(source.get("line") or 1)):
        heading = " > ".join(merge_headings(outer.split(" > ") if outer else [], headings))
        units = _units(blocks, max_tokens, count_tokens)
        for group in _pack(units, max_tokens, overlap):
            chunks.append(
                Chunk(
                    id=f"{key}#{len(chunks)}",
                    doc_key=key,
                    path=source["path"],
                    line=group[0].line,
                    page=source.get("page"),
                    heading=heading,
                    text=_join(group),
                )
            )
    return chunks


def merge_headings(outer: list[str], inner: list[str]) -> list[str]:
    """Heading path of a section record (``outer``) joined with the headings inside its text.

    A data stage that sections documents keeps the heading line in the text, so the inner path
    often repeats the end of the outer one; the overlap is kept once.
    """
    for size in range(min(len(outer), len(inner)), 0, -1):
        if outer[-size:] == inner[:size]:
            return outer + inner[size:]
    return outer + inner


def _sections(text: str, first_line: int) -> list[tuple[list[str], list[tuple[int, str]]]]:
    """(heading path, paragraphs as (line, text)) for every section that has body text."""
    sections: list[tuple[list[str], list[tuple[int, str]]]] = []
    stack: list[tuple[int, str]] = []  # (level, title) of the open headings
    blocks: list[tuple[int, str]] = []
    paragraph: list[str] = []
    start = first_line

    def close_paragraph() -> None:
        if paragraph:
            blocks.append((start, "\n".join(paragraph)))
            paragraph.clear()

    def close_section() -> None:
        close_paragraph()
        if blocks:
            sections.append(([title for _, title in stack], list(blocks)))
            blocks.clear()

    for offset, raw in enumerate(text.splitlines()):
        line = raw.rstrip()
        heading = HEADING.match(line)
        if heading:
            close_section()
            level = len(heading.group(1))
            stack = [(lvl, title) for lvl, title in stack if lvl < level] + [(level, heading.group(2))]
        elif not line.strip():
            close_paragraph()
        else:
            if not paragraph:
                start = first_line + offset
            paragraph.append(line.strip())
    close_section()
    return sections


def _units(blocks: list[tuple[int, str]], max_tokens: int, count_tokens: TokenCounter) -> list[_Unit]:
    """Sentences of every paragraph, with the line each starts on; over-long sentences cut into word windows."""
    units: list[_Unit] = []
    for index, (line, block) in enumerate(blocks):
        position = 0
        for sentence in SENTENCE_END.split(block):
            found = block.find(sentence, position)
            position = found + len(sentence) if found >= 0 else position
            sentence_line = line + block.count("\n", 0, max(found, 0))
            text = " ".join(sentence.split())
            tokens = count_tokens(text)
            if tokens <= max_tokens:
                units.append(_Unit(text, sentence_line, tokens, index))
            else:
                units += [
                    _Unit(piece, sentence_line, n, index) for piece, n in _word_windows(text, max_tokens, count_tokens)
                ]
    return units


def _word_windows(text: str, max_tokens: int, count_tokens: TokenCounter) -> list[tuple[str, int]]:
    """Cut a sentence longer than the budget into runs of whole words that fit (a single huge word stays whole)."""
    pieces: list[tuple[str, int]] = []
    words: list[str] = []
    used = 0
    for word in text.split():
        size = count_tokens(word)
        if words and used + size > max_tokens:
            pieces.append((" ".join(words), used))
            words, used = [], 0
        words.append(word)
        used += size
    if words:
        pieces.append((" ".join(words), used))
    return pieces


def _pack(units: list[_Unit], max_tokens: int, overlap: int) -> list[list[_Unit]]:
    """Group units into chunks: whole paragraphs while they fit, else sentence by sentence, with overlap."""
    chunks: list[list[_Unit]] = []
    current: list[_Unit] = []
    fresh = 0  # units of `current` that are not carried over from the previous chunk
    by_block: dict[int, list[_Unit]] = {}
    for unit in units:
        by_block.setdefault(unit.block, []).append(unit)
    for block in by_block.values():
        block_tokens = sum(u.tokens for u in block)
        if _size(current) + block_tokens > max_tokens and fresh and block_tokens <= max_tokens:
            # Close at the paragraph boundary rather than cutting this paragraph.
            chunks.append(current)
            current = _tail(current, overlap)
            while current and _size(current) + block_tokens > max_tokens:
                current = current[1:]
            fresh = 0
        for unit in block:
            if current and _size(current) + unit.tokens > max_tokens:
                if fresh:
                    chunks.append(current)
                    current = _tail(current, overlap)
                    fresh = 0
                while current and _size(current) + unit.tokens > max_tokens:
                    current = current[1:]  # drop carried-over sentences until the new one fits
            current.append(unit)
            fresh += 1
    if fresh:
        chunks.append(current)
    return chunks


def _tail(units: list[_Unit], overlap: int) -> list[_Unit]:
    """The longest run of trailing units of at most ``overlap`` tokens, never the whole chunk."""
    tail: list[_Unit] = []
    for unit in reversed(units[1:]):
        if _size(tail) + unit.tokens > overlap:
            break
        tail.insert(0, unit)
    return tail


def _size(units: list[_Unit]) -> int:
    return sum(u.tokens for u in units)


def _join(units: list[_Unit]) -> str:
    """Sentences of one paragraph joined by a space, paragraphs by a blank line."""
    parts: list[str] = []
    for i, unit in enumerate(units):
        if i:
            parts.append(" " if unit.block == units[i - 1].block else "\n\n")
        parts.append(unit.text)
    return "".join(parts)
