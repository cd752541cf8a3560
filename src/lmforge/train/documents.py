"""The documents' own text in sft, trained on together with the questions (``sft.documents``).

Questions alone teach a model the facts they ask, in their wordings; a model that also reads the
documents the facts come from, in the same training, can store them in a form the questions teach it
to retrieve (Allen-Zhu & Li, Physics of Language Models 3.1: mixed training, with varied forms of each
document). Each document becomes ``copies`` forms, chunked to ``chunk_words``:

* the heading first in every chunk, with the collection's title when a document defines one
  (``This Code is the Social Security Code of ...``), so a paragraph is never read without its subject;
* short names the documents define (``the Fund``, ``this Code``) spelled out in each sentence;
* the first form as written, the others with the paragraphs in seeded orders.

The chunks are ``text`` examples with the loss on every token (the chat records keep theirs on the
answers). ``order: questions_first`` presents, in every epoch, the questions before the documents
(the pre-instruction-tuning order of Jiang et al., 2024); ``mixed`` shuffles them together.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from typing import Any

from lmforge.config import DocumentsMixSpec
from lmforge.data.facts import short_names
from lmforge.data.questions import spell_out
from lmforge.engine.tokenize import TokenizedExample
from lmforge.records import Record, text_record

SENTENCE = re.compile(r"(?<=[.;:!?])\s+(?=[(A-Z0-9\"'])")
"""Between two sentences of a paragraph (the full-name substitution works sentence by sentence)."""
ENUMERATOR = re.compile(r"^(\(\w{1,4}\)|\w{1,3}[.)])\s+")
"""A paragraph's number, ``(2) `` or ``3. ``, kept in front of the sentence it starts."""


def document_texts(records: Iterable[Record], spec: DocumentsMixSpec, seed: int) -> list[Record]:
    """``text`` records of every form of every chunk of the ``text`` records in ``records``."""
    texts = [r for r in records if r.get("kind") == "text" and r.get("text", "").strip()]
    names: dict[str, str] = {}
    for record in texts:
        names.update({k: v for k, v in short_names(record["text"]).items() if k not in names})
    titles = sorted({full for short, full in names.items() if short.lower().startswith("this ")})
    title = titles[0] if len(titles) == 1 else None
    rng = random.Random(f"{seed}/documents")
    out: list[Record] = []
    for record in texts:
        heading, paragraphs = _paragraphs(record)
        if spec.full_names:
            paragraphs = [_spelled(p, names) for p in paragraphs]
        head = _header(heading, title) if spec.headings else None
        for copy, order in enumerate(_orders(paragraphs, spec.copies, rng)):
            for number, chunk in enumerate(_chunks(order, spec.chunk_words)):
                text = "\n\n".join([head, *chunk] if head else chunk)
                meta = {"copy": copy, "chunk": number, "document": record["id"]}
                out.append(text_record(text, record.get("source") or {}, record.get("domain"), meta))
    return out


def _orders(paragraphs: list[str], copies: int, rng: random.Random) -> list[list[str]]:
    """``copies`` orders of ``paragraphs``: as written, then seeded shuffles, each new while one can be."""
    orders = [list(paragraphs)]
    for _ in range(copies - 1):
        order = list(paragraphs)
        for _attempt in range(10):
            rng.shuffle(order)
            if order not in orders:
                break
        orders.append(list(order))
    return orders


def _paragraphs(record: Record) -> tuple[str | None, list[str]]:
    """The document's heading (its source heading or its first ``#`` line) and its other paragraphs."""
    heading = (record.get("source") or {}).get("heading")
    paragraphs = []
    for block in re.split(r"\n\s*\n", record["text"]):
        block = " ".join(block.split())
        if not block:
            continue
        if block.startswith("#"):
            heading = heading or block.lstrip("#").strip()
            continue
        paragraphs.append(block)
    return heading, paragraphs


def _header(heading: str | None, title: str | None) -> str | None:
    if heading and title and title.lower() not in heading.lower():
        return f"{title[0].upper()}{title[1:]} — {heading}"
    return heading or (title[0].upper() + title[1:] if title else None)


