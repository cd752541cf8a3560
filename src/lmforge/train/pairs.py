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
counted. The pairs are chat records with ``meta.rejected``, the format preference datasets are read
into, so the stage trains on built and read pairs alike.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lmforge.config import PairsSpec
from lmforge.evaluate.metrics import contains_answer
from lmforge.models import generate_replies, sample_replies
from lmforge.records import Message, Record, chat_record

COUNTS = ("questions", "no_short_answer", "asked", "always_right", "pairs", "chosen_sampled")


@dataclass
class BuiltPairs:
    records: list[Record]
    """One chat record (prompt + chosen answer, ``meta.rejected``) per pair, in the questions' order."""
    counts: dict[str, int]
    """``questions`` read, ``no_short_answer``, ``asked``, ``always_right``, ``pairs``, ``chosen_sampled``."""


def build_pairs(model: Any, tokenizer: Any, records: list[Record], spec: PairsSpec, seed: int) -> BuiltPairs:
    """Ask ``model`` every checkable question of ``records`` and pair the gold answer with a wrong one."""
    counts: Counter[str] = Counter(questions=len(records))
    asked: list[tuple[Record, list[Message], str, list[str]]] = []
    for record in records:
        meta = record.get("meta") or {}
        if not isinstance(meta.get("answer"), (str, int, float)) or not str(meta["answer"]).strip():
            counts["no_short_answer"] += 1
            continue
        last = max(i for i, m in enumerate(record["messages"]) if m["role"] == "assistant")
        aliases = [str(a) for a in meta.get("aliases", []) if isinstance(a, (str, int, float))]
        asked.append((record, list(record["messages"][:last]), str(meta["answer"]), aliases))
    asked = asked[: spec.limit] if spec.limit else asked
    counts["asked"] = len(asked)
    prompts = [prompt for _, prompt, _, _ in asked]
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
    for (record, prompt, answer, aliases), first, others in zip(asked, greedy, sampled, strict=True):
        right = [reply for reply in [first, *others] if contains_answer(reply, answer, aliases)]
        wrong = [reply for reply in [first, *others] if reply.strip() and not contains_answer(reply, answer, aliases)]
        if not wrong:
            counts["always_right"] += 1
            continue
        gold = record["messages"][len(prompt)]["content"]
        chosen = right[0] if spec.chosen == "sample" and right else gold
        counts["chosen_sampled"] += chosen != gold
        meta = {**(record.get("meta") or {}), "rejected": wrong[0], "pair_from": record["id"]}
        messages = [*prompt, Message(role="assistant", content=chosen)]
        pairs.append(chat_record(messages, record["source"], record.get("domain"), meta))
    counts["pairs"] = len(pairs)
    return BuiltPairs(pairs, {key: counts[key] for key in COUNTS})
