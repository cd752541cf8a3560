"""Rewording: the base model rewrites the rule-made questions in its own words, and sft trains on both.

The rule-made questions (``data.questions``) stay close to the sentence they were cut from ("Members of
the Governing Board serve a term of how many years?"); a user asks in other words ("How long is a board
member's term?"). A fact learned from one family of wordings is answered in that family and seldom in
another (docs/TRAINING.md), so more varied wordings per fact are the lever. A small instruct model asked
"rewrite this question" answers it instead; continuing a few-shot text of question/rewrite pairs, it
rewords. So each question is put after a handful of example rewrites (generic ones, no domain's
vocabulary; another handful per ``per_question``) and the model's greedy line is the candidate.

A candidate is kept only when it is still one question that asks for the same kind of fact and does not
give the answer away: it ends with a question mark, has 4-40 words, asks with a word that suits the
fact's kind (``when`` for a date, ``how many/long`` for a count or duration, ``which/who/what`` for a
name), brings no number the question did not have and no word of the answer the question did not have,
keeps at least two of the question's content words, and is no near-copy (word Jaccard >= 0.8) of the
question or of a rewording already kept for the fact. Last, like every generated question, it may not
(nearly) repeat a question of an evaluation split. Rewrites are cached per base model in
``$LMFORGE_HOME/reword/`` (question by question, so another recipe on the same model asks only what is
new) and the kept records are written to ``sft/reworded.jsonl``.

The reader is trained on the rewordings as well (``reword.raft``, on): where the RAFT split holds an example
of a fact (``index.raft.generated_per_fact``), each kept rewording of that fact gets a copy of it, the same
passages and quoted answer under the reworded question, so the model practises finding a passage's sentence
from a question worded unlike it, which is how users ask.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.config import Recipe, RewordSpec
from lmforge.data.questions import drop_eval_overlap, normalise_question, word_jaccard
from lmforge.distributed import leader_runs
from lmforge.log import stage_log
from lmforge.records import Record, chat_record, read_records, reasked
from lmforge.rundir import StageDir, atomic_write_jsonl

EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Employees must register with the Tax Office within how many days of starting work?",
        "How long does a new employee have to register with the Tax Office?",
    ),
    (
        "Which authority approves the annual budget of the Port Council?",
        "Who signs off on the Port Council's yearly budget?",
    ),
    (
        "What percentage of each fine is paid into the Victims' Fund?",
        "How much of a fine goes to the Victims' Fund, as a share?",
    ),
    (
        "On what date does the fishing season open under the Coastal Act?",
        "When can fishing start each year according to the Coastal Act?",
    ),
    ("The library board has how many members?", "How many people sit on the library board?"),
    (
        'According to the Building Rules, what does "habitable room" mean?',
        "How do the Building Rules define a habitable room?",
    ),
    ("Which file stores the settings of the backup tool?", "Where does the backup tool keep its settings?"),
    (
        "For how many years does a licence remain valid under the Radio Act?",
        "Under the Radio Act, how long is a licence valid?",
    ),
)
"""Example rewrites the prompts are made of (written for lmforge; no domain's vocabulary)."""

SHOTS_PER_PROMPT = 5
HEADER = "Rewrite each question in other words. Keep its meaning and do not answer it.\n\n"

ASKS: dict[str, re.Pattern[str]] = {
    kind: re.compile(pattern)
    for kind, pattern in {
        "date": r"\b(when|what date|which date|what day|which day|what time)\b",
        "percent": r"\b(what|which) (percentage|percent|share|rate|proportion|fraction|part|portion)\b"
        r"|\bhow (much|high|large)\b",
        "duration": r"\bhow (long|many|much time|soon|often|old)\b"
        r"|\b(what|which) (period|length|term|time|number|duration|deadline|age)\b|\buntil when\b",
        "count": r"\bhow (many|much)\b|\bwhat number\b",
        "ordinal": r"\b(which|what)\b",
        "name": r"\b(which|what|who|whom|whose|where)\b",
        "definition": r"\b(what|how)\b",
    }.items()
}
"""Per fact kind (lmforge.data.facts): a question word a rewording must ask with."""

_STOP_TEXT = (
    "the a an of to in on at by for from with and or what which who whom whose when where how many much long does "
    "do did is are was were be been must may can shall should will would under according this that these those "
    "each every any its their his her it as per into than then there after before within until about"
)
STOPWORDS = frozenset(_STOP_TEXT.split())
_ASKING_TEXT = "take need have last apply happen allow require give get receive keep start begin"
ASKING_WORDS = frozenset(_ASKING_TEXT.split())
"""Verbs a rewording may bring beside the question's and the sentence's own words ("How long does it take ...")."""


def with_rewording(recipe: Recipe, records: list[Record], stage_file: Path) -> tuple[list[Record], int]:
    """sft's training ``records`` plus the base model's kept rewordings of the rule-made questions among them."""
    spec = recipe.sft.reword
    sources = _rule_made(records)
    if not spec.enabled or not sources:
        return records, 0
    asks = [(_question(r), shots) for r in sources for shots in shot_sets(r, sources, spec.per_question)]
    rewrites = leader_runs(lambda: _rewrites(recipe, spec, asks))
    reworded, rejected = reworded_records(sources, rewrites)
    reworded, repeats = _not_evaluated(recipe, reworded)
    rejected["repeats an evaluation question"] += repeats
    reading = reading_copies(records, reworded) if spec.raft else []
    atomic_write_jsonl(stage_file, reworded + reading)
    reasons = ", ".join(f"{reason} {n}" for reason, n in rejected.most_common() if n)
    stage_log("sft").info(
        f"reword: {len(reworded)} rewordings of {len(sources)} rule-made questions kept"
        + (f" (dropped: {reasons})" if reasons else "")
        + (f"; {len(reading)} of them also with the passages of their fact's RAFT example" if reading else "")
    )
    return records + reworded + reading, len(reworded) + len(reading)


def planned_note(spec: RewordSpec, records: list[Record]) -> str:
    """What ``lmforge plan`` says of the rewordings it cannot count before the base model has written them."""
    sources = _rule_made(records)
    with_raft = {_fact(r) for r in records if _is_raft(r)} if spec.raft else set()
    reading = sum(_fact(r) in with_raft for r in sources) * spec.per_question
    return (
        f"rewordings of {len(sources)} rule-made questions not counted (at most {len(sources) * spec.per_question}"
        + (f", and {reading} copies with passages" if reading else "")
        + "; about half pass the checks; generated when sft first runs)"
    )


def reworded_records(sources: list[Record], rewrites: dict[str, list[str]]) -> tuple[list[Record], Counter[str]]:
    """A chat record per kept rewrite of each source question (same answer), and the rejections by reason."""
    kept: list[Record] = []
    rejected: Counter[str] = Counter()
    asked_by_fact: dict[str, list[set[str]]] = {}
    for source in sources:  # every wording a fact already has, so a rewording that repeats one adds nothing
        asked_by_fact.setdefault(_fact(source), []).append(_words(_question(source)))
    for source in sources:
        question, meta = _question(source), source.get("meta", {})
        asked, reply = asked_by_fact[_fact(source)], str(source["messages"][-1]["content"])
        for rewrite in rewrites.get(question, []):
            reason = rejection(question, rewrite, str(meta.get("answer", "")), str(meta.get("kind", "")), reply)
            words = _words(rewrite)
            if reason is None and any(word_jaccard(words, other) >= 0.8 for other in asked):
                reason = "same wording as another"
            if reason is not None:
                rejected[reason] += 1
                continue
            asked.append(words)
            messages = [dict(m) for m in source["messages"]]
            messages[-2]["content"] = rewrite
            new_meta = {**meta, "generated": "reworded", "reworded_from": question}
            kept.append(chat_record(messages, source["source"], source.get("domain"), new_meta))
    return kept, rejected


def reading_copies(records: list[Record], reworded: list[Record]) -> list[Record]:
    """A copy of a fact's RAFT example (passages in the question turn, a quoted answer) under each kept
    rewording of that fact; the first RAFT example of each fact is the one copied."""
    examples: dict[str, Record] = {}
    for record in records:
        if _is_raft(record) and record.get("meta", {}).get("fact"):
            examples.setdefault(_fact(record), record)
    copies = []
    for rewording in reworded:
        example = examples.get(_fact(rewording))
        if example is None:
            continue
        messages = [dict(m) for m in example["messages"]]
        content = reasked(str(messages[-2]["content"]), _question(rewording))
        if content is None:
            continue  # not the prompt records.context_messages writes
        messages[-2]["content"] = content
        meta = {**example["meta"], "generated": "reworded", "reworded_from": rewording["meta"]["reworded_from"]}
        copies.append(chat_record(messages, example["source"], example.get("domain"), meta))
    return copies


def rejection(question: str, rewrite: str, answer: str, kind: str, reply: str = "") -> str | None:
    """Why ``rewrite`` is not kept as a rewording of ``question`` (whose short answer is ``answer`` and whose
    training reply, the source sentence, is ``reply``), or None."""
    words = rewrite.split()
    if not rewrite.endswith("?") or rewrite.count("?") != 1:
        return "not one question"
    if not 4 <= len(words) <= 40:
        return "too short or too long"
    lowered = rewrite.lower()
    if kind in ASKS and not ASKS[kind].search(lowered):
        return "asks for another kind of fact"
    if _numbers(rewrite) - _numbers(question):
        return "brings a number of its own"
    if (_words(answer) - _words(question) - STOPWORDS) & _words(rewrite):
        return "gives the answer away"
    content = _content(question)
    if len(content & _content(rewrite)) < min(2, len(content)):
        return "drifts from the question"
    known = {_stem(w) for w in _content(f"{question} {reply}") | ASKING_WORDS}
    if len({_stem(w) for w in _content(rewrite)} - known) > 1:
        return "brings words of its own"
    return None


def shot_sets(source: Record, sources: list[Record], per_question: int) -> list[int]:
    """Which sets of example rewrites ``source`` is asked with: the k-th wording of a fact starts at set
    ``k * per_question``, so a fact's wordings are reworded after different examples."""
    k = [_question(r) for r in sources if _fact(r) == _fact(source)].index(_question(source))
    return [(k * per_question + v) % len(EXAMPLES) for v in range(per_question)]


def prompt(question: str, shots: int) -> str:
    """The few-shot text whose continuation rewords ``question``, after the ``shots``-th set of examples."""
    start = (shots * 3) % len(EXAMPLES)
    examples = [EXAMPLES[(start + i) % len(EXAMPLES)] for i in range(SHOTS_PER_PROMPT)]
    body = "".join(f"Question: {q}\nRewrite: {r}\n\n" for q, r in examples)
    return f"{HEADER}{body}Question: {question}\nRewrite:"


def _rewrites(recipe: Recipe, spec: RewordSpec, asks: list[tuple[str, int]]) -> dict[str, list[str]]:
    """Each question's raw rewrites (one per set of examples it is asked with), generated where the cache
    lacks them."""
    cache = _cache_file(recipe, spec.max_new_tokens)
    found: dict[tuple[str, int], str] = {}
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines() if line.strip()]
        found = {(r["question"], r["shots"]): r["rewrite"] for r in rows}
    wanted = [ask for ask in dict.fromkeys(asks) if ask not in found]
    if wanted:
        found.update(_generate(recipe, wanted, spec.max_new_tokens))
        rows = [{"question": q, "shots": n, "rewrite": text} for (q, n), text in sorted(found.items())]
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(cache, rows)
    rewrites: dict[str, list[str]] = {}
    for question, shots in asks:
        rewrites.setdefault(question, []).append(found[(question, shots)])
    return rewrites


