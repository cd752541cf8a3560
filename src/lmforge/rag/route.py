"""Retrieval routing: decide per question whether to put retrieved passages in the prompt.

Retrieving for every question derails the ones the documents do not cover ("What is the capital of
Italy?" answered from three articles of a pension code). A question's *relevance* is the cosine
similarity between its embedding and the nearest chunk of the index; a routed variant gives the
passages only when the relevance reaches a threshold.

The threshold is calibrated by the index stage on questions the recipe trains on, never on the eval
sets: questions whose record names a source document of the index are *in-domain* (they should
retrieve), chat records without one are *general* (they should not). A recipe whose training data
has no general questions is calibrated against the general prompts shipped with lmforge
(``lmforge/demo/replay_prompts.yaml``: capitals, arithmetic, science, everyday questions). The
threshold is the one with the best balanced accuracy (the mean of the two groups' hit rates) on
those questions; ties go to the lower threshold (retrieving too often costs less than too rarely).
"""

from __future__ import annotations

import itertools
from typing import Any

import yaml

from lmforge.config.base import package_dir
from lmforge.rag.quality import gold_document
from lmforge.records import Record

GENERAL_SOURCE = "lmforge/demo/replay_prompts.yaml"


def relevance(retriever: Any, questions: list[str]) -> list[float]:
    """The cosine similarity of each question to its nearest chunk (0 for an empty question)."""
    scores = [0.0] * len(questions)
    asked = [i for i, q in enumerate(questions) if q.strip()]
    if not asked:
        return scores
    for i, passages in zip(asked, retriever.search([questions[i] for i in asked], 1, mode="dense"), strict=True):
        scores[i] = round(float(passages[0]["score"]), 6) if passages else 0.0
    return scores


def general_questions() -> list[str]:
    """The general prompts lmforge ships (questions no domain index should answer)."""
    text = (package_dir() / "demo" / "replay_prompts.yaml").read_text(encoding="utf-8")
    return [str(item["prompt"]) for item in yaml.safe_load(text)]


def split_questions(records: list[Record], gold_key: str) -> tuple[list[str], list[str]]:
    """The last user turns of ``records``' chat records: (in-domain, general) by whether ``meta`` names a
    source document."""
    in_domain, general = [], []
    for record in records:
        if record.get("kind") != "chat":
            continue
        users = [m["content"] for m in record["messages"] if m["role"] == "user"]
        if not users or not users[-1].strip():
            continue
        (in_domain if gold_document(record.get("meta"), gold_key) else general).append(users[-1])
    return in_domain, general


def calibrate(in_domain: list[float], general: list[float]) -> dict[str, Any] | None:
    """The threshold separating in-domain from general relevance scores best (balanced accuracy).

    A question retrieves when its relevance is >= the threshold. Returns None when either group is empty.
    """
    if not in_domain or not general:
        return None
    values = sorted(set(in_domain) | set(general))
    candidates = [values[0]] + [(low + high) / 2 for low, high in itertools.pairwise(values)] + [values[-1] + 1e-6]
    best: tuple[float, float] | None = None
    for threshold in candidates:
        hit = sum(score >= threshold for score in in_domain) / len(in_domain)
        rejected = sum(score < threshold for score in general) / len(general)
        accuracy = (hit + rejected) / 2
        if best is None or accuracy > best[1] + 1e-12:
            best = (threshold, accuracy)
    threshold, accuracy = best  # type: ignore[misc]
    return {
        "threshold": round(threshold, 6),
        "balanced_accuracy": round(accuracy, 4),
        "in_domain": len(in_domain),
        "in_domain_retrieving": sum(score >= threshold for score in in_domain),
        "general": len(general),
        "general_retrieving": sum(score >= threshold for score in general),
    }


def routed(passages: list[dict[str, Any]], score: float | None, threshold: float | None) -> list[dict[str, Any]]:
    """``passages`` when the question's relevance reaches ``threshold`` (or nothing is known), else none."""
    if threshold is None or score is None or score >= threshold:
        return passages
    return []
