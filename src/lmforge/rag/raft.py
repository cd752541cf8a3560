"""RAFT-style training data: teach the model to read retrieved passages, quote them and cite them.

For every QA record of the source split that names its source document (``meta.<gold_key>``, else
``meta.source`` / ``document`` / ``doc``) and whose short answer (``meta.answer``, else its own final
reply) occurs in that document, an example is built whose prompt holds the *gold* passage (the
chunk of that document containing the answer) among 1-3 *distractors* (passages retrieved for the
question from other documents, so they look relevant), in a seeded random order. The answer quotes
the gold passage around the answer and cites its number, then gives the record's own answer::

    According to [2], "...completed at least 13 years of contributions, including credited...".
    A retirement pension requires at least 13 years of contributions.

In a share of examples (``no_gold_share``, 20% by default) the gold passage is left out; the answer
is then the record's answer with no citation (the model must fall back on what it learned, as in
RAFT) or, with ``no_gold_answer: abstain``, a statement that the passages do not answer.

With ``closed_book`` (on by default, see :func:`closed_book_copies`) every question also appears
without passages, answered plainly: the model learns the facts themselves (the ``tuned`` variant
answers without retrieval) and learns that a reply cites a passage only when one was given.

After Zhang et al., "RAFT: Adapting Language Model to Domain Specific RAG" (2024).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

from lmforge.config import IndexSpec, RaftSpec
from lmforge.data.clean import with_system_prompt
from lmforge.rag.chunk import Chunk, chunk_records
from lmforge.rag.cloze import cloze_records
from lmforge.rag.quality import from_document, gold_document
from lmforge.records import Record, chat_record, context_messages

ABSTAIN = "The passages do not answer this question."


def gold_passage(chunks: list[Chunk], answers: list[str]) -> Chunk | None:
    """The first chunk (of the gold document's chunks) whose text contains one of ``answers``."""
    for chunk in chunks:
        lowered = chunk.text.lower()
        if any(answer.lower() in lowered for answer in answers if answer):
            return chunk
    return None


def quote_around(text: str, answer: str, max_words: int) -> str | None:
    """At most ``max_words`` words of the sentence of ``text`` that contains ``answer``, centred on it.

    Returns None when ``answer`` is not in ``text``. Cut ends are marked with ``...``.
    """
    lowered = text.lower()
    at = lowered.find(answer.lower())
    if at < 0:
        return None
    sentence_start = max((m.end() for m in re.finditer(r"[.!?;]\s", text[:at])), default=0)
    ends = [m.start() + 1 for m in re.finditer(r"[.!?;](\s|$)", text[at + len(answer) :])]
    sentence_end = at + len(answer) + ends[0] if ends else len(text)
    sentence = " ".join(text[sentence_start:sentence_end].split())
    words = sentence.split()
    first = len(" ".join(text[sentence_start:at].split()).split())  # words before the answer
    span = len(answer.split())
    width = max(max_words, span)
    low = max(0, first - (width - span) // 2)
    high = min(len(words), low + width)
    low = max(0, high - width)
    quote = " ".join(words[low:high])
    if answer.lower() not in quote.lower():  # the answer starts inside a word: keep the whole sentence
        quote, low, high = sentence, 0, len(words)
    return ("..." if low > 0 else "") + quote + ("..." if high < len(words) else "")


def cited_answer(number: int, quote: str, answer: str) -> str:
    """The reply of a RAFT example with the gold passage: a cited quote, then the answer."""
    if not quote.endswith("..."):
        quote = quote.rstrip(".;")
    return f'According to [{number}], "{quote}". {answer.strip()}'


def build_raft_records(
    records: list[Record],
    retrieved: list[list[dict[str, Any]]],
    chunks: list[Chunk],
    spec: RaftSpec,
    gold_key: str,
    seed: int,
    closed_book: bool = False,
) -> tuple[list[Record], dict[str, Any]]:
    """RAFT examples for ``records`` (``retrieved[i]``: passages retrieved for record i's question, best first).

    Args:
        closed_book: also add every chat record as it is (no passages, its plain answer), marked
            ``meta.raft.closed_book``.

    Returns:
        The new chat records (meta keeps the source record's and adds ``raft``: whether the gold
        passage is in the prompt and the passage ids), and counts (examples, with/without gold,
        closed-book copies, questions skipped per reason).
    """
    by_document: dict[str, list[Chunk]] = {}
    out: list[Record] = []
    skipped: Counter[str] = Counter()
    with_gold = 0
    closed = 0
    for record, passages in zip(records, retrieved, strict=True):
        meta = record.get("meta") or {}
        if closed_book and record["kind"] == "chat" and any(m["role"] == "assistant" for m in record["messages"]):
            raft_meta = {"gold": False, "passages": [], "closed_book": True}
            plain = chat_record(record["messages"], record["source"], record.get("domain"), {**meta, "raft": raft_meta})
            out.append(plain)
            closed += 1
        target = gold_document(meta, gold_key)
        if record["kind"] != "chat" or not target:
            skipped[f"no meta.{gold_key} (nor source, document, doc) naming its document"] += 1
            continue
        last = max((i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"), default=None)
        # The short answer to find in the document: meta.answer, else the record's own final reply.
        answer = meta.get("answer") or (record["messages"][last]["content"] if last is not None else None)
        if not answer:
            skipped["no answer (meta.answer or an assistant reply)"] += 1
            continue
        if target not in by_document:
            by_document[target] = [c for c in chunks if from_document(c.path, target)]
        answers = [str(answer), *[str(a) for a in meta.get("aliases", [])]]
        gold = gold_passage(by_document[target], answers)
        if gold is None:
            skipped["answer not found in its document's chunks"] += 1
            continue
        pool = [p for p in passages if not from_document(p["source"]["path"], target)][: 2 * spec.max_distractors]
        prompt, reference = record["messages"][:last], record["messages"][last]["content"]
        for draw in range(spec.examples_per_question):
            rng = random.Random(f"{seed}:{record['id']}:{draw}")
            distractors = rng.sample(pool, min(rng.randint(spec.min_distractors, spec.max_distractors), len(pool)))
            include_gold = rng.random() >= spec.no_gold_share or not distractors
            shown = [*distractors, _as_passage(gold)] if include_gold else list(distractors)
            rng.shuffle(shown)
            if include_gold:
                number = next(i for i, p in enumerate(shown, start=1) if p["id"] == gold.id)
                quote = next(q for a in answers if (q := quote_around(gold.text, a, spec.quote_words)))
                reply = cited_answer(number, quote, reference)
                with_gold += 1
            else:
                reply = reference if spec.no_gold_answer == "memorized" else ABSTAIN
            messages = [*context_messages(prompt, shown), {"role": "assistant", "content": reply}]
            raft_meta = {"gold": include_gold, "passages": [p["id"] for p in shown]}
            out.append(chat_record(messages, record["source"], record.get("domain"), {**meta, "raft": raft_meta}))
    stats = {
        "questions": len(records),
        "examples": len(out),
        "with_gold": with_gold,
        "without_gold": len(out) - with_gold - closed,
        "closed_book": closed,
        "skipped": dict(skipped),
    }
    return out, stats


def main_domain(documents: list[Record]) -> str | None:
    """The most common domain of the indexed documents (``ask`` uses its system prompt)."""
    domains = Counter(record.get("domain") for record in documents if record.get("domain"))
    return domains.most_common(1)[0][0] if domains else None


def raft_cloze(chunks: list[Chunk], spec: IndexSpec, recipe: Any, domain: str | None) -> list[Record]:
    """The fill-in-the-blank questions (``raft.cloze_per_chunk``) to build RAFT examples from, with the
    domain's system prompt like the recipe's own questions."""
    if not spec.raft.cloze_per_chunk:
        return []
    cloze = cloze_records(chunks, spec.raft.cloze_per_chunk, recipe.seed, domain)
    return [with_system_prompt(record, recipe.data.system_prompts) for record in cloze]


def generated_questions(recipe: Any, splits: dict[str, list[Record]]) -> list[Record]:
    """The data stage's questions about the documents (``data.questions``) that RAFT also builds examples
    from: ``index.raft.generated_per_fact`` wordings of each fact (none when either is off)."""
    per_fact = recipe.index.raft.generated_per_fact
    if not per_fact or not recipe.data.writes_questions():
        return []
    taken: Counter[str] = Counter()
    chosen = []
    for record in splits.get(recipe.data.questions.split, []):
        fact = (record.get("meta") or {}).get("fact", record["id"])
        if taken[fact] < per_fact:
            taken[fact] += 1
            chosen.append(record)
    return chosen


def build_generated_raft(
    recipe: Any, generated: list[Record], search: Any, chunks: list[Chunk]
) -> tuple[list[Record], dict[str, Any]]:
    """RAFT examples of the generated questions: one draw each, no closed-book copies (sft trains the split).

    ``search(questions, depth)`` gives the passages retrieved per question (the index stage's hybrid search,
    or plan's BM25 preview), best first.
    """
    retrieved = search(last_questions(generated), raft_search_depth(recipe.index))
    spec = recipe.index.raft.model_copy(update={"examples_per_question": 1})
    return build_raft_records(generated, retrieved, chunks, spec, recipe.index.gold_key, recipe.seed, False)


def closed_book_copies(recipe: Any) -> bool:
    """Whether the RAFT split also holds the plain questions: ``index.raft.closed_book``, else on unless
    ``sft.splits`` holds the RAFT source split itself (whichever stages this run selects, so the split
    written does not depend on ``--set stages=...``)."""
    raft = recipe.index.raft
    if raft.closed_book is not None:
        return raft.closed_book
    return raft.source_split not in recipe.sft.splits


def _as_passage(chunk: Chunk) -> dict[str, Any]:
    return {"id": chunk.id, "source": chunk.source(), "text": chunk.text, "score": 0.0}


def raft_search_depth(spec: IndexSpec) -> int:
    """Passages retrieved per question to draw RAFT distractors from (the pool keeps twice the most used)."""
    return max(2 * spec.raft.max_distractors + 4, spec.top_k)


def last_questions(records: list[Record]) -> list[str]:
    """The last user turn of each chat record (empty for records without one)."""
    questions = []
    for record in records:
        users = [m["content"] for m in record.get("messages", []) if m["role"] == "user"]
        questions.append(users[-1] if users else "")
    return questions


def preview_raft_records(
    documents: list[Record],
    records: list[Record],
    recipe: Any,
    count_tokens: Any,
    budget: int,
) -> tuple[list[Record], dict[str, Any]]:
    """The RAFT examples the index stage would build, before any index exists (for ``lmforge plan``).

    The documents are chunked as the stage chunks them (``budget``: its chunk size in the embedding
    model's tokens) and the examples are built by the same :func:`build_raft_records`; only the
    distractors come from a plain BM25 ranking instead of the stage's hybrid search, so the examples'
    number, passages per prompt and lengths match the stage's while which distractors appear may differ.
    """
    spec = recipe.index
    chunks = chunk_records(documents, budget, spec.chunk.overlap, count_tokens)
    records = records + raft_cloze(chunks, spec, recipe, main_domain(documents))
    ranked = bm25_rank(chunks, last_questions(records), raft_search_depth(spec))
    retrieved = [[_as_passage(chunks[i]) for i in ranking] for ranking in ranked]
    closed_book = closed_book_copies(recipe)
    return build_raft_records(records, retrieved, chunks, spec.raft, spec.gold_key, recipe.seed, closed_book)


def preview_raft_split(recipe: Any, splits: dict[str, list[Record]]) -> tuple[list[Record], str] | None:
    """The RAFT split a recipe's index stage will write, previewed from ``splits`` (the data stage's) with
    :func:`preview_raft_records`, and a note saying what it holds; None when the recipe writes none or
    ``splits`` already has it."""
    index = recipe.index
    if "index" not in recipe.stages or not index.raft.enabled or index.raft.split in splits:
        return None
    documents = [r for name in index.documents for r in splits.get(name, []) if r["kind"] == "text"]
    records = [r for r in splits.get(index.raft.source_split, []) if r["kind"] == "chat"]
    count_tokens, budget, how = _chunk_tokenizer(index)
    built, stats = preview_raft_records(documents, records, recipe, count_tokens, budget)
    generated = generated_questions(recipe, splits)
    if generated:  # one example per generated fact, as the index stage adds (build_generated_raft)
        chunks = chunk_records(documents, budget, index.chunk.overlap, count_tokens)

        def search(questions: list[str], depth: int) -> list[list[dict[str, Any]]]:
            return [[_as_passage(chunks[i]) for i in ranking] for ranking in bm25_rank(chunks, questions, depth)]

        more, more_stats = build_generated_raft(recipe, generated, search, chunks)
        built += more
        stats["examples"] += more_stats["examples"]
        stats["without_gold"] += more_stats["without_gold"]
        how += f"; {more_stats['examples']} of them from the questions written about the documents"
    skipped = "; ".join(f"{n} skipped: {why}" for why, n in stats["skipped"].items())
    note = (
        f"{index.raft.split} (written later by the index stage, estimated now with BM25 distractors{how}): "
        f"{stats['examples']} examples from {stats['questions']} questions of {index.raft.source_split!r}, "
        f"{stats['without_gold']} without the gold passage"
        + (f", {stats['closed_book']} closed-book (no passages)" if stats["closed_book"] else "")
    )
    return built, note + (f"; {skipped}" if skipped else "")


def _chunk_tokenizer(index: IndexSpec) -> tuple[Any, int, str]:
    """How the index stage counts chunk tokens: its embedding model's tokenizer, else words (noted)."""
    from lmforge.errors import ModelError
    from lmforge.rag.chunk import count_words

    try:
        from lmforge.rag.embed import load_embedder

        embedder = load_embedder(index.embedding.model)
    except (ModelError, ImportError) as exc:
        return count_words, index.chunk.max_tokens, f"; chunks counted in words: {exc}"
    return embedder.count_tokens, min(index.chunk.max_tokens, embedder.max_tokens - 2), ""


def bm25_rank(chunks: list[Chunk], queries: list[str], depth: int, k1: float = 1.2, b: float = 0.75) -> list[list[int]]:
    """Indices of the ``depth`` best chunks per query by Okapi BM25 over lower-cased word tokens."""
    import math

    docs = [Counter(_words(c.search_text())) for c in chunks]
    lengths = [sum(d.values()) for d in docs]
    mean = sum(lengths) / max(len(docs), 1) or 1.0
    frequency: Counter[str] = Counter(word for d in docs for word in d)
    idf = {w: math.log(1 + (len(docs) - n + 0.5) / (n + 0.5)) for w, n in frequency.items()}
    ranked = []
    for query in queries:
        terms = set(_words(query)) & idf.keys()
        scores = []
        for i, d in enumerate(docs):
            norm = k1 * (1 - b + b * lengths[i] / mean)
            score = sum(idf[t] * d[t] * (k1 + 1) / (d[t] + norm) for t in terms if t in d)
            scores.append((-score, i))
        ranked.append([i for _, i in sorted(scores)[:depth]])
    return ranked


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())
