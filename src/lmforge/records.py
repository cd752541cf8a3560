"""Canonical records: the one format every stage hands to the next (see DESIGN.md).

A record is a plain dict, one per JSON line::

    {"id": "<sha1>", "source": {"path": "qa/train.jsonl", "line": 3}, "domain": "pensions",
     "kind": "chat", "messages": [{"role": "user", "content": "..."}, ...], "meta": {...}}
    {"id": "<sha1>", "source": {...}, "domain": "pensions", "kind": "text", "text": "..."}

Plain dicts (not objects) because records stream through JSON Lines by the million; the shape is
checked by :func:`validate_record` at every hand-off.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypedDict

from lmforge.errors import DataError

ROLES = ("system", "user", "assistant")


class Source(TypedDict, total=False):
    path: str
    line: int
    page: int


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class Record(TypedDict, total=False):
    id: str
    source: Source
    domain: str | None
    kind: Literal["chat", "text"]
    messages: list[Message]
    text: str
    meta: dict[str, Any]


def record_id(kind: str, body: Any) -> str:
    """Content id: sha1 of the kind and the content (messages or text), so equal content gets equal ids."""
    payload = json.dumps([kind, body], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def chat_record(
    messages: list[Message], source: Source, domain: str | None = None, meta: dict[str, Any] | None = None
) -> Record:
    """Build a ``chat`` record with its content id."""
    record: Record = {
        "id": record_id("chat", messages),
        "source": source,
        "domain": domain,
        "kind": "chat",
        "messages": messages,
    }
    if meta:
        record["meta"] = meta
    return record


def text_record(text: str, source: Source, domain: str | None = None, meta: dict[str, Any] | None = None) -> Record:
    """Build a ``text`` record with its content id."""
    record: Record = {"id": record_id("text", text), "source": source, "domain": domain, "kind": "text", "text": text}
    if meta:
        record["meta"] = meta
    return record


def record_problem(record: Any) -> str | None:
    """Why ``record`` is not a valid canonical record, or None if it is."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    allowed = {"id", "source", "domain", "kind", "messages", "text", "meta"}
    unknown = sorted(set(record) - allowed)
    if unknown:
        return f"unknown keys {unknown}; a canonical record has {sorted(allowed)}"
    if not isinstance(record.get("id"), str) or not record["id"]:
        return "missing 'id' (a non-empty string)"
    source = record.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("path"), str):
        return "'source' must be an object with a 'path' string"
    if record.get("domain") is not None and not isinstance(record["domain"], str):
        return f"'domain' must be a string or null, got {type(record['domain']).__name__}"
    if "meta" in record and not isinstance(record["meta"], dict):
        return "'meta' must be an object"
    kind = record.get("kind")
    if kind == "text":
        if not isinstance(record.get("text"), str) or not record["text"].strip():
            return "a 'text' record needs a non-empty 'text' string"
        return None
    if kind != "chat":
        return f"'kind' must be 'chat' or 'text', got {kind!r}"
    return messages_problem(record.get("messages"))


def messages_problem(messages: Any) -> str | None:
    """Why ``messages`` is not a valid conversation, or None if it is."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return f"messages[{i}] must be an object with exactly 'role' and 'content'"
        if message["role"] not in ROLES:
            return f"messages[{i}].role is {message['role']!r}; expected one of {list(ROLES)}"
        if not isinstance(message["content"], str):
            return f"messages[{i}].content must be a string, got {type(message['content']).__name__}"
    if not any(m["role"] == "assistant" for m in messages):
        return "a chat record needs at least one assistant message"
    return None


def validate_record(record: Any, path: str | None = None, line: int | None = None) -> Record:
    """Return ``record`` if it is canonical, else raise DataError naming the file and line."""
    problem = record_problem(record)
    if problem:
        raise DataError(f"not a canonical record: {problem}", path=path, line=line)
    return record


def read_records(path: str | Path) -> Iterator[Record]:
    """Stream canonical records from a JSONL file, validating each one."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", path=str(path), line=number) from None
            yield validate_record(record, path=str(path), line=number)


def dumps_record(record: Record) -> str:
    """One JSON line (no trailing newline)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def count_by_kind(records: Iterable[Record]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record["kind"]] = counts.get(record["kind"], 0) + 1
    return counts
