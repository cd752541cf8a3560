"""The frame every training stage runs in (``lmforge.engine.stage``), without training anything.

A finished data stage is written by hand, so each step can be checked on its own: which split
files a stage reads, what the fingerprint covers, when an earlier attempt is resumed or cleared,
and what a skipped stage hands back.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmforge.config import load_recipe
from lmforge.engine.stage import open_training_stage
from lmforge.errors import StageError
from lmforge.rundir import StageDir, fingerprint_file


def finished_data_stage(tmp_path: Path, splits: dict[str, list[dict]]) -> Path:
    """A run folder whose data stage is done and published ``splits`` (name -> records)."""
    run = tmp_path / "runs" / "t"
    published = {}
    for name, records in splits.items():
        path = run / "data" / "splits" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        published[name] = str(path)
    data = StageDir.open(run, "data")
    data.start("data-fingerprint", {}, {})
    data.finish({}, outputs={"splits": published})
    return run


def text(i: int) -> dict:
    return {"id": f"t{i}", "kind": "text", "text": f"Document {i}.", "source": {"path": "docs.jsonl", "line": i}}


def recipe_for(tmp_path: Path, model_dir: Path, cpt: str = "{}"):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"name: t\nrun_dir: {tmp_path / 'runs'}\nstages: [data, cpt]\nmodel: {{ref: {model_dir}}}\n"
        f"data: {{sources: [{{path: {tmp_path}}}]}}\ncpt: {cpt}\n",
        encoding="utf-8",
    )
    return load_recipe(path)


def test_open_finds_the_splits_and_records_model_section_and_seed(tmp_path, tiny_model_dir):
    run = finished_data_stage(tmp_path, {"train": [text(1), text(2)], "val": [text(3)]})
    recipe = recipe_for(tmp_path, tiny_model_dir)
    setup = open_training_stage(recipe, recipe.cpt, "cpt")
    train, val = run / "data" / "splits" / "train.jsonl", run / "data" / "splits" / "val.jsonl"
    assert setup.train_paths == [train] and setup.eval_path == val  # `val` is used when the data stage wrote one
    assert list(setup.config) == ["model", "cpt", "seed"] and setup.config["seed"] == recipe.seed
    assert setup.file_hashes() == {str(train): fingerprint_file(train), str(val): fingerprint_file(val)}
    assert setup.validation_records("text")[0]["text"] == "Document 3."


def test_a_missing_split_is_named_before_anything_starts(tmp_path, tiny_model_dir):
    finished_data_stage(tmp_path, {"train": [text(1)]})
    recipe = recipe_for(tmp_path, tiny_model_dir, "{splits: [documents]}")
    with pytest.raises(StageError, match="'documents'"):
        open_training_stage(recipe, recipe.cpt, "cpt")
    assert not (tmp_path / "runs" / "t" / "cpt").exists()


def test_start_resumes_the_same_fingerprint_and_clears_what_other_inputs_left(tmp_path, tiny_model_dir):
    finished_data_stage(tmp_path, {"train": [text(1)]})
    recipe = recipe_for(tmp_path, tiny_model_dir)
    setup = open_training_stage(recipe, recipe.cpt, "cpt")
    assert setup.start("first", {}, "base") is False
    for name in ("checkpoints/checkpoint-2", "base"):
        setup.stage.path(name).mkdir(parents=True)

    # Interrupted (still `running`) with the same inputs: resume, keep the checkpoints.
    again = open_training_stage(recipe, recipe.cpt, "cpt")
    assert again.start("first", {}, "base") is True
    assert again.stage.path("checkpoints", "checkpoint-2").is_dir() and again.stage.manifest["attempts"] == 2

    # Other inputs: start afresh, and nothing of the old attempt survives to be resumed from.
    other = open_training_stage(recipe, recipe.cpt, "cpt")
    assert other.start("second", {}, "base") is False
    assert not other.stage.path("checkpoints").exists() and not other.stage.path("base").exists()


def test_a_finished_stage_hands_back_its_outputs_and_wrap_up_keeps_only_the_log(tmp_path, tiny_model_dir):
    finished_data_stage(tmp_path, {"train": [text(1)]})
    recipe = recipe_for(tmp_path, tiny_model_dir)
    setup = open_training_stage(recipe, recipe.cpt, "cpt")
    setup.start("fp", {})
    setup.stage.path("checkpoints").mkdir()

    trainer = SimpleNamespace(state=SimpleNamespace(log_history=[{"loss": 2.5, "step": 1}]))  # what wrap_up reads
    setup.wrap_up(trainer)
    assert not setup.stage.path("checkpoints").exists()
    assert json.loads(setup.stage.path("train_log.jsonl").read_text()) == {"loss": 2.5, "step": 1}
    adapter = setup.stage.path("adapter")
    setup.stage.finish({"train_loss": 2.5}, outputs={"base_model": "m", "adapter": str(adapter)})

    done = open_training_stage(recipe, recipe.cpt, "cpt")
    assert done.stage.is_done("fp") and not done.stage.is_done("other")
    result = done.earlier_result()
    assert result.skipped and result.adapter_dir == adapter and result.model_dir is None
    assert result.metrics == {"train_loss": 2.5}


def test_a_validation_split_without_records_of_the_kind_warns_and_gives_none(tmp_path, tiny_model_dir, capsys):
    finished_data_stage(tmp_path, {"train": [text(1)], "val": [text(2)]})
    recipe = recipe_for(tmp_path, tiny_model_dir)
    setup = open_training_stage(recipe, recipe.cpt, "cpt")
    assert setup.validation_records("chat") == []
    assert "holds no chat records; training without validation" in capsys.readouterr().out
