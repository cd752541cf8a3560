"""The whole spine (data -> sft -> eval) on a tiny random model: contracts, skipping, changed weights."""

import json

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.config import load_recipe
from lmforge.pipeline import run_recipe
from lmforge.rundir import StageDir


def test_run_writes_manifests_and_outputs_then_skips(tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    results = run_recipe(recipe)
    run = recipe.run_path()
    for stage in ("data", "sft", "eval"):
        manifest = StageDir.open(run, stage).manifest
        assert manifest["status"] == "done", stage
        assert manifest["versions"]["transformers"]

    assert results["data"].splits == {"test": 4, "train": 12}
    stats = json.loads((run / "data" / "stats.json").read_text())
    for counts in stats["sources"].values():
        rejected = sum(counts["rejected"].values())
        filtered = sum(counts["filtered"].values())
        assert counts["read"] == counts["kept"] + counts["deduplicated"] + filtered + rejected

    adapter = run / "sft" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "chat_template.jinja").is_file() or "chat_template" in (
        adapter / "tokenizer_config.json"
    ).read_text()
    log = [json.loads(line) for line in (run / "sft" / "train_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert losses[-1] < losses[0], losses
    # LoRA B matrices start at zero; training must have moved them.
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(torch.count_nonzero(t) > 0 for t in lora_b)

    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert set(summary["sets"]["test"]) == {"base", "tuned"}
    assert summary["sets"]["test"]["tuned"]["n"] == 4
    predictions = (run / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 4
    assert set(json.loads(predictions[0])["answers"]) == {"base", "tuned"}

    again = run_recipe(recipe)
    assert all(result.skipped for result in again.values())


def test_changed_setting_reruns_only_downstream_stages(tiny_recipe):
    run_recipe(load_recipe(tiny_recipe))
    changed = run_recipe(load_recipe(tiny_recipe, ["eval.max_new_tokens=4"]))
    assert changed["data"].skipped and changed["sft"].skipped
    assert not changed["eval"].skipped


def test_cli_run_reports_stage_errors_without_traceback(tiny_recipe, tmp_path):
    (tmp_path / "qa" / "train.jsonl").write_text('{"messages": "not a list"}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(tiny_recipe), "--set", "stages=[data, sft]"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "train split" in result.output or "no chat records" in result.output


def test_the_manifest_says_what_the_stage_computed_with_and_why(tiny_recipe, monkeypatch):
    """precision auto on a CPU capped to AVX2 (as oneDNN and ATen are told to be): fp32, and the reason."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    recipe = load_recipe(tiny_recipe, ["stages=[data,sft]", "sft.precision=auto", "sft.epochs=1"])
    metrics = run_recipe(recipe)["sft"].metrics
    compute = metrics["compute"]
    assert compute["device"] == "cpu" and compute["isa"] in ("avx2", "other")
    assert compute["precision"] == metrics["precision"] == "fp32"
    assert "no native bf16" in compute["why"] and compute["attention"] in ("eager", "sdpa")


def test_a_token_budget_cuts_long_micro_batches_and_the_manifest_says_so(tiny_recipe):
    recipe = load_recipe(tiny_recipe, ["stages=[data,sft]", "sft.epochs=1", "sft.micro_batch_tokens=16"])
    metrics = run_recipe(recipe)["sft"].metrics
    why = metrics["compute"]["micro_batch"]
    assert why.startswith("micro_batch_tokens: 16 (recipe)") and "micro-batches of <= 1 per step" in why
    assert 100 < metrics["peak_rss_mb"] < 8000  # the stage's own peak (VmHWM reset when it starts)


def test_eval_answers_in_bf16_when_asked(tiny_recipe, monkeypatch):
    """eval.precision: bf16 loads the variants' weights in bf16 (fp32 stays the default)."""
    import torch

    from lmforge.evaluate import stage as compare

    loaded: list[torch.dtype] = []
    original = compare.load_variant

    def spy(variant, trust_remote_code=False, dtype=None):
        model, tokenizer = original(variant, trust_remote_code, dtype)
        loaded.append(next(model.parameters()).dtype)
        return model, tokenizer

    monkeypatch.setattr(compare, "load_variant", spy)
    assert compare.eval_dtype("fp32") is None and compare.eval_dtype("bf16") == torch.bfloat16
    recipe = load_recipe(tiny_recipe, ["stages=[data,eval]", "eval.precision=bf16"])
    run_recipe(recipe)
    assert loaded == [torch.bfloat16]