def _generate(recipe: Recipe, wanted: list[tuple[str, int]], max_new_tokens: int) -> dict[tuple[str, int], str]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lmforge.models import load_for_inference, resolve_model

    base = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
    stage_log("sft").info(f"reword: the base model rewords {len(wanted)} questions, once (cached per model)")
    model, tokenizer = load_for_inference(base, trust_remote_code=recipe.model.trust_remote_code)
    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(TextColumn("sft: rewording questions"), *columns, transient=True) as bar:
        task = bar.add_task("reword", total=len(wanted))
        advance: Callable[[int], None] = lambda n: bar.advance(task, n)  # noqa: E731
        texts = continue_texts(model, tokenizer, [prompt(q, v) for q, v in wanted], max_new_tokens, on_batch=advance)
    return dict(zip(wanted, texts, strict=True))


def continue_texts(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    max_new_tokens: int = 40,
    batch_size: int = 32,
    on_batch: Any = None,
) -> list[str]:
    """Greedy continuations of plain ``texts`` (no chat template: few-shot completion prompts), each cut at
    its first line break; batched like :func:`lmforge.models.generate_replies`."""
    from lmforge.models import rendered_replies

    bos = tokenizer.bos_token or ""
    adds_bos = bool(bos) and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
    prompts = [f"{bos}{text}" if adds_bos else text for text in texts]
    stop = {"stop_strings": ["\n"], "tokenizer": tokenizer}
    found = rendered_replies(model, tokenizer, prompts, max_new_tokens, batch_size, on_batch, False, stop)
    return [replies[0].split("\n")[0].strip() for replies in found]


