"""Preference pairs from a model's own answers: the gold answer preferred to a wrong answer the model gives.

Each training question with a short gold answer (``meta.answer``, as QA sets carry; ``meta.aliases``
count too) is asked once greedily and ``samples`` times with sampling. An answer is *right* when it
contains the gold answer — the rule eval's ``qa`` task scores with
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
document was not retrieved are left out (counted). The pairs are chat records with ``meta.rejected``,
the format preference datasets are read into, so the stage trains on built and read pairs alike.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lmforge.config import PairsSpec
from lmforge.evaluate.metrics import contains_answer
from lmforge.evaluate.tasks import split_chat
from lmforge.models import generate_replies, sample_replies
from lmforge.rag.quality import from_document, gold_document
from lmforge.records import CITATION, Message, Record, chat_record, context_messages

COUNTS = ("questions", "no_short_answer", "gold_not_retrieved", "asked", "always_right", "pairs", "chosen_sampled")


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
) -> BuiltPairs:
    """Ask ``model`` every checkable question of ``records`` and pair the gold answer with a wrong one.

    Args:
        contexts: with retrieval, the passages retrieved for each record (by id); ``gold_key`` names the
            ``meta`` key of a record's source document (``index.gold_key``).
    """
    counts: Counter[str] = Counter(questions=len(records))
    asked: list[tuple[Record, list[Message], str, list[str], str]] = []
    gold_numbers: dict[str, list[int]] = {}  # with retrieval: the numbers of the source document's passages
    for record in records:
        meta = record.get("meta") or {}
        if not isinstance(meta.get("answer"), (str, int, float)) or not str(meta["answer"]).strip():
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
            prompt = context_messages(prompt, passages)
        asked.append((record, prompt, str(meta["answer"]), aliases, gold))
    asked = asked[: spec.limit] if spec.limit else asked
    counts["asked"] = len(asked)
    prompts = [prompt for _, prompt, _, _, _ in asked]
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
    pairs = []
    for (record, prompt, answer, aliases, gold), first, others in zip(asked, greedy, sampled, strict=True):
        cites = gold_numbers.get(record["id"])
        right = [reply for reply in [first, *others] if _is_right(reply, answer, aliases, cites)]
        wrong = [reply for reply in [first, *others] if reply.strip() and not _is_right(reply, answer, aliases, cites)]
        if not wrong:
            counts["always_right"] += 1
            continue
        if cites is not None:
            gold = f"{gold.rstrip()} [{cites[0]}]"
        chosen = right[0] if spec.chosen == "sample" and right else gold
        counts["chosen_sampled"] += chosen != gold
        meta = {**(record.get("meta") or {}), "rejected": wrong[0], "pair_from": record["id"]}
        messages = [*prompt, Message(role="assistant", content=chosen)]
        pairs.append(chat_record(messages, record["source"], record.get("domain"), meta))
    counts["pairs"] = len(pairs)
    return BuiltPairs(pairs, {key: counts[key] for key in COUNTS})


def _is_right(reply: str, answer: str, aliases: list[str], cites: list[int] | None) -> bool:
    """The reply contains the gold answer and, with retrieval (``cites``), cites a passage of its source document."""
    if not contains_answer(reply, answer, aliases):
        return False
    return cites is None or any(int(match.group(1)) in cites for match in CITATION.finditer(reply))
