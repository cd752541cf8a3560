"""Dataset rows in the formats people have -> canonical records (see ``records.py``).

Formats (the TRL vocabulary where there is one):

==================  ==============================================================  ========
format              row                                                             kind
==================  ==============================================================  ========
canonical           ``{"id", "kind", "source", "messages"|"text", ...}``             as is
messages            ``{"messages": [{"role", "content"}, ...]}`` (OpenAI)            chat
sharegpt            ``{"conversations": [{"from": "human"|"gpt", "value"}, ...]}``  chat
alpaca              ``{"instruction", "input"?, "output", "system"?}``              chat
qa                  ``{"question", "answer"}``                                      chat
prompt_response     ``{"prompt", "response"}``                                      chat
prompt_completion   ``{"prompt", "completion"}`` (strings or message lists)         chat
preference          ``{"prompt", "chosen", "rejected"}`` (strings or message lists)  chat
preference_implicit ``{"chosen", "rejected"}``: whole conversations, same prompt turns  chat
kto                 ``{"prompt", "completion", "label"}`` (label true or false)      chat
text                ``{"text"}``, or a document section                             text
columns             any row, through the source's explicit ``columns`` mapping      either
==================  ==============================================================  ========

``auto`` picks one format per file: the most common match among its first rows. A row that does
not fit its file's format is rejected with the field it lacks. Field names match case-insensitively;
``meta`` (an object) and ``domain`` (a string) are carried over when a row has them, and a ``source``,
``document`` or ``doc`` column (a string naming the row's document) goes into ``meta``.

Preference rows become chat records too: the prompt turns and the *chosen* answer as the conversation
(what sft trains on), the rejected answer as ``meta.rejected`` (a string) and a KTO row's verdict as
``meta.label``; a pair's id covers its rejected answer, so pairs that share a chosen answer stay apart.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from decimal import Decimal
from typing import Any

from lmforge.config import ColumnMap
from lmforge.records import Message, Record, chat_record, content_id, json_safe, record_problem, text_record

DETECT_ROWS = 50
MAX_DEPTH = 100
"""Deepest nesting of lists and objects in a row's ``meta`` (or a canonical row); real ones have a few levels."""
_SURROGATE = re.compile("[\ud800-\udfff]")

FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "preference_implicit": ("chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "qa": ("question", "answer"),
    "prompt_completion": ("prompt", "completion"),
    "prompt_response": ("prompt", "response"),
    "text": ("text",),
}
"""Keys that identify each format, in the order they are tried."""

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
}


