"""Evaluation tasks. Each task owns its data (which records it reads and how) and its scoring.

=============  ================================  ===========================================  ==============
task           records                           per-question scores                          headline
=============  ================================  ===========================================  ==============
``qa``         chat; gold ``meta.answer`` or      ``correct`` (gold contained), ``exact``,     accuracy
               the last assistant turn;           ``f1`` (tokens), ``rouge_l``
               ``meta.aliases`` also count
``freeform``   chat; the last assistant turn is   ``rouge_l``, ``bleu`` (sentence)             rouge_l
               the reference
``extraction`` chat; gold ``meta.answer`` (an     ``valid_json``, ``fields`` (per field),      field_accuracy
               object or JSON text) or the last   ``correct`` (every field right)
               turn (JSON text)
``choice``     chat with ``meta.choices`` and     ``correct`` (highest log-likelihood),         accuracy
               ``meta.answer`` / ``meta.label``   ``correct_norm`` (per character)
``perplexity`` text (the whole text), or chat     ``nll`` (nats), ``tokens``                    perplexity
               (the last assistant turn)
=============  ================================  ===========================================  ==============

A task turns records into :class:`Item` s, says how a model must answer them (``mode``:
``generate`` a reply, score ``choice`` continuations, or measure ``perplexity``), scores one
output, and aggregates a set. ``sample`` gives the per-question numbers behind the headline
score, for the bootstrap (see :mod:`lmforge.evaluate.stats`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from lmforge.errors import DataError
from lmforge.evaluate.fields import FieldScore, find_object, score_reply, summarize
from lmforge.evaluate.metrics import (
    contains_answer,
    corpus_bleu,
    exact_match,
    rouge_l,
    sentence_bleu,
    token_f1,
)
from lmforge.evaluate.stats import Sample
from lmforge.records import Record

TaskName = Literal["qa", "freeform", "extraction", "choice", "perplexity"]
Mode = Literal["generate", "choice", "perplexity"]


@dataclass
class Item:
    """One question (or text) of an eval set."""

    set_name: str
    id: str
    question: str
    """What the tables show: the last user turn, or the start of a text."""
    prompt: list[dict[str, str]]
    """The conversation before the answer (empty for a text record)."""
    gold: str
    """The reference answer (a choice's text, a JSON object's text, or the text itself)."""
    aliases: list[str] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)
    gold_index: int | None = None
    gold_fields: dict[str, Any] | None = None
    is_text: bool = False
    """A ``text`` record: perplexity of the whole text, with no prompt."""


class Task(Protocol):
    """The shape every task has."""

    name: TaskName
    mode: Mode
    metric: str
    higher_is_better: bool
    binary: bool
    """Whether each question is simply right or wrong (``correct``): regressions are defined then."""

    def items(self, set_name: str, records: list[Record], path: Path) -> list[Item]: ...

    def score(self, item: Item, output: Any) -> dict[str, Any]: ...

    def aggregate(self, items: list[Item], scores: list[dict[str, Any]]) -> dict[str, Any]: ...

    def sample(self, scores: list[dict[str, Any]]) -> Sample: ...


def task_for(name: TaskName) -> Task:
    """The task object for a task name."""
    if name == "qa":
        return QATask()
    if name == "freeform":
        return FreeformTask()
    if name == "extraction":
        return ExtractionTask()
    if name == "choice":
        return ChoiceTask()
    if name == "perplexity":
        return PerplexityTask()
    raise AssertionError(f"unknown task {name!r}")  # the recipe's Literal makes this unreachable


# ---------------------------------------------------------------- reading records


def _split_chat(record: Record) -> tuple[list[dict[str, str]], str, str]:
    """(prompt before the last assistant turn, that turn's text, the last user turn before it)."""
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = [dict(m) for m in messages[:last]]
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return prompt, messages[last]["content"], users[-1] if users else ""


def _chats(
    task: str, records: list[Record], path: Path
) -> Iterator[tuple[int, Record, list[dict[str, str]], str, str]]:
    """``(line, record, prompt, answer, question)`` per record (see :func:`_split_chat`); chat records only.

    Raises:
        DataError: at the first record that is not a chat record, with its line in ``path``.
    """
    for line, record in enumerate(records, start=1):
        if record["kind"] != "chat":
            raise DataError(
                f"the {task!r} task needs chat records (a question and its answer), got a {record['kind']!r} record",
                path=str(path),
                line=line,
                hint="evaluate text records with task 'perplexity', or point this set at a split of QA records",
            )
        yield line, record, *_split_chat(record)


def _generation_items(task: str, set_name: str, records: list[Record], path: Path, short: bool) -> list[Item]:
    items = []
    for _, record, prompt, answer, question in _chats(task, records, path):
        meta = record.get("meta", {})
        gold = str(meta.get("answer") or answer) if short else answer
        aliases = [str(a) for a in meta.get("aliases", [])] if short else []
        items.append(Item(set_name, record["id"], question, prompt, gold, aliases))
    return items


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _mean_sample(scores: list[dict[str, Any]], key: str) -> Sample:
    return Sample([float(s[key]) for s in scores], [1.0] * len(scores))


# ---------------------------------------------------------------- tasks


@dataclass
class QATask:
    """Short answers: is the gold answer in the reply?"""

    name: TaskName = "qa"
    mode: Mode = "generate"
    metric: str = "accuracy"
    higher_is_better: bool = True
    binary: bool = True

    def items(self, set_name: str, records: list[Record], path: Path) -> list[Item]:
        return _generation_items(self.name, set_name, records, path, short=True)

    def score(self, item: Item, output: str) -> dict[str, Any]:
        return {
            "reply": output,
            "correct": contains_answer(output, item.gold, item.aliases),
            "exact": exact_match(output, item.gold, item.aliases),
            "f1": round(token_f1(output, item.gold), 4),
            "rouge_l": round(rouge_l(output, item.gold), 4),
        }

    def aggregate(self, items: list[Item], scores: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "accuracy": _mean([s["correct"] for s in scores]),
            "exact": _mean([s["exact"] for s in scores]),
            "f1": _mean([s["f1"] for s in scores]),
            "rouge_l": _mean([s["rouge_l"] for s in scores]),
        }

    def sample(self, scores: list[dict[str, Any]]) -> Sample:
        return _mean_sample(scores, "correct")


@dataclass
class FreeformTask:
    """Long answers: overlap with the reference answer."""

    name: TaskName = "freeform"
    mode: Mode = "generate"
    metric: str = "rouge_l"
    higher_is_better: bool = True
    binary: bool = False

    def items(self, set_name: str, records: list[Record], path: Path) -> list[Item]:
        return _generation_items(self.name, set_name, records, path, short=False)

    def score(self, item: Item, output: str) -> dict[str, Any]:
        return {
            "reply": output,
            "rouge_l": round(rouge_l(output, item.gold), 4),
            "bleu": round(sentence_bleu(output, item.gold), 2),
        }

    def aggregate(self, items: list[Item], scores: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "rouge_l": _mean([s["rouge_l"] for s in scores]),
            "bleu": corpus_bleu([s["reply"] for s in scores], [item.gold for item in items]),
        }

    def sample(self, scores: list[dict[str, Any]]) -> Sample:
        return _mean_sample(scores, "rouge_l")


@dataclass
class ExtractionTask:
    """Structured output: a JSON object whose fields are compared one by one."""

    name: TaskName = "extraction"
    mode: Mode = "generate"
    metric: str = "field_accuracy"
    higher_is_better: bool = True
    binary: bool = True

    def items(self, set_name: str, records: list[Record], path: Path) -> list[Item]:
        items = []
        for line, record, prompt, answer, question in _chats(self.name, records, path):
            gold = record.get("meta", {}).get("answer", answer)
            if isinstance(gold, str):
                gold = find_object(gold)
            if not isinstance(gold, dict) or not gold:
                raise DataError(
                    "the 'extraction' task needs a gold JSON object with at least one field; "
                    f"got {str(gold if gold is not None else answer)[:80]!r}",
                    path=str(path),
                    line=line,
                    hint="put the object in meta.answer, or make the answer a JSON object",
                )
            text = json.dumps(gold, ensure_ascii=False)
            items.append(Item(set_name, record["id"], question, prompt, text, gold_fields=gold))
        return items

    def score(self, item: Item, output: str) -> dict[str, Any]:
        scored = score_reply(output, item.gold_fields or {})
        return {
            "reply": output,
            "valid_json": scored.valid_json,
            "fields": scored.fields,
            "field_accuracy": round(scored.field_accuracy, 4),
            "correct": scored.all_fields,
        }

    def aggregate(self, items: list[Item], scores: list[dict[str, Any]]) -> dict[str, Any]:
        shown = summarize([FieldScore(s["fields"], s["valid_json"], {} if s["correct"] else None) for s in scores])
        shown["all_fields"] = _mean([s["correct"] for s in scores])
        return {key: shown[key] for key in ("field_accuracy", "valid_json", "all_fields", "fields")}

    def sample(self, scores: list[dict[str, Any]]) -> Sample:
        return _mean_sample(scores, "field_accuracy")


@dataclass
class ChoiceTask:
    """Multiple choice: the choice the model finds most likely as its reply."""

    name: TaskName = "choice"
    mode: Mode = "choice"
    metric: str = "accuracy"
    higher_is_better: bool = True
    binary: bool = True

    def items(self, set_name: str, records: list[Record], path: Path) -> list[Item]:
        items = []
        for line, record, prompt, answer, question in _chats(self.name, records, path):
            meta = record.get("meta", {})
            choices = meta.get("choices")
            if not isinstance(choices, list) or len(choices) < 2:
                raise DataError(
                    f"the 'choice' task needs meta.choices, a list of at least two answers; got {choices!r}",
                    path=str(path),
                    line=line,
                )
            choices = [str(c) for c in choices]
            index = _gold_index(meta, answer, choices)
            if index is None:
                raise DataError(
                    f"cannot tell which of {choices} is right: give meta.label (an index) or meta.answer "
                    f"(one of the choices); the answer turn {answer[:60]!r} is none of them either",
                    path=str(path),
                    line=line,
                )
            items.append(Item(set_name, record["id"], question, prompt, choices[index], [], choices, index))
        return items

    def score(self, item: Item, output: list[tuple[float, int]]) -> dict[str, Any]:
        logprobs = [lp for lp, _ in output]
        # Per-character normalisation (lm-eval's acc_norm) keeps long choices from losing by length.
        per_char = [lp / max(len(choice), 1) for (lp, _), choice in zip(output, item.choices, strict=True)]
        best = max(range(len(logprobs)), key=logprobs.__getitem__)
        best_norm = max(range(len(per_char)), key=per_char.__getitem__)
        return {
            "reply": item.choices[best],
            "correct": best == item.gold_index,
            "correct_norm": best_norm == item.gold_index,
            "logprobs": [round(lp, 4) for lp in logprobs],
        }

    def aggregate(self, items: list[Item], scores: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "accuracy": _mean([s["correct"] for s in scores]),
            "accuracy_norm": _mean([s["correct_norm"] for s in scores]),
        }

    def sample(self, scores: list[dict[str, Any]]) -> Sample:
        return _mean_sample(scores, "correct")


def _gold_index(meta: dict[str, Any], answer: str, choices: list[str]) -> int | None:
    label = meta.get("label")
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(choices):
        return label
    for candidate in (meta.get("answer"), answer):
        if candidate is not None and str(candidate) in choices:
            return choices.index(str(candidate))
    return None


@dataclass
class PerplexityTask:
    """How surprised the model is by held-out text (lower is better)."""

    name: TaskName = "perplexity"
    mode: Mode = "perplexity"
    metric: str = "perplexity"
    higher_is_better: bool = False
    binary: bool = False

    def items(self, set_name: str, records: list[Record], path: Path) -> list[Item]:
        items = []
        for record in records:
            if record["kind"] == "text":
                text = record["text"]
                items.append(Item(set_name, record["id"], text[:160], [], text, is_text=True))
            else:
                prompt, answer, question = _split_chat(record)
                items.append(Item(set_name, record["id"], question, prompt, answer))
        return items

    def score(self, item: Item, output: tuple[float, int]) -> dict[str, Any]:
        nll, tokens = output
        return {
            "nll": round(nll, 4),
            "tokens": tokens,
            "perplexity": round(math.exp(nll / max(tokens, 1)), 4),
        }

    def aggregate(self, items: list[Item], scores: list[dict[str, Any]]) -> dict[str, Any]:
        sample = self.sample(scores)
        tokens = int(sum(s["tokens"] for s in scores))
        return {"perplexity": sample.value(), "nll_per_token": sum(sample.num) / max(tokens, 1), "tokens": tokens}

    def sample(self, scores: list[dict[str, Any]]) -> Sample:
        return Sample([float(s["nll"]) for s in scores], [float(s["tokens"]) for s in scores], transform="exp")
