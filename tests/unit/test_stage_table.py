"""The stage table drives validation, order, dispatch and summaries; final_model() says which model a run made."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmforge import stages
from lmforge.cli import app
from lmforge.config import STAGE_ORDER, load_recipe
from lmforge.errors import ConfigError
from lmforge.pipeline import SPLIT_STAGES, run_recipe
from lmforge.rundir import StageDir, final_model, is_run_dir


def test_every_row_names_a_module_with_run_and_summary():
    assert tuple(row.name for row in stages.STAGES) == STAGE_ORDER
    for row in stages.STAGES:
        module = importlib.import_module(row.entry)
        assert callable(module.run) and callable(module.summary), row.name
        assert row.entry.rsplit(".", 1)[-1] in (row.name, "stage"), row.entry  # named after the stage
    assert stages.stage("sft").entry == "lmforge.train.sft" and stages.stage("sft").model == "causal"
    assert set(SPLIT_STAGES) == {"index", "cpt", "mlm", "sft", "seq2seq", "dpo", "grpo", "eval"}
    with pytest.raises(KeyError, match="expected one of"):
        stages.stage("polish")


def test_the_recipe_refuses_names_and_orders_the_table_does_not_have(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages: [sft, data, polish]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_recipe(recipe)
    assert "polish" in str(caught.value) and "'eval'" in str(caught.value)


def fake_stage(run: Path, name: str, outputs: dict, status: str = "done") -> None:
    folder = run / name
    folder.mkdir(parents=True)
    manifest = {"stage": name, "status": status, "fingerprint": f"fp-{name}", "outputs": outputs}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_the_last_finished_training_stage_is_the_result(tmp_path):
    run = tmp_path / "run"
    assert not is_run_dir(run) and final_model(run) is None
    fake_stage(run, "cpt", {"base_model": "/m/base", "adapter": str(run / "cpt" / "adapter")})
    got = final_model(run)
    assert (got.stage, got.kind, got.model_dir) == ("cpt", "causal", Path("/m/base"))
    assert got.adapter_dir == run / "cpt" / "adapter"
    fake_stage(run, "sft", {"base_model": "/m/base", "model": str(run / "sft" / "model")}, status="running")
    assert final_model(run).stage == "cpt"  # an unfinished sft does not take over
    (run / "sft" / "manifest.json").write_text(
        json.dumps({"stage": "sft", "status": "done", "fingerprint": "fp-sft", "outputs": {"model": "/r/sft/model"}}),
        encoding="utf-8",
    )
    got = final_model(run)
    assert (got.stage, got.pair, got.fingerprint) == ("sft", (Path("/r/sft/model"), None), "fp-sft")
    fake_stage(run, "seq2seq", {"base_model": "/t5", "model": "/r/seq2seq/model"})
    assert final_model(run).kind == "seq2seq"
    assert final_model(run, kinds=("causal",)).stage == "sft"  # chat, serve and eval ask for a causal LM
    assert is_run_dir(run)


def test_only_runs_the_named_stage_and_refuses_others(tiny_recipe):
    result = CliRunner().invoke(app, ["run", str(tiny_recipe), "--only", "data"])
    assert result.exit_code == 0, result.output
    run = load_recipe(tiny_recipe).run_path()
    assert StageDir.open(run, "data").status == "done" and StageDir.open(run, "sft").status is None
    refused = CliRunner().invoke(app, ["run", str(tiny_recipe), "--only", "index"])
    assert refused.exit_code == 2 and "--only" in refused.output and "data, sft, eval" in refused.output


def test_eval_writes_its_own_table_and_names_the_stage_of_the_tuned_model(tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    run_recipe(recipe)
    outputs = StageDir.open(recipe.run_path(), "eval").manifest["outputs"]
    assert "tuned" in Path(outputs["table"]).read_text(encoding="utf-8")
    summary = json.loads((recipe.run_path() / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert summary["labels"]["tuned"] == "tiny: sft adapter"


def test_every_stage_has_a_command_from_the_table(tiny_recipe):
    names = {info.name or info.callback.__name__ for info in app.registered_commands} | {"data"}
    assert set(STAGE_ORDER) <= names  # lmforge index / cpt / mlm / sft / seq2seq / dpo come from the table
    assert CliRunner().invoke(app, ["run", str(tiny_recipe), "--only", "data"]).exit_code == 0
    result = CliRunner().invoke(app, ["sft", str(tiny_recipe)])
    assert result.exit_code == 0, result.output
    run = load_recipe(tiny_recipe).run_path()
    assert StageDir.open(run, "sft").status == "done" and StageDir.open(run, "eval").status is None
    assert CliRunner().invoke(app, ["dpo", str(tiny_recipe)]).exit_code == 2  # not a stage of this recipe