class Rejected(Exception):
    """A row that cannot become a record: ``reason`` is its category, ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def detect_format(values: list[Any]) -> str | None:
    """The most common format among the first dict rows, or None when none of them matches one."""
    votes: Counter[str] = Counter()
    for value in values[:DETECT_ROWS]:
        if isinstance(value, dict):
            fmt = row_format(value)
            if fmt:
                votes[fmt] += 1
    return votes.most_common(1)[0][0] if votes else None


def row_format(row: dict[str, Any]) -> str | None:
    """The format one row matches, or None."""
    if "kind" in row and "id" in row:
        return "canonical"
    lowered = {str(k).lower(): v for k, v in row.items()}
    for fmt, needed in FORMAT_KEYS.items():
        if fmt == "kto" and not isinstance(lowered.get("label"), bool):
            continue  # a prompt/completion row with some other label (a class name) is a plain pair
        if all(key in lowered for key in needed):
            return fmt
    return None


def to_record(value: Any, fmt: str, columns: ColumnMap | None, source: dict[str, Any], domain: str | None) -> Record:
    """Convert one row (or one document section, a string) to a canonical record.

    ``source`` is the location as the readers make it (printable). A canonical row's own ``source``
    and ``meta`` are checked like the rest of it.

    Raises:
        Rejected: the row does not fit ``fmt`` (missing field, wrong type, bad conversation), holds text
            that is not Unicode (a lone surrogate), or nests its ``meta`` more than ``MAX_DEPTH`` deep.
    """
    if isinstance(value, str) or fmt == "canonical":
        problem = value_problem(value)
        if problem:
            raise Rejected(*problem)
    if isinstance(value, str):
        return text_record(value, source, domain)
    if not isinstance(value, dict):
        raise Rejected("not an object", f"expected a JSON object per row, got {type(value).__name__}")
    if fmt == "canonical":
        return _canonical(value, domain)
    record = _converted(value, fmt, columns, source, domain)
    if _holds_surrogate(record):  # rare: walk the row (slower) to name the field it came from
        raise Rejected(*(value_problem(value) or ("invalid unicode", "a text holds a lone surrogate")))
    return record


DOCUMENT_COLUMNS = ("source", "document", "doc")
"""Columns naming the document a row comes from; carried into ``meta`` (see ``rag/quality.py``)."""


def _converted(value: dict[str, Any], fmt: str, columns: ColumnMap | None, source: Any, domain: str | None) -> Record:
    row = value if columns else {str(k).lower(): v for k, v in value.items()}
    domain = _optional_text(row, "domain") or domain
    if columns is not None:
        return _from_columns(value, columns, source, domain)
    meta = _checked_meta(row.get("meta"), "meta") if isinstance(row.get("meta"), dict) else None
    carried = {key: row[key].strip() for key in DOCUMENT_COLUMNS if isinstance(row.get(key), str) and row[key].strip()}
    if carried:  # the document a row comes from, for retrieval's gold passage and RAFT (meta wins)
        meta = {**carried, **(meta or {})}
    if fmt == "text":
        return text_record(_text(row, "text"), source, domain, meta)
    if fmt == "messages":
        messages = _messages(_field(row, "messages"), "role", "content")
    elif fmt == "sharegpt":
        messages = _messages(_field(row, "conversations"), *_sharegpt_keys(row))
    elif fmt == "alpaca":
        user = _joined(_text(row, "instruction"), _optional_text(row, "input"))
        messages = _turns(_optional_text(row, "system"), user, _text(row, "output"))
    elif fmt == "qa":
        messages = _turns(_optional_text(row, "system"), _text(row, "question"), _text(row, "answer"))
    elif fmt in ("prompt_response", "prompt_completion"):
        answer_key = "response" if fmt == "prompt_response" else "completion"
        messages = _prompt_answer(row, answer_key)
    elif fmt in ("preference", "preference_implicit"):
        messages, rejected = _preference(row, fmt == "preference")
        meta = {**(meta or {}), "rejected": rejected}
    elif fmt == "kto":
        messages = _prompt_answer(row, "completion")
        label = row.get("label")
        if not isinstance(label, bool):
            raise Rejected("wrong type", f"'label' must be true or false (is the completion desirable?), got {label!r}")
        meta = {**(meta or {}), "label": label}
    else:
        raise Rejected("unknown format", fmt)
    return chat_record(messages, source, domain, meta)


def _preference(row: dict[str, Any], has_prompt: bool) -> tuple[list[Message], str]:
    """(prompt turns + chosen answer, rejected answer) of a preference row.

    With a ``prompt`` the answers are strings or message lists (their last assistant turn counts);
    without, ``chosen`` and ``rejected`` are whole conversations that must share their prompt turns.
    """
    chosen, rejected = _field(row, "chosen"), _field(row, "rejected")
    if has_prompt:
        messages = _prompt_answer({**row, "completion": chosen}, "completion")
        other = _prompt_answer({**row, "completion": rejected}, "completion")
    elif not isinstance(chosen, list) or not isinstance(rejected, list):
        raise Rejected("wrong type", "without a 'prompt', 'chosen' and 'rejected' must be message lists")
    else:
        messages, other = _messages(chosen, "role", "content"), _messages(rejected, "role", "content")
        if messages[:-1] != other[:-1]:
            raise Rejected("invalid conversation", "'chosen' and 'rejected' start with different turns")
    if messages[-1]["role"] != "assistant" or other[-1]["role"] != "assistant":
        raise Rejected("invalid conversation", "'chosen' and 'rejected' must end with an assistant turn")
    return messages, other[-1]["content"]


def _checked_meta(meta: dict[str, Any], name: str) -> dict[str, Any]:
    """``meta`` when it can be carried (Unicode text, nested at most ``MAX_DEPTH`` deep), else Rejected."""
    problem = value_problem(meta, name)
    if problem:
        raise Rejected(*problem)
    return meta


def _holds_surrogate(record: Record) -> bool:
    """True when the record's texts or domain hold a lone surrogate (its meta was checked before)."""
    domain = record.get("domain") or ""
    if not domain.isascii() and _SURROGATE.search(domain):
        return True
    if record["kind"] == "text":
        return not record["text"].isascii() and _SURROGATE.search(record["text"]) is not None
    for message in record["messages"]:  # a plain loop: this runs for every row
        if not message["content"].isascii() and _SURROGATE.search(message["content"]):
            return True
    return False


