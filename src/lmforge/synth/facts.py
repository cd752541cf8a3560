"""The teacher's questions about every fact, and its passages relating a chunk's entities.

``facts_from_docs`` (two phases): the teacher lists every fact a chunk states, each as a sentence that
names its subject; then writes ``questions_per_fact`` questions for each fact. Each question becomes a
chat record answered by its fact, so every fact is seen in several wordings (the demo's rule-made
questions reach the trained facts' new wordings; the variety of the wordings is what carries a fact
to questions asked in other words, docs/TRAINING.md).

``entigraph`` (two phases, after EntiGraph, Yang et al. 2025): the teacher lists a chunk's entities;
for a seeded sample of ``entity_pairs`` pairs of them it writes a paragraph on how the two relate,
from the chunk alone. Each paragraph is a chat record (``How do A and B relate ...?`` -> the paragraph):
the same facts, in new arrangements and wordings.

Both keep, per record, the chunk it came from (``meta.synth.from``); replies are cached like every
synth request, so a rerun sends only what is missing.
"""

from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING

from lmforge.config import SynthSpec
from lmforge.records import Record
from lmforge.synth import tasks
from lmforge.synth.items import Item, Tally, where

if TYPE_CHECKING:
    from lmforge.synth.asking import Asker


def _ask(template: str, spec: SynthSpec, **fields: object) -> list[dict[str, str]]:
    return [{"role": "user", "content": tasks.render(spec.templates, template, **fields)}]


async def _lists(
    phase: str, key: str, jobs: list[list[dict[str, str]]], origins: list[Record], asker: Asker, tally: Tally
) -> list[list[str] | None]:
    """Each job's list of strings under ``key`` (None where the reply was missing or unusable, rejected)."""
    replies = await asker.phase(phase, jobs, want_json=True)
    out: list[list[str] | None] = []
    for origin, reply in zip(origins, replies, strict=True):
        if reply.text is None:
            tally.reject(phase, origin, reply.error or "no reply", None)
            out.append(None)
            continue
        try:
            out.append(tasks.parse_strings(reply.text, key))
        except ValueError as exc:
            tally.reject(phase, origin, f"unusable reply: {exc}", reply.text)
            out.append(None)
    return out


async def facts_from_docs(spec: SynthSpec, chunks: list[Record], asker: Asker, tally: Tally) -> list[Item]:
    """Questions for every fact of every chunk, each answered by its fact."""
    jobs = [_ask("facts", spec, chunk=r["text"], n=spec.max_facts, source=where(r)) for r in chunks]
    listed = await _lists("facts", "facts", jobs, chunks, asker, tally)
    facts = [
        (record, fact) for record, found in zip(chunks, listed, strict=True) for fact in (found or [])[: spec.max_facts]
    ]
    jobs = [_ask("fact_questions", spec, fact=fact, k=spec.questions_per_fact, source=where(r)) for r, fact in facts]
    asked = await _lists("fact questions", "questions", jobs, [r for r, _ in facts], asker, tally)
    items = []
    for number, ((record, fact), questions) in enumerate(zip(facts, asked, strict=True)):
        for question in (questions or [])[: spec.questions_per_fact]:
            items.append(Item(question, fact, record, "fact", {"fact": number}))
    return items


async def entigraph(spec: SynthSpec, chunks: list[Record], asker: Asker, tally: Tally, seed: int) -> list[Item]:
    """Passages on how pairs of each chunk's entities relate, asked as questions about the pair."""
    jobs = [_ask("entities", spec, chunk=r["text"], n=spec.entities, source=where(r)) for r in chunks]
    listed = await _lists("entities", "entities", jobs, chunks, asker, tally)
    pairs: list[tuple[Record, str, str]] = []
    for record, found in zip(chunks, listed, strict=True):
        names = list(dict.fromkeys(found or []))[: spec.entities]
        combos = list(itertools.combinations(names, 2))
        random.Random(f"{seed}/entigraph/{record['id']}").shuffle(combos)
        pairs += [(record, a, b) for a, b in combos[: spec.entity_pairs]]
    jobs = [_ask("relate", spec, chunk=r["text"], a=a, b=b, source=where(r)) for r, a, b in pairs]
    replies = await asker.phase("relate", jobs, want_json=False)
    items = []
    for (record, a, b), reply in zip(pairs, replies, strict=True):
        if reply.text is None or not reply.text.strip():
            tally.reject("relate", record, reply.error or "empty reply", reply.text)
            continue
        question = f"How do {a} and {b} relate to each other?"
        items.append(Item(question, reply.text.strip(), record, "relation", {"entities": [a, b]}))
    return items
