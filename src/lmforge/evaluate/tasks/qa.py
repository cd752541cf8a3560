"""The ``qa`` task: short answers; is the gold answer (or an alias) in the reply?"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.evaluate.metrics import contains_answer, exact_match, rouge_l, token_f1
from lmforge.evaluate.stats import Sample
from lmforge.evaluate.tasks import Item, Mode, TaskName, generation_items, mean, mean_sample
from lmforge.records import Record


@dataclass
class QATask:
    """Short answers: is the gold answer in the reply?"""

    name: TaskName = "qa"
    mode: Mode = "generate"
    metric: str = "accuracy"
    higher_is_better: bool = True
    binary: bool = True

    def items(self, set_name: str, records: list[Record], path: Path) -> list[Item]:
        return generation_items(self.name, set_name, records, path, short=True)

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
            "accuracy": mean([s["correct"] for s in scores]),
            "exact": mean([s["exact"] for s in scores]),
            "f1": mean([s["f1"] for s in scores]),
            "rouge_l": mean([s["rouge_l"] for s in scores]),
        }

    def sample(self, scores: list[dict[str, Any]]) -> Sample:
        return mean_sample(scores, "correct")


TASK = QATask()
