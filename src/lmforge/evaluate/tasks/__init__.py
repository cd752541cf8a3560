"""Evaluation tasks, one module each (``qa.py``, ``choice.py``, ...). Each task owns its data (which records
it reads and how) and its scoring; a new task is one module here that defines ``TASK``, found by its
file name (the name a recipe's ``eval.tasks`` gives).

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

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from lmforge.errors import DataError
from lmforge.evaluate.stats import Sample
from lmforge.records import Record

TaskName = str
"""A task module's name (see :func:`available_tasks`)."""
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


def available_tasks() -> list[str]:
    """The task names: the modules of this package (``config.evaluate`` lists the same files)."""
    return sorted(p.stem for p in Path(__file__).parent.glob("*.py") if not p.stem.startswith("_"))


def task_for(name: TaskName) -> Task:
    """The task object of the module ``name``.

    Raises:
        ValueError: no such task (a recipe's validation makes this unreachable for its own sets).
    """
    if name not in available_tasks():
        raise ValueError(f"unknown eval task {name!r}; expected one of {', '.join(available_tasks())}")
    return importlib.import_module(f"{__name__}.{name}").TASK


# ---------------------------------------------------------------- reading records (shared by the tasks)


def split_chat(record: Record) -> tuple[list[dict[str, str]], str, str]:
    """(prompt before the last assistant turn, that turn's text, the last user turn before it)."""
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = [dict(m) for m in messages[:last]]
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return prompt, messages[last]["content"], users[-1] if users else ""


def chats(task: str, records: list[Record], path: Path) -> Iterator[tuple[int, Record, list[dict[str, str]], str, str]]:
    """``(line, record, prompt, answer, question)`` per record (see :func:`split_chat`); chat records only.

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
        yield line, record, *split_chat(record)


def generation_items(task: str, set_name: str, records: list[Record], path: Path, short: bool) -> list[Item]:
    items = []
    for _, record, prompt, answer, question in chats(task, records, path):
        meta = record.get("meta", {})
        gold = str(meta.get("answer") or answer) if short else answer
        aliases = [str(a) for a in meta.get("aliases", [])] if short else []
        items.append(Item(set_name, record["id"], question, prompt, gold, aliases))
    return items


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def mean_sample(scores: list[dict[str, Any]], key: str) -> Sample:
    return Sample([float(s[key]) for s in scores], [1.0] * len(scores))
