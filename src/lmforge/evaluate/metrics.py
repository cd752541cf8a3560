"""Answer normalisation and short-answer metrics (contains-answer accuracy, token F1)."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_ARTICLES = {"a", "an", "the"}
# Separators inside numbers: "1,200" -> "1200" (thousands) and "7.35" stays one token (decimal).
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_DECIMAL_PLACEHOLDER = "\u2024"  # one-dot leader: survives punctuation stripping, restored afterwards
_PUNCT = re.compile(r"[^\w\s%\u2024]")


def normalize_answer(text: str) -> str:
    """Canonical form for comparing answers.

    NFKC, lower case, thousands separators removed, decimal points kept, every other punctuation
    mark turned into a space (``%`` is kept: "7.4%" and "7.4 %" both become "7.4 %"), the articles
    a/an/the dropped, whitespace collapsed.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _THOUSANDS.sub("", text)
    text = _DECIMAL.sub(_DECIMAL_PLACEHOLDER, text)
    text = _PUNCT.sub(" ", text)
    text = text.replace("%", " % ").replace(_DECIMAL_PLACEHOLDER, ".")
    return " ".join(token for token in text.split() if token not in _ARTICLES)


def contains_answer(reply: str, gold: str, aliases: list[str] | tuple[str, ...] = ()) -> bool:
    """True when the normalised gold answer (or an alias) appears in the reply as whole tokens.

    Whole tokens, so that gold "4" does not match a reply saying "14".
    """
    haystack = f" {normalize_answer(reply)} "
    for candidate in (gold, *aliases):
        needle = normalize_answer(candidate)
        if needle and f" {needle} " in haystack:
            return True
    return False


def token_f1(reply: str, gold: str) -> float:
    """SQuAD-style token F1 between the normalised reply and gold answer."""
    predicted = normalize_answer(reply).split()
    expected = normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = Counter(predicted) & Counter(expected)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted)
    recall = overlap / len(expected)
    return 2 * precision * recall / (precision + recall)
