"""Preference pairs from a model's own answers: the gold answer preferred to a wrong answer the model gives.

Each training question with a short gold answer (``meta.answer``, else a reply of at most 10 words, as eval
reads it; ``meta.aliases`` count too) is asked once greedily and ``samples`` times with sampling. An answer
is *right* when it contains the gold answer — the rule eval's ``qa`` task scores with
(:func:`lmforge.evaluate.metrics.contains_answer`) — and *wrong* otherwise. A question the model gets
wrong at least once gives one pair:

* chosen: the record's own answer (``chosen: gold``), or a right sampled answer when there is one
  (``chosen: sample``: text in the model's own words);
* rejected: the greedy answer when it is wrong (what the model says when evaluated), else the first
  wrong sample.

Questions without a short answer, and those answered right every time, give no pair; both are
counted. With retrieval (``rag``), each question is asked with its retrieved passages (the prompt of
``lmforge ask``), and an answer is right only when it also cites a passage of the question's source
document; the gold answer is chosen with that passage's number cited, and questions whose source
document was not retrieved are left out (counted).

With a judge (``judge``: synth's judge, a teacher grading 1-5 how faithful an answer is to the gold
one), every distinct candidate is graded too: a candidate is right only when it is also graded at least
``min_score``; the lowest-graded wrong candidate is rejected and the highest-graded right one is the
sampled choice (ties: the earlier, greedy first). A candidate with no usable grade keeps the rule above.

The pairs are chat records with ``meta.rejected``, the format preference datasets are read into, so the
stage trains on built and read pairs alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lmforge.config import PairsSpec
from lmforge.evaluate.metrics import contains_answer
from lmforge.evaluate.tasks import split_chat
from lmforge.models import generate_replies, sample_replies
from lmforge.rag.quality import from_document, gold_document
from lmforge.records import CITATION, Message, Record, chat_record, context_messages, short_answer

COUNTS = ("questions", "no_short_answer", "gold_not_retrieved", "asked", "always_right", "pairs", "chosen_sampled")
JUDGE_COUNTS = ("judged", "judge_unusable", "graded_wrong")
"""With a judge: candidates graded, those it gave no usable grade, those containing the gold answer graded too low."""

Judge = Callable[[list[tuple[str, str, str]]], list[tuple[int | None, str]]]
"""Grades ``(reference, question, answer)`` cases: ``(score 1-5, reason)`` or ``(None, why not)`` each."""


@dataclass
class BuiltPairs:
    records: list[Record]
    """One chat record (prompt + chosen answer, ``meta.rejected``) per pair, in the questions' order."""
    counts: dict[str, int]
    """``questions`` read, ``no_short_answer``, ``asked``, ``always_right``, ``pairs``, ``chosen_sampled``."""


def build_pairs(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    spec: PairsSpec,
    seed: int,
    contexts: dict[str, list[dict[str, Any]]] | None = None,
    gold_key: str = "article",
    judge: Judge | None = None,
) -> BuiltPairs:
    """Ask ``model`` every checkable question of ``records`` and pair the gold answer with a wrong one.

    Args:
        contexts: with retrieval, the passages retrieved for each record (by id); ``gold_key`` names the
            ``meta`` key of a record's source document (``index.gold_key``).
        judge: grades the candidates (``spec.judge`` says the least grade of a right answer).
    """
    counts: Counter[str] = Counter(questions=len(records))
    references: dict[str, str] = {}  # what the judge grades against: the gold answer (and the cited passages)
    gold_numbers: dict[str, list[int]] = {}  # with retrieval: the numbers of the source document's passages
    asked = checkable(records, contexts, gold_key, counts, references, gold_numbers)
    asked = asked[: spec.limit] if spec.limit else asked
    counts["asked"] = len(asked)
    candidates = _candidates(model, tokenizer, [prompt for _, prompt, _, _, _ in asked], spec, seed)
    grades: list[dict[str, int | None]] = [{} for _ in asked]
    if judge is not None and spec.judge is not None:
        grades = _graded(judge, asked, candidates, references, counts)
    least = spec.judge.min_score if spec.judge is not None else 1
    pairs = []
    for (record, prompt, answer, aliases, gold), replies, grade in zip(asked, candidates, grades, strict=True):
        cites = gold_numbers.get(record["id"])
        right, wrong = [], []
        for reply in replies:
            fact = _is_right(reply, answer, aliases, cites)
            graded_low = grade.get(reply) is not None and grade[reply] < least  # type: ignore[operator]
            graded_low = graded_low and _plain(reply) != _plain(gold)  # the gold answer itself stays right
            counts["graded_wrong"] += fact and graded_low
            (right if fact and not graded_low else wrong).append(reply)
        if not wrong:
            counts["always_right"] += 1
            continue
        if cites is not None:
            gold = f"{gold.rstrip()} [{cites[0]}]"
        # The lowest-graded wrong answer (ungraded after graded), the highest-graded right one; ties: the first.
        rejected = min(wrong, key=lambda reply: (grade.get(reply) is None, grade.get(reply) or 0))
        best = max(right, key=lambda reply: (grade.get(reply) is not None, grade.get(reply) or 0), default=None)
        chosen = best if spec.chosen == "sample" and best is not None else gold
        counts["chosen_sampled"] += chosen != gold
        meta = {**(record.get("meta") or {}), "rejected": rejected, "pair_from": record["id"]}
        if judge is not None:
            meta["judge"] = {"chosen": grade.get(chosen), "rejected": grade.get(rejected)}
        messages = [*prompt, Message(role="assistant", content=chosen)]
        pairs.append(chat_record(messages, record["source"], record.get("domain"), meta))
    counts["pairs"] = len(pairs)
    kept = COUNTS + (JUDGE_COUNTS if judge is not None else ())
    return BuiltPairs(pairs, {key: counts[key] for key in kept})


