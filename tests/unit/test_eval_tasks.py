"""Tasks own their data and scoring: items from canonical records, per-question scores, aggregates."""

import math
from pathlib import Path

import pytest

from lmforge.errors import DataError
from lmforge.evaluate.tasks import task_for
from lmforge.records import chat_record, text_record

SRC = {"path": "qa.jsonl", "line": 1}


def chat(question, answer, meta=None, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return chat_record(messages, SRC, meta=meta)


def test_qa_items_use_the_short_answer_and_aliases():
    meta = {"answer": "16 years", "aliases": ["sixteen"]}
    record = chat("At what age?", "Insurance begins at 16 years.", meta, "Sys")
    (item,) = task_for("qa").items("test", [record], Path("split.jsonl"))
    assert item.gold == "16 years" and item.aliases == ["sixteen"]
    assert item.question == "At what age?"
    assert item.prompt == [{"role": "system", "content": "Sys"}, {"role": "user", "content": "At what age?"}]
    assert item.id == record["id"]


def test_qa_scores_and_aggregate():
    task = task_for("qa")
    (item,) = task.items("t", [chat("Q?", "64 years", {"answer": "64 years"})], Path("s"))
    right = task.score(item, "It is 64 years.")
    exact = task.score(item, "64 years")
    wrong = task.score(item, "It is 65 years.")
    assert right["correct"] and not right["exact"] and exact["exact"]
    assert not wrong["correct"]
    # tokens [it, is, 64, years] vs [64, years]: precision 2/4, recall 1, F1 = 2 * 0.5 / 1.5
    assert right["f1"] == pytest.approx(2 / 3, abs=1e-4)
    summary = task.aggregate([item] * 3, [right, exact, wrong])
    assert summary["accuracy"] == pytest.approx(2 / 3) and summary["exact"] == pytest.approx(1 / 3)
    assert task.sample([right, exact, wrong]).num == [1.0, 1.0, 0.0]


def test_freeform_scores_rouge_and_bleu():
    task = task_for("freeform")
    (item,) = task.items("t", [chat("Explain.", "The pension is paid monthly.", {"answer": "monthly"})], Path("s"))
    assert item.gold == "The pension is paid monthly."  # free-form uses the whole reference, not meta.answer
    score = task.score(item, "The pension is paid monthly.")
    assert score["rouge_l"] == 1.0 and score["bleu"] == pytest.approx(100.0)
    summary = task.aggregate([item], [score])
    assert summary["rouge_l"] == 1.0 and summary["bleu"] == pytest.approx(100.0)
    assert not task.binary


def test_extraction_fields_and_valid_json():
    task = task_for("extraction")
    gold = {"article": 15, "age": "64 years"}
    records = [chat("Extract.", '{"article": 15, "age": "64 years"}'), chat("Extract.", "x", {"answer": gold})]
    items = task.items("t", records, Path("s"))
    assert items[0].gold_fields == gold == items[1].gold_fields
    full = task.score(items[0], 'Result: {"article": "15", "age": "64 Years"}')
    half = task.score(items[0], '{"article": 15, "age": "65 years"}')
    broken = task.score(items[0], "article 15, age 64")
    assert full["correct"] and full["field_accuracy"] == 1.0 and not full["valid_json"]  # prose around the object
    assert half["field_accuracy"] == 0.5 and not half["correct"] and half["valid_json"]
    assert not broken["valid_json"] and broken["field_accuracy"] == 0.0
    summary = task.aggregate(items[:1] * 3, [full, half, broken])
    assert summary["field_accuracy"] == pytest.approx(0.5)
    assert summary["valid_json"] == pytest.approx(1 / 3)
    assert summary["fields"] == {"age": pytest.approx(1 / 3, abs=1e-4), "article": pytest.approx(2 / 3, abs=1e-4)}


def test_extraction_rejects_a_non_object_gold_with_its_line():
    with pytest.raises(DataError, match=r"split.jsonl:2.*JSON object"):
        task_for("extraction").items("t", [chat("a", '{"x": 1}'), chat("b", "not json")], Path("split.jsonl"))


def test_choice_items_find_the_gold_index():
    task = task_for("choice")
    by_label = chat("Capital?", "Paris", {"choices": ["Rome", "Paris"], "label": 1})
    by_answer = chat("Capital?", "x", {"choices": ["Rome", "Paris"], "answer": "Rome"})
    by_turn = chat("Capital?", "Paris", {"choices": ["Rome", "Paris"]})
    items = task.items("t", [by_label, by_answer, by_turn], Path("s"))
    assert [item.gold_index for item in items] == [1, 0, 1]
    # Summed log-probabilities: Rome -3.0 beats Paris -3.5; per character Paris (-0.7) beats Rome (-0.75).
    score = task.score(items[0], [(-3.0, 1), (-3.5, 1)])
    assert score["reply"] == "Rome" and not score["correct"]
    assert score["correct_norm"]
    assert task.aggregate(items[:1], [score]) == {"accuracy": 0.0, "accuracy_norm": 1.0}


def test_choice_needs_choices_and_a_known_answer():
    task = task_for("choice")
    with pytest.raises(DataError, match=r"s:1: .*meta.choices"):
        task.items("t", [chat("Q?", "A", {"choices": ["only one"]})], Path("s"))
    with pytest.raises(DataError, match="cannot tell which"):
        task.items("t", [chat("Q?", "Berlin", {"choices": ["Rome", "Paris"]})], Path("s"))


def test_perplexity_items_and_ratio_of_sums():
    task = task_for("perplexity")
    items = task.items("docs", [text_record("Article 1. Text.", SRC), chat("Q?", "The answer.")], Path("s"))
    assert items[0].is_text and items[0].gold == "Article 1. Text." and items[0].prompt == []
    assert not items[1].is_text and items[1].gold == "The answer."
    scores = [task.score(items[0], (6.0, 3)), task.score(items[1], (2.0, 1))]
    assert scores[0]["perplexity"] == pytest.approx(math.exp(2.0), rel=1e-4)
    summary = task.aggregate(items, scores)
    assert summary["perplexity"] == pytest.approx(math.exp(8.0 / 4))  # pooled over tokens, not averaged
    assert summary["tokens"] == 4 and not task.higher_is_better


def test_generation_tasks_refuse_text_records():
    with pytest.raises(DataError, match="needs chat records"):
        task_for("qa").items("t", [text_record("plain text", SRC)], Path("s"))


def test_a_task_is_a_module_found_by_its_file_name():
    from lmforge.config.evaluate import eval_task_names
    from lmforge.evaluate.tasks import available_tasks

    assert available_tasks() == eval_task_names() == ["choice", "extraction", "freeform", "perplexity", "qa"]
    for name in available_tasks():
        assert task_for(name).name == name  # each module's TASK answers to its file name
    with pytest.raises(ValueError, match="expected one of choice"):
        task_for("essay")
