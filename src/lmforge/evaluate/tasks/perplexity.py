"""The ``perplexity`` task: how surprised the model is by held-out text (lower is better)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.evaluate.stats import Sample
from lmforge.evaluate.tasks import Item, Mode, TaskName, split_chat
from lmforge.records import Record


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
                prompt, answer, question = split_chat(record)
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


TASK = PerplexityTask()