Asked = tuple[Record, list[Message], str, list[str], str]
"""A question put to the model: the record, its prompt, the short answer, its aliases and the gold reply."""


def checkable(
    records: list[Record],
    contexts: dict[str, list[dict[str, Any]]] | None,
    gold_key: str,
    counts: Counter[str],
    references: dict[str, str],
    gold_numbers: dict[str, list[int]],
) -> list[Asked]:
    """The records with a short answer to check replies against (with retrieval: and their source passage
    retrieved, whose text goes to ``references`` and numbers to ``gold_numbers``)."""
    asked: list[Asked] = []
    for record in records:
        meta = record.get("meta") or {}
        answer = short_answer(record)
        if answer is None:
            counts["no_short_answer"] += 1
            continue
        prompt, gold, _ = split_chat(record)
        aliases = [str(a) for a in meta.get("aliases", []) if isinstance(a, (str, int, float))]
        if contexts is not None:
            passages, source = contexts.get(record["id"], []), gold_document(meta, gold_key)
            numbers = [n for n, p in enumerate(passages, 1) if source and from_document(p["source"]["path"], source)]
            if not numbers:
                counts["gold_not_retrieved"] += 1
                continue
            gold_numbers[record["id"]] = numbers
            references[record["id"]] = "\n\n".join(passages[n - 1]["text"] for n in numbers)
            prompt = context_messages(prompt, passages)
        asked.append((record, prompt, answer, aliases, gold))
    return asked


def _candidates(
    model: Any, tokenizer: Any, prompts: list[list[Message]], spec: PairsSpec, seed: int
) -> list[list[str]]:
    """Per prompt, the model's greedy reply and ``spec.samples`` sampled ones (empty replies dropped)."""
    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(TextColumn("dpo: pairs {task.description}"), *columns, transient=True) as bar:
        task = bar.add_task("greedy answers", total=len(prompts))
        shared = {"max_new_tokens": spec.max_new_tokens, "batch_size": spec.batch_size, "data_parallel": True}
        shared["on_batch"] = lambda n: bar.advance(task, n)
        greedy = generate_replies(model, tokenizer, prompts, **shared)
        bar.reset(task, total=len(prompts), description=f"{spec.samples} samples each")
        sampled = sample_replies(
            model, tokenizer, prompts, spec.samples, spec.temperature, spec.top_p, seed=seed, **shared
        )
    return [
        [reply for reply in [first, *others] if reply.strip()] for first, others in zip(greedy, sampled, strict=True)
    ]


def _graded(
    judge: Judge,
    asked: list[Asked],
    candidates: list[list[str]],
    references: dict[str, str],
    counts: Counter[str],
) -> list[dict[str, int | None]]:
    """The judge's grade of each distinct candidate of each question (None: no usable grade)."""
    cases, where = [], []
    for index, ((record, _, _, _, gold), replies) in enumerate(zip(asked, candidates, strict=True)):
        question = split_chat(record)[2]
        reference = "\n\n".join(part for part in (references.get(record["id"]), f"Gold answer: {gold}") if part)
        for reply in dict.fromkeys(replies):
            cases.append((reference, question, reply))
            where.append((index, reply))
    grades: list[dict[str, int | None]] = [{} for _ in asked]
    for (index, reply), (score, _) in zip(where, judge(cases) if cases else [], strict=True):
        grades[index][reply] = score
        counts["judged"] += score is not None
        counts["judge_unusable"] += score is None
    return grades


def _plain(text: str) -> str:
    return " ".join(text.split()).casefold()


def _is_right(reply: str, answer: str, aliases: list[str], cites: list[int] | None) -> bool:
    """The reply contains the gold answer and, with retrieval (``cites``), cites a passage of its source document."""
    if not contains_answer(reply, answer, aliases):
        return False
    return cites is None or any(int(match.group(1)) in cites for match in CITATION.finditer(reply))


def retrieved_contexts(recipe: Any, records: list[Record], needed_by: str) -> dict[str, list[dict[str, Any]]]:
    """The passages the run's index retrieves for each record's last question (as ``lmforge ask`` does), by id."""
    from lmforge.rag.raft import last_questions
    from lmforge.rag.retrieve import open_retriever

    retriever, _ = open_retriever(recipe.run_path(), needed_by=needed_by)
    found = retriever.search(last_questions(records), recipe.index.top_k, recipe.index.mode)
    return {record["id"]: passages for record, passages in zip(records, found, strict=True)}
