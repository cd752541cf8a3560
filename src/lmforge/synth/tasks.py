"""Prompt templates of the synth tasks, and robust parsing of the teacher's JSON replies.

Templates use ``str.format`` fields (``{chunk}``, ``{n}``, ``{question}``, ``{answer}``, ``{k}``, ``{fact}``,
``{a}``, ``{b}``);
a recipe overrides any of them by name in ``synth.templates``.

Parsing is forgiving in what it reads and strict in what it keeps: code fences, prose around
the JSON, trailing commas, smart quotes and a reply cut off mid-list are repaired here, anything else
(single quotes, comments, missing commas) by the json-repair library; then every item must match its
schema (non-empty strings) or the reply is rejected with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

TEMPLATES: dict[str, str] = {
    "qa_from_docs": (
        "Read the passage and write {n} question-and-answer pairs about facts it states. Each question must be "
        "answerable from the passage alone and make sense without it (name the subject, do not say 'the passage'). "
        "Each answer is one short sentence that quotes the passage's wording where possible.\n\n"
        'Passage ({source}):\n"""\n{chunk}\n"""\n\n'
        'Reply with JSON only, in this form: {{"pairs": [{{"question": "...", "answer": "..."}}]}}'
    ),
    "paraphrase": (
        "Rewrite this question in {k} different ways that keep its exact meaning; vary the wording and the word "
        "order.\n\nQuestion: {question}\n\n"
        'Reply with JSON only, in this form: {{"paraphrases": ["...", "..."]}}'
    ),
    "instruction_triples": (
        "Read the passage and write {n} tasks a user could ask about it, each as an instruction, an optional input "
        "(text the instruction works on, or an empty string) and the ideal output, grounded in the passage.\n\n"
        'Passage ({source}):\n"""\n{chunk}\n"""\n\n'
        'Reply with JSON only, in this form: {{"triples": [{{"instruction": "...", "input": "", "output": "..."}}]}}'
    ),
    "facts": (
        "List every fact the passage states, at most {n}, each as one short sentence that stands on its own: name its "
        "subject in full (never 'it', 'this Code' or 'the passage'), and keep numbers, dates and names exactly as "
        'written.\n\nPassage ({source}):\n"""\n{chunk}\n"""\n\n'
        'Reply with JSON only, in this form: {{"facts": ["...", "..."]}}'
    ),
    "fact_questions": (
        "Write {k} different questions that each ask for this fact, the way different people would ask: vary the "
        "wording, the word order and the part of the fact that is asked for; name the subject in every question and "
        "do not give the answer away.\n\nFact: {fact}\n(from {source})\n\n"
        'Reply with JSON only, in this form: {{"questions": ["...", "..."]}}'
    ),
    "entities": (
        "List the {n} most important entities of the passage: bodies, people, funds, benefits, documents, places, "
        "periods and the terms it defines, each named in full as the passage names it.\n\n"
        'Passage ({source}):\n"""\n{chunk}\n"""\n\n'
        'Reply with JSON only, in this form: {{"entities": ["...", "..."]}}'
    ),
    "relate": (
        "Using only what the passage states, write one paragraph on how {a} and {b} relate to each other; name both "
        'in full and keep every number, date and name as written.\n\nPassage ({source}):\n"""\n{chunk}\n"""\n\n'
        "Reply with the paragraph only."
    ),
    "judge": (
        "Grade how faithful the answer is to the passage, from 1 (contradicted or not supported) to 5 (fully "
        'supported, nothing invented).\n\nPassage:\n"""\n{chunk}\n"""\n\nQuestion: {question}\nAnswer: {answer}\n\n'
        'Reply with JSON only: {{"score": <1-5>, "reason": "..."}}'
    ),
    "answer_system": "",
}
"""Default templates; ``answer_system`` (empty: none) is a system prompt put before each ``answer`` prompt."""

SCHEMAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "qa_from_docs": ("pairs", ("question", "answer")),
    "instruction_triples": ("triples", ("instruction", "input", "output")),
}
"""Per task: the list key of the reply and the string fields of each item (``input`` may be empty)."""


def render(templates: dict[str, str], name: str, **fields: Any) -> str:
    """Fill template ``name`` (the recipe's override or the default)."""
    template = templates.get(name, TEMPLATES[name])
    return template.format(**fields)


def parse_json(text: str) -> tuple[Any, list[str]]:
    """Decode the JSON value in a reply, repairing common breakage.

    Returns:
        (value, repairs applied). Raises ValueError with the reason when nothing decodes.
    """
    repairs: list[str] = []
    body = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)(?:```|$)", body, re.DOTALL)
    if fenced and "```" in body:
        body = fenced.group(1).strip()
        repairs.append("code fence")
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    if not starts:
        raise ValueError("no JSON object or array in the reply")
    start = min(starts)
    if start > 0:
        repairs.append("text before JSON")
    span, closed = _balanced_span(body, start)
    if closed and span.strip() != body[start:].strip():
        repairs.append("text after JSON")
    candidates = [(span, [])]
    fixed = span.translate(str.maketrans({"“": '"', "”": '"', "’": "'"}))
    fixed = re.sub(r",\s*([}\]])", r"\1", fixed)
    if fixed != span:
        candidates.append((fixed, ["trailing comma or smart quotes"]))
    if not closed:
        candidates.append((_close_truncated(fixed), ["truncated reply closed"]))
    last_error = None
    for candidate, extra in candidates:
        try:
            return json.loads(candidate), repairs + extra
        except json.JSONDecodeError as exc:
            last_error = exc
    # The rest (single quotes, missing commas, comments, unquoted keys...) by json-repair, which repaired every
    # damaged reply of benchmarks/documents.py's set where the repairs above got 63% (docs/RAG.md).
    import json_repair

    repaired = json_repair.loads(span)
    if isinstance(repaired, (dict, list)) and repaired:
        return repaired, [*repairs, "json-repair"]
    raise ValueError(f"not valid JSON even after repair: {last_error.msg} at char {last_error.pos}")


def _balanced_span(text: str, start: int) -> tuple[str, bool]:
    """The text from ``start`` to its matching bracket (strings respected); (rest, False) if never closed."""
    depth = 0
    for i, ch in _outside_strings(text, start):
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[start : i + 1], True
    return text[start:], False


def _close_truncated(text: str) -> str:
    """Cut a reply that stopped mid-list after its last complete item, and close the open brackets."""
    cut = max(text.rfind("},"), text.rfind('",'))
    if cut < 0:
        return text
    head = text[: cut + 1]
    stack: list[str] = []
    for _, ch in _outside_strings(head):
        if ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    return head + "".join(reversed(stack))


def _outside_strings(text: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """``(index, character)`` for each character of ``text[start:]`` outside JSON strings (their quotes too)."""
    in_string, escaped = False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        else:
            yield i, ch


def parse_items(task: str, text: str) -> tuple[list[dict[str, str]], list[str]]:
    """Items of a ``qa_from_docs`` or ``instruction_triples`` reply, validated.

    Returns (items, repairs). Raises ValueError naming the first problem.
    """
    list_key, fields = SCHEMAS[task]
    value, repairs = parse_json(text)
    if isinstance(value, dict) and list_key not in value:
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) == 1:
            value, repairs = lists[0], [*repairs, "list under another key"]
        elif all(f in value for f in fields if f != "input"):
            value, repairs = [value], [*repairs, "single item"]
    items = value.get(list_key) if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"expected a non-empty list under {list_key!r}")
    kept = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{list_key}[{index}] is {type(item).__name__}, expected an object")
        lowered = {str(k).lower().strip(): v for k, v in item.items()}
        clean: dict[str, str] = {}
        for name in fields:
            found = lowered.get(name, "" if name == "input" else None)
            if not isinstance(found, str) or (name != "input" and not found.strip()):
                raise ValueError(f"{list_key}[{index}].{name} must be a non-empty string, got {found!r}")
            clean[name] = found.strip()
        kept.append(clean)
    return kept, repairs


def parse_strings(text: str, key: str) -> list[str]:
    """The non-empty strings of a reply's list under ``key`` (or of a bare list, or of the one list it holds)."""
    value, _ = parse_json(text)
    if isinstance(value, dict) and key not in value:
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else value
    items = value.get(key) if isinstance(value, dict) else value
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise ValueError(f"expected a list of strings under {key!r}")
    kept = [p.strip() for p in items if p.strip()]
    if not kept:
        raise ValueError(f"the list under {key!r} is empty")
    return kept


def parse_paraphrases(text: str) -> list[str]:
    return parse_strings(text, "paraphrases")


def parse_judge(text: str) -> tuple[int, str]:
    value, _ = parse_json(text)
    if not isinstance(value, dict):
        raise ValueError("expected an object with 'score' and 'reason'")
    score = value.get("score")
    if isinstance(score, str) and score.strip().isdigit():
        score = int(score.strip())
    if not isinstance(score, (int, float)) or not 1 <= score <= 5:
        raise ValueError(f"'score' must be a number from 1 to 5, got {score!r}")
    return int(score), str(value.get("reason", ""))
