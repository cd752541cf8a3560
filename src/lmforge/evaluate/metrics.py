"""Answer normalisation and text metrics: exact match, contains-answer, token F1, ROUGE-L, BLEU, JSON fields.

Every metric compares *normalised* text (see :func:`normalize_answer`), so that "7.35%", "7.35 %"
and "７.３５％" count as the same answer. ROUGE-L uses the ``rouge-score`` library's LCS with this
normalisation as its tokenizer (its own tokenizer drops every non-ASCII letter: "Straße" would
become "stra e"); BLEU is ``sacrebleu`` with its default ``13a`` tokenizer, on the raw text.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any

_ARTICLES = {"a", "an", "the"}
# Separators inside numbers: "1,200" -> "1200" (thousands) and "7.35" stays one token (decimal).
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_DECIMAL_PLACEHOLDER = "\u2024"  # one-dot leader: survives punctuation stripping, restored afterwards
_PUNCT = re.compile(r"[^\w\s%\u2024]")
# "7.50" -> "7.5" and "64.0" -> "64": a decimal's trailing zeros do not change its value.
_TRAILING_ZEROS = re.compile(r"(\d)\.(\d*?)0+\b")
_NON_ASCII_DIGIT = re.compile(r"[^\x00-\x7f]")


def normalize_answer(text: str) -> str:
    """Canonical form for comparing answers.

    NFKC, lower case, digits of any script as ASCII digits ("٦٤" -> "64"), thousands separators
    removed, decimal points kept and trailing decimal zeros dropped ("7.50" -> "7.5", "64.0" -> "64"),
    every other punctuation mark turned into a space (``%`` is kept: "7.4%" and "7.4 %" both become
    "7.4 %"), the articles a/an/the dropped, whitespace collapsed.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _NON_ASCII_DIGIT.sub(_ascii_digit, text)
    text = _THOUSANDS.sub("", text)
    text = _TRAILING_ZEROS.sub(lambda m: m.group(1) + ("." + m.group(2) if m.group(2) else ""), text)
    text = _DECIMAL.sub(_DECIMAL_PLACEHOLDER, text)
    text = _PUNCT.sub(" ", text)
    text = text.replace("%", " % ").replace(_DECIMAL_PLACEHOLDER, ".")
    return " ".join(token for token in text.split() if token not in _ARTICLES)


def _ascii_digit(match: re.Match[str]) -> str:
    char = match.group(0)
    digit = unicodedata.decimal(char, None)
    return str(digit) if digit is not None else char


def exact_match(reply: str, gold: str, aliases: Sequence[str] = ()) -> bool:
    """True when the normalised reply equals the normalised gold answer (or an alias)."""
    predicted = normalize_answer(reply)
    return any(predicted == normalize_answer(candidate) for candidate in (gold, *aliases))


def contains_answer(reply: str, gold: str, aliases: Sequence[str] = ()) -> bool:
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


class _NormalizingTokenizer:
    """The ``rouge-score`` tokenizer interface over :func:`normalize_answer`."""

    def tokenize(self, text: str) -> list[str]:
        return normalize_answer(text).split()


@cache
def _rouge_scorer() -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], tokenizer=_NormalizingTokenizer())


def rouge_l(reply: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of normalised tokens), in [0, 1]."""
    if not normalize_answer(reply) or not normalize_answer(reference):
        return float(normalize_answer(reply) == normalize_answer(reference))
    return float(_rouge_scorer().score(reference, reply)["rougeL"].fmeasure)


def sentence_bleu(reply: str, reference: str) -> float:
    """sacrebleu's smoothed sentence BLEU of one reply against one reference, in [0, 100]."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(reply, [reference]).score)


def corpus_bleu(replies: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (the standard figure for a whole set), in [0, 100]."""
    import sacrebleu

    if not replies:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(replies), [list(references)]).score)
