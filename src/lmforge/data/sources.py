"""Expand recipe sources into files and read them into raw items with their location."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCUMENT_SUFFIXES = {".md", ".markdown", ".txt"}
DATASET_SUFFIXES = {".jsonl"}
SUPPORTED_SUFFIXES = DOCUMENT_SUFFIXES | DATASET_SUFFIXES


@dataclass
class RawItem:
    """One unit read from a file: a parsed JSON line or a whole document, or why it could not be read."""

    path: str
    line: int | None
    value: Any = None
    error: str | None = None


def expand_source(path: str) -> list[Path]:
    """Files named by a source: the file itself, a folder's supported files, or a glob's matches (sorted)."""
    if any(ch in path for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
    root = Path(path)
    if root.is_dir():
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
    return [root]


def display_path(file: Path, source_path: str) -> str:
    """A short, machine-independent name: relative to the source folder's parent when inside it."""
    root = Path(source_path)
    if any(ch in source_path for ch in "*?["):
        root = Path(source_path.split("*")[0].rstrip("/")).parent
    anchor = root.parent if root.is_dir() or root == file else root
    try:
        return str(file.relative_to(anchor))
    except ValueError:
        return file.name


def read_items(file: Path, shown: str) -> Iterator[RawItem]:
    """Yield the raw items of one file: JSON lines for datasets, one item per document."""
    suffix = file.suffix.lower()
    if suffix in DATASET_SUFFIXES:
        yield from _read_jsonl(file, shown)
    elif suffix in DOCUMENT_SUFFIXES:
        yield RawItem(path=shown, line=1, value=file.read_text(encoding="utf-8-sig", errors="replace"))
    else:
        yield RawItem(path=shown, line=None, error=f"unsupported file type {suffix!r}")


def _read_jsonl(file: Path, shown: str) -> Iterator[RawItem]:
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield RawItem(path=shown, line=number, error=f"invalid UTF-8 at byte {exc.start}")
                continue
            if not text.strip():
                continue
            try:
                yield RawItem(path=shown, line=number, value=json.loads(text))
            except json.JSONDecodeError as exc:
                yield RawItem(path=shown, line=number, error=f"invalid JSON: {exc.msg} (column {exc.colno})")
