"""The one scorer of structured outputs: a reply that should be a JSON object, against the gold fields.

The seq2seq stage's evaluation, eval's ``extraction`` task, the harness and the extraction server all
read replies through here, so ``valid_json`` and a field match mean the same everywhere:

* ``valid_json``: the reply *is* one JSON object (surrounding whitespace, or one Markdown code fence
  around it, allowed). Prose around an object, a list or broken JSON is not valid.
* the fields are read from that object or, for a reply that is not valid, from the first decodable
  ``{...}`` in it (a chat model's "Here you go: {...}" still gets credit for its fields, not for
  its format).
* a field matches when the values agree after normalisation: scalars as normalised text (case,
  punctuation, articles and spacing ignored; ``64 == "64"``, ``7.5 == "7.50"``), booleans and null by
  their JSON spelling, lists and objects by their normalised JSON. A missing field does not match.
* per document: ``field_accuracy`` is the share of its gold fields matched, ``all_fields`` whether all
  were; over a set, each is the mean over documents, with the match rate per field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from lmforge.evaluate.metrics import normalize_answer

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_WHOLE_FENCE = re.compile(r"\A\s*```(?:json)?\s*(.*?)```\s*\Z", re.DOTALL)


def reply_object(text: str) -> tuple[dict[str, Any] | None, bool]:
    """(the JSON object a reply holds or None, whether the reply is exactly that object)."""
    whole = _WHOLE_FENCE.match(text)
    try:
        value = json.loads(whole.group(1) if whole else text)
    except (json.JSONDecodeError, RecursionError):
        value = None
    if isinstance(value, dict):
        return value, True
    return find_object(text), False


def find_object(text: str) -> dict[str, Any] | None:
    """The first decodable JSON object in ``text`` (in a code fence first, else anywhere), or None."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for start in [i for i, char in enumerate(candidate) if char == "{"]:
            try:
                value, _ = decoder.raw_decode(candidate[start:])
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(value, dict):
                return value
    return None


def field_matches(predicted: dict[str, Any] | None, gold: dict[str, Any]) -> dict[str, bool]:
    """Per gold field: does the predicted value equal it after normalisation (see the module's rules)?"""
    result = {}
    for key, expected in gold.items():
        if predicted is None or key not in predicted:
            result[key] = False
        else:
            result[key] = _field_text(predicted[key]) == _field_text(expected)
    return result


def _field_text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return normalize_answer(json.dumps(value, sort_keys=True, ensure_ascii=False))
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return normalize_answer(str(value))  # "415.0", "415" and 415 alike


@dataclass
class FieldScore:
    """One reply against its gold fields."""

    fields: dict[str, bool]
    valid_json: bool
    parsed: dict[str, Any] | None = None
    """The object the fields were read from (None when the reply held none)."""

    @property
    def field_accuracy(self) -> float:
        return sum(self.fields.values()) / len(self.fields) if self.fields else 0.0

    @property
    def all_fields(self) -> bool:
        return bool(self.fields) and all(self.fields.values())


def score_reply(reply: str, gold: dict[str, Any]) -> FieldScore:
    """Score one reply (see the module's rules)."""
    parsed, valid = reply_object(reply)
    return FieldScore(field_matches(parsed, gold), valid, parsed)


def summarize(scores: list[FieldScore]) -> dict[str, Any]:
    """Over a set: ``n``, ``valid_json``, ``field_accuracy``, ``all_fields`` (means over documents) and
    ``fields`` (each field's match rate over the documents whose gold has it)."""
    n = len(scores)
    per_field: dict[str, list[bool]] = {}
    for score in scores:
        for key, hit in score.fields.items():
            per_field.setdefault(key, []).append(hit)
    return {
        "n": n,
        "valid_json": sum(s.valid_json for s in scores) / n if n else 0.0,
        "field_accuracy": sum(s.field_accuracy for s in scores) / n if n else 0.0,
        "all_fields": sum(s.all_fields for s in scores) / n if n else 0.0,
        "fields": {key: round(sum(hits) / len(hits), 4) for key, hits in per_field.items()},
    }
