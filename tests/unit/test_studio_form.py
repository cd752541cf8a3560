"""The studio's recipe form: generated from the schema, help text for every field, YAML both ways, and the
validation messages of lmforge validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmforge.config import load_recipe
from lmforge.errors import ConfigError
from lmforge.studio import form

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


def test_every_setting_is_a_field_with_its_help_text():
    fields = form.recipe_fields()
    paths = [field.path for field in fields]
    assert len(paths) == len(set(paths)) > 200
    expected = {"name", "stages", "model.ref", "data.sources", "sft.lr", "sft.lora.r", "dpo.build", "eval.sets"}
    assert expected <= set(paths)
    assert all(field.help for field in fields), [field.path for field in fields if not field.help]
    by_path = {field.path: field for field in fields}
    assert by_path["sft.lora.r"].kind == "int" and by_path["sft.lora.r"].default == 16
    assert by_path["sft.precision"].kind == "choice" and "fp32" in by_path["sft.precision"].choices
    assert by_path["stages"].kind == "choices" and by_path["stages"].required
    assert by_path["model.trust_remote_code"].kind == "bool" and by_path["model.trust_remote_code"].default is False
    assert by_path["dpo.build"].kind == "yaml" and by_path["dpo.build"].default == ""  # an optional section
    assert "Peak learning rate" in by_path["sft.lr"].help


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_a_shipped_recipe_round_trips_through_the_form(recipe: Path):
    fields = form.recipe_fields()
    raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    values, unknown = form.from_raw(fields, raw)
    assert unknown == []
    again = form.to_raw(fields, values)
    text = form.to_yaml(again)
    original = load_recipe(recipe).model_dump()
    assert form.check(form.parse_yaml(text), str(recipe), recipe.parent).model_dump() == original


def test_only_changed_settings_are_written_and_stages_keep_pipeline_order(tmp_path: Path):
    fields = form.recipe_fields()
    values = [field.default for field in fields]
    index = {field.path: i for i, field in enumerate(fields)}
    values[index["name"]] = "mine"
    values[index["stages"]] = ["eval", "data", "sft"]  # picked in any order
    values[index["sft.lr"]] = "0.001"
    values[index["sft.lora.r"]] = 8.0  # a number field gives a float
    values[index["data.sources"]] = "- {path: qa.jsonl}"
    raw = form.to_raw(fields, values)
    assert raw == {
        "name": "mine",
        "stages": ["data", "sft", "eval"],
        "data": {"sources": [{"path": "qa.jsonl"}]},
        "sft": {"lora": {"r": 8}, "lr": 0.001},
    }
    (tmp_path / "qa.jsonl").write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    assert form.check(raw, str(tmp_path / "mine.yaml"), tmp_path).sft.lora.r == 8


def test_validation_speaks_as_lmforge_validate(tmp_path: Path):
    raw = {"name": "x", "stages": ["data", "sft"], "data": {"sources": [{"path": "missing.jsonl"}]}, "sft": {"lr": -1}}
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError) as from_file:
        load_recipe(path)
    with pytest.raises(ConfigError) as from_form:
        form.check(raw, str(path), tmp_path)
    assert str(from_form.value) == str(from_file.value)
    assert "sft.lr: got -1" in str(from_form.value)


def test_a_yaml_field_that_does_not_parse_names_its_key():
    fields = form.recipe_fields()
    values = [field.default for field in fields]
    values[[f.path for f in fields].index("data.sources")] = "- {path: a.jsonl"
    with pytest.raises(form.FormProblem, match=r"^data\.sources: not valid YAML"):
        form.to_raw(fields, values)
    with pytest.raises(ConfigError, match="line 1, column"):
        form.parse_yaml("name: [unclosed")
    with pytest.raises(ConfigError, match="expected a mapping"):
        form.parse_yaml("- a list")


def test_keys_the_form_does_not_know_are_reported_not_dropped_silently():
    _, unknown = form.from_raw(form.recipe_fields(), {"name": "x", "sft": {"lrr": 1}, "extra": 2})
    assert unknown == ["extra", "sft.lrr"]


def test_inputs_come_back_in_the_order_values_are_read_whatever_the_grouping():
    """A run-level setting declared after the sections (``budget``) is shown in the run's accordion, but its input
    must stay at its place in the list the values are read from (it once shifted every later input by one)."""
    import contextlib
    import types

    from lmforge.studio.form import components, recipe_fields

    def widget(*args, **options):
        return options["elem_id"]

    fake = types.SimpleNamespace(
        Accordion=lambda *a, **k: contextlib.nullcontext(), Checkbox=widget, Dropdown=widget, Number=widget,
        Textbox=widget,
    )  # fmt: skip
    fields = recipe_fields()
    assert "budget" in [f.path for f in fields][-3:]  # declared last, grouped first
    made = components(fake, fields)
    assert made == ["field-" + f.path.replace(".", "-") for f in fields]
