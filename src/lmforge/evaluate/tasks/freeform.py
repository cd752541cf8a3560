"""The ``freeform`` task: long answers, scored by overlap with the reference (ROUGE-L, BLEU)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.evaluate.metrics import corpus_bleu, rouge_l, sentence_bleu
from lmforge.evaluate.stats import Sample
from lmforge.evaluate.tasks import Item, Mode, TaskName, generation_items, mean, mean_sample
from lmforge.records import Record


@dataclass
class FreeformTask:
    """Long answers: overlap with the reference answer."""

    name: TaskName = "freeform"
    mode: Mode = "generate"
    metric: str = "rouge_l"
    higher_is_better: bool = True
    binary: bool = False

    def items(self, set_name: str, records: list[Record], path: Path) -> list[Item]:
        return generation_items(self.name, set_name, records, path, short=False)

    def score(self, item: Item, output: str) -> dict[str, Any]:
        return {
            "reply": output,
            "rouge_l": round(rouge_l(output, item.gold), 4),
            "bleu": round(sentence_bleu(output, item.gold), 2),
        }

    def aggregate(self, items: list[Item], scores: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "rouge_l": mean([s["rouge_l"] for s in scores]),
            "bleu": corpus_bleu([s["reply"] for s in scores], [item.gold for item in items]),
        }

    def sample(self, scores: list[dict[str, Any]]) -> Sample:
        return mean_sample(scores, "rouge_l")


TASK = FreeformTask()
