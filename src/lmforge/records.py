"""Canonical records: the one format every stage hands to the next (see DESIGN.md).

A record is a plain dict, one per JSON line::

    {"id": "<sha1>", "source": {"path": "qa/train.jsonl", "line": 3}, "domain": "pensions",
     "kind": "chat", "messages": [{"role": "user", "content": "..."}, ...], "meta": {...}}
    {"id": "<sha1>", "source": {...}, "domain": "pensions", "kind": "text", "text": "..."}

Plain dicts (not objects) because records stream through JSON Lines by the million; the shape is
checked by :func:`validate_record` at every hand-off.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypedDict

from lmforge.errors import DataError

ROLES = ("system", "user", "assistant")


class Source(TypedDict, total=False):
    """Where a record came from; only ``path`` is required, the rest where the reader knows it."""

    path: str
    """Input file (shown relative to the source folder), or ``hf://org/name`` for a hub dataset."""
    line: int
    """1-based line (Markdown, text, HTML, JSON Lines, CSV, JSON), paragraph number (DOCX), or line
    within the page (PDF with ``unit: line``)."""
    page: int
    """1-based PDF page."""
    row: int
    """1-based row of a Parquet file, a saved or hub dataset, or a columnar JSON object."""
    heading: str
    """Headings above a document section, outermost first: ``Chapter 2 > Article 12``."""


SOURCE_POSITIONS = ("line", "page", "row")
"""Keys of :class:`Source` that hold 1-based integers."""


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
    # surrogatepass: a lone surrogate (which the data stage rejects before it builds a record) still hashes
    return hashlib.sha1(payload.encode("utf-8", errors="surrogatepass")).hexdigest()


def json_safe(value: Any) -> Any:
    """``value`` with JSON types only, so that ``json.dumps(value, allow_nan=False)`` cannot fail.

    Readers such as Parquet hand over dates, times, bytes and decimals, and JSON itself has ``NaN``:

    * dates and times (anything with ``isoformat``) become ISO 8601 strings;
    * bytes become base64 strings, ``Decimal`` its exact string (``"12.50"``), other objects ``str(value)``;
    * NaN and ±Infinity become None (JSON has no such numbers); tuples become lists;
    * dictionary keys become strings.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key if isinstance(key, str) else str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def content_id(record: Record) -> str:
    """A record's id from its content: its text, or its messages and, for a preference pair, its rejected
    answer (``meta.rejected``), so that pairs sharing a chosen answer are different records."""
    if record["kind"] == "text":
        return record_id("text", record["text"])
    rejected = (record.get("meta") or {}).get("rejected")
    return record_id("chat", [record["messages"], rejected] if isinstance(rejected, str) else record["messages"])


def chat_record(
    messages: list[Message], source: Source, domain: str | None = None, meta: dict[str, Any] | None = None
) -> Record:
    """Build a ``chat`` record with its content id (:func:`content_id`)."""
    record: Record = {"id": "", "source": source, "domain": domain, "kind": "chat", "messages": messages}
    if meta:
        record["meta"] = json_safe(meta)
    record["id"] = content_id(record)
    return record


def text_record(text: str, source: Source, domain: str | None = None, meta: dict[str, Any] | None = None) -> Record:
    """Build a ``text`` record with its content id."""
    record: Record = {"id": record_id("text", text), "source": source, "domain": domain, "kind": "text", "text": text}
    if meta:
        record["meta"] = json_safe(meta)
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
    source_error = source_problem(record.get("source"))
    if source_error:
        return source_error
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


def source_problem(source: Any) -> str | None:
    """Why ``source`` is not a valid :class:`Source`, or None if it is."""
    if not isinstance(source, dict) or not isinstance(source.get("path"), str):
        return "'source' must be an object with a 'path' string"
    allowed = set(Source.__annotations__)
    unknown = sorted(set(source) - allowed)
    if unknown:
        return f"unknown keys {unknown} in 'source'; it has {sorted(allowed)}"
    for key in SOURCE_POSITIONS:
        value = source.get(key)
        # bool is an int subclass; true/false is not a position.
        if key in source and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"'source.{key}' must be a whole number from 1, got {value!r}"
    if "heading" in source and not isinstance(source["heading"], str):
        return f"'source.heading' must be a string, got {type(source['heading']).__name__}"
    return None


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
    for number, record in read_json_lines(path):
        yield validate_record(record, path=str(path), line=number)


def read_json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for each non-blank line of a JSON Lines file.

    Raises:
        DataError: at the first line that is not valid JSON, with the file and line.
    """
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", path=str(path), line=number) from None
            yield number, value


