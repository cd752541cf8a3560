"""The ``choice`` task: multiple choice, the choice the model finds most likely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import DataError
from lmforge.evaluate.stats import Sample
from lmforge.evaluate.tasks import Item, Mode, TaskName, chats, mean, mean_sample
from lmforge.records import Record


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
        for line, record, prompt, answer, question in chats(self.name, records, path):
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
            "accuracy": mean([s["correct"] for s in scores]),
            "accuracy_norm": mean([s["correct_norm"] for s in scores]),
        }

    def sample(self, scores: list[dict[str, Any]]) -> Sample:
        return mean_sample(scores, "correct")


def _gold_index(meta: dict[str, Any], answer: str, choices: list[str]) -> int | None:
    label = meta.get("label")
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(choices):
        return label
    for candidate in (meta.get("answer"), answer):
        if candidate is not None and str(candidate) in choices:
            return choices.index(str(candidate))
    return None


TASK = ChoiceTask()