def unrecognised(value: Any) -> Rejected:
    """The rejection for a row in a file whose format could not be detected."""
    keys = sorted(str(k) for k in value)[:10] if isinstance(value, dict) else type(value).__name__
    expected = ", ".join(f"{name} ({'/'.join(keys_)})" for name, keys_ in FORMAT_KEYS.items())
    return Rejected("format not recognised", f"row keys {keys}; expected one of: {expected}; or set columns")


def value_problem(value: Any, name: str = "") -> tuple[str, str] | None:
    """``(reason, detail)`` when a row cannot be carried into a record whatever its format, else None.

    A lone surrogate (JSON ``"\\ud800"``) is not a character: it cannot be hashed or written as UTF-8
    (``invalid unicode``, naming the field, e.g. ``'meta.notes[2]'``). Rows nested deeper than
    ``MAX_DEPTH`` are refused (``nested too deeply``) before anything recurses into them.
    """
    stack: list[tuple[Any, str, int]] = [(value, name, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            problem = _lone_surrogate(item, repr(_printable(where)) if where else "the text")
            if problem:
                return "invalid unicode", problem
        elif isinstance(item, list | dict) and depth >= MAX_DEPTH:
            return "nested too deeply", f"lists and objects more than {MAX_DEPTH} levels deep"
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{index}]", depth + 1) for index, child in enumerate(item))
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = _lone_surrogate(key, f"a key in {_printable(where)!r}" if where else "a key of the row")
                if problem:
                    return "invalid unicode", problem
                stack.append((child, f"{where}.{key}" if where else str(key), depth + 1))
    return None


def _lone_surrogate(text: Any, field: str) -> str | None:
    """What is wrong when the string ``text`` holds a lone surrogate, naming ``field``; else None."""
    found = None if not isinstance(text, str) or text.isascii() else _SURROGATE.search(text)
    if found is None:
        return None
    at = f"U+{ord(found.group()):04X} (character {found.start() + 1})"
    return f"{field} holds a lone surrogate {at}, which is not a character; fix the text or its \\u escapes"


def _printable(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udXXX`` escapes (safe to print and to write as UTF-8)."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _field(row: dict[str, Any], key: str) -> Any:
    if key not in row:
        raise Rejected("missing field", f"no {key!r}")
    return row[key]


def _canonical(value: dict[str, Any], domain: str | None) -> Record:
    problem = record_problem(value)
    if problem:
        raise Rejected("invalid record", problem)
    record = dict(value)
    if "meta" in record:
        record["meta"] = json_safe(record["meta"])
    record["domain"] = record.get("domain") or domain
    # ids are content hashes: one given by another tool is replaced, so equal content dedups as equal
    record["id"] = content_id(record)  # type: ignore[arg-type]
    return record  # type: ignore[return-value]


def _text(row: dict[str, Any], key: str) -> str:
    """A required string field; numbers are written out, NaN and infinities and other types are rejected."""
    if key not in row or row[key] is None:
        raise Rejected("missing field", f"no {key!r}")
    value = row[key]
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise Rejected("wrong type", f"{key!r} must be a string, got {type(value).__name__}")
    finite = value.is_finite() if isinstance(value, Decimal) else not isinstance(value, float) or math.isfinite(value)
    if not finite:  # NaN or an infinity: never the text "nan"
        raise Rejected("invalid number", f"{key!r} is {value}, not a text; expected a string or a finite number")
    return str(value)


def _optional_text(row: dict[str, Any], key: str) -> str:
    return _text(row, key) if row.get(key) is not None else ""


def _joined(instruction: str, context: str) -> str:
    return f"{instruction}\n\n{context}" if context.strip() else instruction


def _turns(system: str, user: str, assistant: str) -> list[Message]:
    messages: list[Message] = [{"role": "system", "content": system}] if system.strip() else []
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _sharegpt_keys(row: dict[str, Any]) -> tuple[str, str]:
    """ShareGPT turn keys: ``from``/``value`` (or ``role``/``content`` in some exports)."""
    turns = row.get("conversations")
    if isinstance(turns, list) and turns and isinstance(turns[0], dict) and "role" in turns[0]:
        return "role", "content"
    return "from", "value"


def _messages(turns: Any, role_key: str, content_key: str) -> list[Message]:
    if not isinstance(turns, list) or not turns:
        raise Rejected("invalid conversation", f"expected a non-empty list of turns, got {type(turns).__name__}")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise Rejected("invalid conversation", f"turn {i} is a {type(turn).__name__}, not an object")
        role = ROLE_ALIASES.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise Rejected("invalid conversation", f"turn {i}: unsupported {role_key} {turn.get(role_key)!r}")
        messages.append({"role": role, "content": _content(turn.get(content_key), i)})  # type: ignore[typeddict-item]
    if not any(m["role"] == "assistant" for m in messages):
        raise Rejected("invalid conversation", "no assistant turn")
    return messages


def _content(content: Any, index: int) -> str:
    """A turn's text: a string, or the text parts of an OpenAI content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type", "text") == "text"]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "".join(texts)  # type: ignore[arg-type]
        raise Rejected("invalid conversation", f"turn {index} has non-text content parts (images, audio)")
    raise Rejected("invalid conversation", f"turn {index}: content must be a string, got {type(content).__name__}")


def _prompt_answer(row: dict[str, Any], answer_key: str) -> list[Message]:
    """Prompt/answer pairs: strings, or conversational lists of messages (TRL's conversational form)."""
    prompt, answer = row.get("prompt"), row.get(answer_key)
    if isinstance(prompt, list) or isinstance(answer, list):
        prompt_turns = _messages_no_check(prompt, "prompt") if isinstance(prompt, list) else None
        answer_turns = _messages_no_check(answer, answer_key) if isinstance(answer, list) else None
        if prompt_turns is None or answer_turns is None:
            raise Rejected("wrong type", f"'prompt' and {answer_key!r} must both be strings or both message lists")
        return _messages([*prompt_turns, *answer_turns], "role", "content")
    return _turns(_optional_text(row, "system"), _text(row, "prompt"), _text(row, answer_key))


def _messages_no_check(turns: list[Any], key: str) -> list[dict[str, Any]]:
    if not turns or not all(isinstance(t, dict) for t in turns):
        raise Rejected("invalid conversation", f"{key!r} must be a non-empty list of message objects")
    return turns


def _from_columns(row: dict[str, Any], columns: ColumnMap, source: dict[str, Any], domain: str | None) -> Record:
    """A row through an explicit column mapping (column names are matched exactly)."""
    if columns.domain and isinstance(row.get(columns.domain), str) and row[columns.domain]:
        domain = row[columns.domain]
    meta = {}
    for name in columns.meta:
        if name not in row:
            raise Rejected("missing field", f"no {name!r} (columns.meta)")
        meta[name] = row[name]
    meta = _checked_meta(meta, "")
    if columns.text:
        return text_record(_text(row, columns.text), source, domain, meta or None)
    assert columns.assistant  # the config validator guarantees text or assistant
    user = _text(row, columns.user) if columns.user else ""
    if columns.input:
        user = _joined(user, _optional_text(row, columns.input))
    system = _optional_text(row, columns.system) if columns.system else ""
    messages = _turns(system, user, _text(row, columns.assistant))
    if not columns.user and not columns.input:
        messages = [m for m in messages if m["role"] != "user"]
    return chat_record(messages, source, domain, meta or None)
