"""Retrieval evaluation: recall@k and MRR against the source document named by each QA record.

A QA record points to its source with a ``meta`` key (``index.gold_key``, ``article`` in the demo; else
``source``, ``document`` or ``doc``).
A retrieved passage is a hit when it comes from that document: its source path equals the key, or
equals it once the suffix is dropped, or ends with ``/<key>`` (without suffix), or has the key as
file name or stem. Recall@k is the share of questions with a hit among the first k passages; MRR is the
mean of 1 / rank of the first hit (0 when none is retrieved).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

WORD = re.compile(r"\w+")
DOCUMENT_KEYS = ("source", "document", "doc")
"""``meta`` keys that name a QA record's source document when ``index.gold_key`` (``article`` by
default) is absent: the data stage carries such a column of a question/answer file into ``meta``."""


def gold_document(meta: dict[str, Any] | None, gold_key: str) -> str | None:
    """The document a QA record's answer comes from: ``meta[gold_key]``, else the first of
    :data:`DOCUMENT_KEYS` it has; None when it names none."""
    meta = meta or {}
    for key in (gold_key, *DOCUMENT_KEYS):
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def from_document(path: str, target: str) -> bool:
    """True when the passage source ``path`` is the document named ``target`` (see the module docstring)."""
    if path == target:
        return True
    posix = PurePosixPath(path)
    without_suffix = str(posix.with_suffix(""))
    target_without_suffix = str(PurePosixPath(target).with_suffix("")) if "/" in target else target
    return (
        without_suffix == target_without_suffix
        or without_suffix.endswith("/" + target_without_suffix)
        or posix.name == target
        or posix.stem == target
    )


def first_hit(passages: list[dict[str, Any]], target: str) -> int | None:
    """1-based rank of the first passage from ``target``, or None."""
    for rank, passage in enumerate(passages, start=1):
        if from_document(passage["source"]["path"], target):
            return rank
    return None


def plain_words(text: str) -> str:
    """Lower-cased words joined by single spaces: how an answer is looked for in a passage."""
    return " ".join(WORD.findall(text.lower()))


def holds_answer(passage: dict[str, Any] | str, answer: str) -> bool:
    """Whether a passage (or its text) contains ``answer``, word for word (case and punctuation aside)."""
    wanted = plain_words(answer)
    text = passage if isinstance(passage, str) else passage.get("text", "")
    return bool(wanted) and f" {wanted} " in f" {plain_words(text)} "


def retrieval_scores(
    ranked: list[list[dict[str, Any]]], targets: list[str], ks: list[int], answers: list[str | None] | None = None
) -> dict[str, Any]:
    """Recall@k for every k in ``ks`` and MRR over questions (``ranked[i]`` answers ``targets[i]``): a hit is a
    passage from the target document. With ``answers`` (a short answer or None per question), also
    ``answer_recall@k`` over the questions that have one: a hit is a passage that contains the answer, the
    finer measure where a document has many passages."""
    if not targets:
        return {"n": 0}
    ranks = [first_hit(passages, target) for passages, target in zip(ranked, targets, strict=True)]
    scores: dict[str, Any] = {"n": len(targets)}
    for k in sorted(ks):
        scores[f"recall@{k}"] = round(sum(1 for r in ranks if r is not None and r <= k) / len(ranks), 4)
    scores["mrr"] = round(sum(1.0 / r for r in ranks if r is not None) / len(ranks), 4)
    checked = [(passages, a) for passages, a in zip(ranked, answers or [], strict=False) if a and a.strip()]
    if checked:
        scores["answer_n"] = len(checked)
        for k in sorted(ks):
            hits = sum(1 for passages, answer in checked if any(holds_answer(p, answer) for p in passages[:k]))
            scores[f"answer_recall@{k}"] = round(hits / len(checked), 4)
    return scores