def _cache_file(recipe: Recipe, max_new_tokens: int) -> Path:
    from lmforge.train.replay import model_cache_file

    return model_cache_file(recipe, "reword", HEADER, EXAMPLES, SHOTS_PER_PROMPT, max_new_tokens)


def _not_evaluated(recipe: Recipe, records: list[Record]) -> tuple[list[Record], int]:
    """``records`` without rewordings that (nearly) repeat a question of a split sft does not train on."""
    data = recipe.data
    written = StageDir.open(recipe.run_path(), "data").manifest.get("outputs", {}).get("splits", {})
    skip = {*recipe.sft.splits, *data.questions.from_splits}
    evaluation = [r for name, path in written.items() if name not in skip for r in read_records(path)]
    return drop_eval_overlap(records, evaluation, data.questions.overlap_threshold)


def _rule_made(records: list[Record]) -> list[Record]:
    seen: set[str] = set()
    sources = []
    for record in records:
        rule_made = record.get("kind") == "chat" and record.get("meta", {}).get("generated") == "rules"
        if rule_made and not _is_raft(record) and _question(record) not in seen:
            seen.add(_question(record))
            sources.append(record)
    return sources


def _is_raft(record: Record) -> bool:
    """A RAFT example (retrieved passages in its question turn), not a closed-book question."""
    return "raft" in record.get("meta", {})


def _question(record: Record) -> str:
    return str(record["messages"][-2]["content"])


def _fact(record: Record) -> str:
    return str(record.get("meta", {}).get("fact", _question(record)))


def _words(text: str) -> set[str]:
    return set(normalise_question(text).split())


def _content(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z][a-z'-]+", text.lower()) if len(w) > 3 and w not in STOPWORDS}


def _stem(word: str) -> str:
    """A crude stem, enough to match "publishes" with "published" and "filed" with "file"."""
    for ending in ("ing", "ed", "es", "s", "e"):
        if word.endswith(ending) and len(word) - len(ending) >= 4:
            return word[: -len(ending)]
    return word


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:[.,]\d+)*", text))