def _spelled(paragraph: str, names: dict[str, str]) -> str:
    """Each sentence of ``paragraph`` with its first defined short name spelled out."""
    spelled = []
    for sentence in SENTENCE.split(paragraph):
        number = ENUMERATOR.match(sentence)
        head = number.group(0) if number else ""
        spelled.append(head + spell_out(sentence[len(head) :], names))
    return " ".join(spelled)


def _chunks(paragraphs: list[str], chunk_words: int) -> list[list[str]]:
    """Consecutive paragraphs grouped up to ``chunk_words`` words (a longer paragraph is a chunk of its own)."""
    chunks: list[list[str]] = []
    words = 0
    for paragraph in paragraphs:
        n = len(paragraph.split())
        if chunks and words + n <= chunk_words:
            chunks[-1].append(paragraph)
            words += n
        else:
            chunks.append([paragraph])
            words = n
    return chunks


def tokenize_texts(tokenizer: Any, records: list[Record], max_length: int) -> list[TokenizedExample]:
    """One example per text record: its tokens (BOS when the tokenizer has one, EOS at the end), loss on all."""
    examples = []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for record in records:
        ids = bos + tokenizer(record["text"], add_special_tokens=False)["input_ids"] + eos
        kept = ids[:max_length]
        examples.append(TokenizedExample(input_ids=kept, labels=list(kept), truncated=len(ids) > max_length))
    return examples


class QuestionsFirstSampler:
    """Every epoch, the first ``questions`` examples (length-grouped, seeded by epoch), then the rest."""

    def __init__(self, lengths: list[int], questions: int, batch_size: int, seed: int):
        from lmforge.engine.batches import EpochSeededLengthSampler

        self.parts = [
            (0, EpochSeededLengthSampler(lengths[:questions], batch_size, seed)),
            (questions, EpochSeededLengthSampler(lengths[questions:], batch_size, seed + 1)),
        ]
        self.n = len(lengths)

    def set_epoch(self, epoch: int) -> None:
        for _, sampler in self.parts:
            sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter([offset + index for offset, sampler in self.parts for index in sampler])


def mix_documents(
    recipe: Any, run_path: Any, tokenizer: Any, examples: list[TokenizedExample], counts: dict[str, int]
) -> tuple[list[TokenizedExample], QuestionsFirstSampler | None]:
    """sft's chat ``examples`` followed by the documents' text examples when ``sft.documents`` is on, and the
    sampler that orders them (None: the stage's own shuffle). ``counts`` gains ``document_examples``."""
    from lmforge.log import stage_log
    from lmforge.records import read_records
    from lmforge.rundir import split_path

    spec: DocumentsMixSpec = recipe.sft.documents
    if not spec.enabled:
        return examples, None
    path = split_path(run_path, spec.split, "sft.documents")
    texts = document_texts(read_records(path), spec, recipe.seed)
    if not texts:
        from lmforge.errors import StageError

        raise StageError(f"sft.documents.split {spec.split!r} ({path}) holds no text records to mix in")
    extra = tokenize_texts(tokenizer, texts, recipe.sft.max_length)
    counts["document_examples"] = len(extra)
    counts["examples"] += len(extra)
    counts["tokens"] += sum(len(e.input_ids) for e in extra)
    counts["trainable_tokens"] += sum(e.trainable for e in extra)
    counts["truncated"] += sum(e.truncated for e in extra)
    stage_log("sft").info(
        f"documents: {len(extra)} text chunks ({spec.copies} form(s) of {len({t['meta']['document'] for t in texts})} "
        f"document(s)) mixed in, order {spec.order}"
    )
    combined = [*examples, *extra]
    if spec.order == "mixed":
        return combined, None
    lengths = [len(e.input_ids) for e in combined]
    return combined, QuestionsFirstSampler(lengths, len(examples), recipe.sft.batch_size, recipe.seed)
