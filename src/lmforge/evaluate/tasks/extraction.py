"""The ``extraction`` task: a JSON object whose fields are compared one by one (:mod:`lmforge.evaluate.fields`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import DataError
from lmforge.evaluate.fields import FieldScore, find_object, score_reply, summarize
from lmforge.evaluate.stats import Sample
from lmforge.evaluate.tasks import Item, Mode, TaskName, chats, mean_sample
from lmforge.records import Record


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
        for line, record, prompt, answer, question in chats(self.name, records, path):
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
        shown = summarize([FieldScore(s["fields"], s["valid_json"]) for s in scores])
        return {key: shown[key] for key in ("field_accuracy", "valid_json", "all_fields", "fields")}

    def sample(self, scores: list[dict[str, Any]]) -> Sample:
        return mean_sample(scores, "field_accuracy")


TASK = ExtractionTask()