def dumps_record(record: Record) -> str:
    """One JSON line (no trailing newline)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------- retrieved context

CONTEXT_INSTRUCTION = "Answer with the passages above: quote the passage you use and cite its number, e.g. [1]."
"""Last line of a question asked with retrieved passages (see :func:`context_messages`)."""

CITATION = re.compile(r"\[(\d{1,3})\]")


def context_messages(messages: list[Message], passages: list[dict[str, Any]]) -> list[Message]:
    """The conversation with retrieved passages put into its last user turn, each under its number.

    The one place that formats retrieved context, so evaluation, ``lmforge ask``, serving and the
    RAFT training data cannot drift apart. The last user message becomes::

        Passages:

        [1] <heading (or path) of passage 1>
        <text of passage 1>

        [2] ...

        Question: <the original question>
        Answer with the passages above: quote the passage you use and cite its number, e.g. [1].

    Args:
        messages: a conversation ending with (or containing) a user turn; earlier turns and the
            system prompt are kept as they are.
        passages: retrieved passages, best first, each with ``text`` and a ``source`` (``heading``,
            ``path``), as in ``runs/<run>/index/retrieved/<split>.jsonl``. Numbers are positions from 1.

    Returns:
        A new list; with no passages, a copy of ``messages``.
    """
    copied: list[Message] = [Message(role=m["role"], content=m["content"]) for m in messages]
    if not passages:
        return copied
    users = [i for i, m in enumerate(copied) if m["role"] == "user"]
    if not users:
        raise ValueError("context_messages needs a conversation with a user turn to attach the passages to")
    blocks = []
    for number, passage in enumerate(passages, start=1):
        source = passage.get("source") or {}
        title = source.get("heading") or source.get("path") or passage.get("id", "")
        blocks.append(f"[{number}] {title}\n{passage['text'].strip()}")
    question = copied[users[-1]]["content"].strip()
    content = "Passages:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}\n{CONTEXT_INSTRUCTION}"
    copied[users[-1]] = Message(role="user", content=content)
    return copied


def reasked(content: str, question: str) -> str | None:
    """A user turn written by :func:`context_messages` with its question replaced by ``question`` (the same
    passages and instruction); None when ``content`` is not such a turn."""
    passages, _, asked = content.rpartition("\n\nQuestion: ")
    tail = f"\n{CONTEXT_INSTRUCTION}"
    if not passages.startswith("Passages:") or not asked.endswith(tail):
        return None
    return f"{passages}\n\nQuestion: {question.strip()}{tail}"


SHORT_ANSWER_WORDS = 10
"""A reply of at most this many words counts as a short answer when the record has no ``meta.answer``."""


def short_answer(record: Record) -> str | None:
    """The short gold answer of a QA record, as eval's ``qa`` task checks replies against it: ``meta.answer``, else
    the last assistant reply when it has at most :data:`SHORT_ANSWER_WORDS` words (question/answer files whose
    answer column is the short answer); None otherwise."""
    meta = record.get("meta") or {}
    answer = meta.get("answer")
    if isinstance(answer, (str, int, float)) and not isinstance(answer, bool) and str(answer).strip():
        return str(answer).strip()
    replies = [m["content"] for m in record.get("messages", []) if m["role"] == "assistant"]
    reply = replies[-1].strip() if replies else ""
    return reply if reply and len(reply.split()) <= SHORT_ANSWER_WORDS else None


def invented_citation(reply: str, passages_shown: int) -> bool:
    """Whether ``reply`` cites a passage number ``[n]`` its prompt did not hold (any, with no passages)."""
    return any(not 1 <= int(match.group(1)) <= passages_shown for match in CITATION.finditer(reply))


def cited_passages(reply: str, passages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The passages a reply cites as ``[n]`` (numbers as given by :func:`context_messages`), in citation order."""
    cited: list[dict[str, Any]] = []
    for match in CITATION.finditer(reply):
        number = int(match.group(1))
        if 1 <= number <= len(passages) and passages[number - 1] not in cited:
            cited.append(passages[number - 1])
    return cited
