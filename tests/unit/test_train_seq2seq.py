"""Extraction scoring, schema inference, encoder inputs and recipe checks of the training stages."""

import json

import pytest

from lmforge.config import Seq2SeqSpec, load_recipe
from lmforge.errors import ConfigError, DataError
from lmforge.train.seq2seq import Extraction, input_text, load_extractions, load_schema, score_extractions


def test_scores_count_valid_json_and_exact_fields():
    expected = [
        {"name": "Mira Halvik", "amount": 415, "start": "2024-03-01"},
        {"name": "Arlen Vandor", "amount": 600, "start": None},
        {"name": "Tessa Quist", "amount": 510, "start": "2023-01-01"},
    ]
    outputs = [
        '{"name": "Mira  Halvik", "amount": 415.0, "start": "2024-03-01"}',  # whitespace and 415.0 still match
        '{"name": "arlen vandor", "amount": 600}',  # case is ignored (as in eval); a missing field does not match
        "name: Tessa Quist",  # not JSON
    ]
    scores = score_extractions(expected, outputs)
    assert scores["n"] == 3
    assert scores["valid_json"] == pytest.approx(2 / 3, abs=1e-4)
    assert scores["fields"] == {"name": pytest.approx(2 / 3, abs=1e-4), "amount": pytest.approx(2 / 3, abs=1e-4),
                                "start": pytest.approx(1 / 3, abs=1e-4)}  # fmt: skip
    assert scores["all_fields"] == pytest.approx(1 / 3, abs=1e-4)
    assert scores["field_accuracy"] == pytest.approx(5 / 9, abs=1e-4)  # per document: 1, 2/3, 0
    assert score_extractions([{"a": 1}], ["[1, 2]"])["valid_json"] == 0.0  # JSON, but not an object


def test_schema_is_inferred_from_targets_and_shown_in_schema_inputs():
    train = [
        Extraction({}, "doc", {"name": "A", "amount": 3, "start": None}),
        Extraction({}, "doc", {"name": "B", "amount": 2.5, "start": "2024-01-01"}),
    ]
    schema = load_schema(Seq2SeqSpec(), train)
    assert schema["properties"] == {
        "name": {"type": "string"},
        "amount": {"type": ["integer", "number"]},
        "start": {"type": ["null", "string"]},
    }
    prompt = input_text("Dear A,", schema, Seq2SeqSpec())
    assert prompt.startswith("Extract the fields name, amount, start from the document below.")
    assert prompt.endswith("Document:\nDear A,")
    with_schema = input_text("Dear A,", schema, Seq2SeqSpec(input_format="schema"))
    assert json.dumps(schema) in with_schema
    custom = input_text("D", schema, Seq2SeqSpec(instruction='Fields: {fields}. Keep {"json": true}.'))
    assert custom.startswith('Fields: name, amount, start. Keep {"json": true}.')


def test_targets_must_be_json_objects(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [
        {"id": "a", "kind": "chat", "source": {"path": "x.jsonl", "line": 1},
         "messages": [{"role": "user", "content": "doc"}, {"role": "assistant", "content": '{"a": 1}'}]},
        {"id": "b", "kind": "chat", "source": {"path": "x.jsonl", "line": 2},
         "messages": [{"role": "user", "content": "doc"}, {"role": "assistant", "content": "a = 1"}]},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.jsonl:2"):
        load_extractions(path)


def test_recipes_list_training_stages_in_pipeline_order(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "x"}\n', encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"stages: [data, cpt, sft, eval]\ndata: {{sources: [{{path: {data}}}]}}\n", encoding="utf-8")
    assert load_recipe(recipe).stages == ["data", "cpt", "sft", "eval"]
    with pytest.raises(ConfigError, match="pipeline order"):
        load_recipe(recipe, ["stages=[data, sft, cpt]"])
    with pytest.raises(ConfigError, match="needs method 'lora'"):
        load_recipe(recipe, ["sft.method=full", "sft.quantization=4bit"])
    with pytest.raises(ConfigError, match="JSON schema file not found"):
        load_recipe(recipe, ["seq2seq.json_schema=missing.json"])
