"""Questions about every document: fill-in-the-blank items cut from the indexed chunks, no teacher needed.

The questions users write cover some facts of their documents; the rest (``docs_only`` in the demo)
the model must read at answer time. With ``index.raft.cloze_per_chunk: N`` the index stage also
writes up to N items per chunk, each from one sentence of it: a *fact* of the sentence is blanked
out, the prompt asks to complete the sentence, and the reply is the whole sentence. The blanked
facts are what documents state and questions ask about:

* dates (``1 April``, ``March 3, 2024``), numbers with the word they count (``13 years``,
  ``2.5 percent``, ``seven branches``);
* names: runs of capitalised words inside a sentence (``Common Provident Fund``).

The items go through the same RAFT builder as the users' questions (their chunk is the gold
passage, retrieved passages are distractors, and closed-book copies when those are on), so the
model practises reading every passage and hears every stated fact once. Seeded; deterministic.
"""

from __future__ import annotations

import random
import re
from typing import Any

from lmforge.data.facts import MONTHS, NUMBER_WORDS, STOPWORDS
from lmforge.rag.chunk import SENTENCE_END, Chunk
from lmforge.records import Record, chat_record

DATE = re.compile(rf"\b(?:\d{{1,2}} (?:{MONTHS})(?: \d{{4}})?|(?:{MONTHS}) \d{{1,2}}(?:, \d{{4}})?)\b")
NUMBER = re.compile(
    rf"(?<![\w.(])(?:\d+(?:[.,]\d+)?|(?:{NUMBER_WORDS}))(?:\s?(?:%|percent|per cent))?(?:\s+([a-z]+))?\b",
    re.IGNORECASE,
)
NAME = re.compile(r"\b[A-Z][a-z]+(?:\s+(?:of|and|for|the)\s+[A-Z][a-z]+|\s+[A-Z][a-z]+)+\b")
ENUMERATOR = re.compile(r"^\(?\w{1,3}[).]\s+")
"""``(2) ``, ``a) ``, ``3. `` at the start of a sentence: paragraph numbering, not content."""
MIN_SENTENCE_WORDS = 6
MAX_SENTENCE_WORDS = 60


def sentence_facts(sentence: str) -> list[str]:
    """The blankable facts of one sentence, in order of appearance (dates, counted numbers, names)."""
    found: list[tuple[int, str]] = [(m.start(), m.group(0)) for m in DATE.finditer(sentence)]
    taken = [(m.start(), m.end()) for m in DATE.finditer(sentence)]
    for match in NUMBER.finditer(sentence):
        if any(start <= match.start() < end for start, end in taken):
            continue
        text = match.group(0)
        unit = match.group(1)
        if unit and unit.lower() in STOPWORDS:  # "13 of the", "two or": keep the number alone
            text = text[: match.start(1) - match.start()].rstrip()
        if text[:1].isalpha() and not unit:
            continue  # a bare number word ("one", "ten") is rarely the fact
        found.append((match.start(), text))
        taken.append((match.start(), match.start() + len(text)))
    for match in NAME.finditer(sentence):
        words = match.group(0).split()
        start = match.start()
        if words[0].lower() in STOPWORDS:  # "The Code", "This Code": the determiner is not part of the name
            start += len(words[0]) + 1
            words = words[1:]
        if start == 0 or len(words) < 2 or any(low <= start < high for low, high in taken):
            continue  # a sentence's first word is capitalised anyway
        found.append((start, " ".join(words)))
    return [text for _, text in sorted(found)]


def cloze_items(chunk: Chunk, per_chunk: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """Up to ``per_chunk`` (prompt, answer, sentence) items from distinct sentences of ``chunk``."""
    candidates = []
    for sentence in SENTENCE_END.split(" ".join(chunk.text.split())):
        sentence = ENUMERATOR.sub("", sentence)
        words = len(sentence.split())
        if MIN_SENTENCE_WORDS <= words <= MAX_SENTENCE_WORDS:
            facts = sentence_facts(sentence)
            if facts:
                candidates.append((sentence, facts))
    rng.shuffle(candidates)
    items = []
    where = chunk.heading or chunk.path
    for sentence, facts in candidates[:per_chunk]:
        answer = rng.choice(facts)
        blanked = sentence.replace(answer, "____", 1)
        items.append((f'Complete this sentence from "{where}": {blanked}', answer, sentence))
    return items


def cloze_records(chunks: list[Chunk], per_chunk: int, seed: int, domain: str | None = None) -> list[Record]:
    """Fill-in-the-blank chat records for ``chunks`` (``meta.source`` names the chunk's document and
    ``meta.answer`` the blanked fact, so the RAFT builder finds the gold passage)."""
    records = []
    for chunk in chunks:
        rng = random.Random(f"{seed}:cloze:{chunk.id}")
        for prompt, answer, sentence in cloze_items(chunk, per_chunk, rng):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": sentence}]
            meta: dict[str, Any] = {"source": chunk.path, "answer": answer, "cloze": chunk.id}
            records.append(chat_record(messages, {"path": chunk.path, "line": chunk.line}, domain, meta))
    return records
