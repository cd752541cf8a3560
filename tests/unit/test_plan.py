"""``lmforge plan``: model shapes, the memory model, batching and warnings (measured runs: tests/integration)."""

import json

import pytest
import torch

from lmforge.config import SFTSpec
from lmforge.perf.plan import (
    Batches,
    Hardware,
    ModelShape,
    estimate_memory,
    plan_stage,
    sft_batches,
)

SMOLLM2 = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def _meta_param_count(config: dict) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    return sum(p.numel() for p in model.parameters())


def test_model_shape_counts_parameters_exactly():
    assert ModelShape.from_config(SMOLLM2).params == _meta_param_count(SMOLLM2) == 134_515_008
    untied = {**SMOLLM2, "tie_word_embeddings": False, "num_hidden_layers": 2}
    assert ModelShape.from_config(untied).params == _meta_param_count(untied)


def test_lora_parameter_count_matches_peft(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = json.loads((tiny_model_dir / "config.json").read_text())
    shape = ModelShape.from_config(config)
    for targets in ("all-linear", ["q_proj", "v_proj"]):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert shape.lora_params(4, targets) == trainable


def test_an_adapter_on_the_top_layers_stops_the_backward_pass_below_them(tiny_model_dir):
    """lora.top_layers: adapters in the last blocks only; the blocks below keep nothing for the backward
    pass, and plan counts the smaller adapter, the shorter backward pass and the fewer activations."""
    from transformers import AutoModelForCausalLM

    from lmforge.config import SFTSpec
    from lmforge.engine.lora import add_lora
    from lmforge.perf.plan import flops_per_token

    config = json.loads((tiny_model_dir / "config.json").read_text())
    layers = config["num_hidden_layers"]
    spec = SFTSpec(lora={"r": 4, "top_layers": 1})
    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), spec, "CAUSAL_LM")
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {str(layers - 1)}
    out = model(input_ids=torch.tensor([[1, 2, 3, 4]]), output_hidden_states=True)
    assert not out.hidden_states[layers - 1].requires_grad  # the input of the last block: no graph below
    assert out.logits.requires_grad
    shape = ModelShape.from_config(config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert shape.lora_params(4, "all-linear", 1) == trainable
    assert flops_per_token(shape, spec) < flops_per_token(shape, SFTSpec(lora={"r": 4}))


def _hardware(available_mb: float) -> Hardware:
    return Hardware("cpu", 2, 2.1, True, 4.3e12, 24_000.0, available_mb, "test CPU")


def test_memory_model_orders_settings_sensibly():
    shape = ModelShape.from_config(SMOLLM2, checkpoint_bytes=538_000_000)
    batches = Batches(micro_batch_tokens=64 * 95, longest_row=95, rows=64, computed_tokens=10**6, trained_examples=500)
    lora = SFTSpec()
    plain = estimate_memory(shape, lora, batches, bf16=True, kernel="eager")
    checkpointed = estimate_memory(shape, SFTSpec(gradient_checkpointing=True), batches, bf16=True, kernel="eager")
    fp32 = estimate_memory(shape, lora, batches, bf16=False, kernel="eager")
    full = estimate_memory(shape, SFTSpec(method="full"), batches, bf16=True, kernel="eager")
    assert checkpointed["activations"] < plain["activations"] / 4
    assert fp32["weights"] > 1.9 * plain["weights"] and fp32["activations"] > plain["activations"]
    assert full["gradients + AdamW"] > 10 * plain["gradients + AdamW"]  # 135M trainable weights, not 2M
    # Eager attention keeps the scores of every example: quadratic in the row length.
    long_rows = Batches(8 * 1024, 1024, 8, 10**6, 500)
    eager = estimate_memory(shape, lora, long_rows, bf16=True, kernel="eager")["activations"]
    sdpa = estimate_memory(shape, lora, long_rows, bf16=True, kernel="sdpa")["activations"]
    assert eager > 2 * sdpa


def test_warns_when_the_peak_does_not_fit():
    shape = ModelShape.from_config(SMOLLM2, checkpoint_bytes=538_000_000)
    batches = Batches(64 * 2048, 2048, 64, 10**7, 5000)
    spec = SFTSpec(batch_size=64, max_length=2048)
    plan = plan_stage("sft", shape, spec, batches, _hardware(available_mb=8_000), bf16=True, kernel="sdpa")
    assert plan.peak_mb > 8_000
    assert len(plan.warnings) == 2 and "will not fit" in plan.warnings[0]
    assert "sft.gradient_checkpointing: true" in plan.warnings[0]
    assert plan.seconds > 2 * 3600 and "sft will take about" in plan.warnings[1] and " h here" in plan.warnings[1]
    roomy = plan_stage("sft", shape, SFTSpec(), Batches(8 * 90, 90, 8, 10**5, 500), _hardware(20_000), True, "eager")
    assert roomy.warnings == [] and roomy.seconds and roomy.seconds > 0


def test_sft_batches_padded_and_packed():
    lengths = [10, 20, 30, 40, 50, 60, 70, 80]
    padded = sft_batches(lengths, SFTSpec(batch_size=4, epochs=2))
    assert (padded.rows, padded.longest_row, padded.micro_batch_tokens) == (4, 80, 320)
    assert padded.computed_tokens == 2 * (4 * 80 + 4 * 40)  # length-grouped, padded to each batch's longest
    packed = sft_batches(lengths, SFTSpec(batch_size=4, epochs=2, packing=True))
    assert packed.rows == 1 and packed.micro_batch_tokens <= 80 + 70 + 60 + 50
    assert packed.computed_tokens == 2 * sum(lengths)  # no padding
    steps = sft_batches(lengths, SFTSpec(batch_size=4, max_steps=1))
    assert steps.trained_examples == 4


def test_plan_cli_prints_every_component(tiny_recipe):
    from typer.testing import CliRunner

    from lmforge.cli import app

    result = CliRunner().invoke(app, ["plan", str(tiny_recipe)])
    assert result.exit_code == 0, result.output
    for part in ("process", "weights", "gradients + AdamW", "activations", "peak RSS", "sft: lora, fp32"):
        assert part in result.output


def test_plan_counts_splits_of_later_stages_and_warns_before_they_exist(tiny_recipe):
    from conftest import write_jsonl

    from lmforge.config import load_recipe
    from lmforge.data.stage import run as prepare
    from lmforge.perf.plan import plan_recipe
    from lmforge.records import chat_record
    from lmforge.rundir import StageDir

    recipe = load_recipe(tiny_recipe, ["sft.splits=[train,raft]"])
    _, before = plan_recipe(recipe)
    assert any("['raft'] do not exist yet" in w for w in before[0].warnings), before[0].warnings

    # Once the data stage and a stage publishing `raft` (as index does) are done, raft's long rows count.
    prepare(recipe)
    long_answer = "A long passage answer. " * 20
    messages = [{"role": "user", "content": "Question?"}, {"role": "assistant", "content": long_answer}]
    raft_records = [chat_record(messages, {"path": "raft.jsonl"}, None, {}) for _ in range(4)]
    index = StageDir.open(recipe.run_path(), "index")
    index.start("fp", {}, {})
    write_jsonl(index.path("raft.jsonl"), raft_records)
    index.finish({}, {"splits": {"raft": str(index.path("raft.jsonl"))}})
    _, after = plan_recipe(recipe)
    assert not after[0].warnings
    assert after[0].batches.longest_row > before[0].batches.longest_row + 50
    assert after[0].batches.trained_examples > before[0].batches.trained_examples


def test_attention_is_judged_on_the_packed_row_not_on_max_length():
    """sft packs a micro-batch into one row: 16 examples of 100 tokens make a 1,600-token row."""
    from lmforge.engine.compute import attention_kernel, attention_row

    lengths = [100] * 40 + [60]
    assert attention_row(lengths, 16, packing=True) == (1, 1600)
    assert attention_row(lengths, 16, packing=False) == (16, 100)
    assert attention_row([30, 20], 16, packing=False) == (2, 30)
    if not torch.cuda.is_available():  # on a CPU eager attention is kept for rows up to 512 tokens
        assert attention_kernel("auto", attention_row(lengths, 16, packing=True)[1]) == "sdpa"
        assert attention_kernel("auto", attention_row(lengths, 16, packing=False)[1]) == "eager"


def test_time_follows_the_calibration_of_the_cpus_instruction_set():
    """bf16 on avx512_bf16 (Zen 5) reaches a larger share of its peak than on AMX (measured by lmforge bench)."""
    from dataclasses import replace

    from lmforge.perf.plan import EFFICIENCY, estimate_seconds

    shape = ModelShape.from_config(SMOLLM2)
    batches = Batches(8 * 90, 90, 8, 10**6, 5000)
    amx = _hardware(20_000)
    zen = replace(amx, isa="avx512_bf16", peak_flops=0.66e12)
    ratio = estimate_seconds(shape, SFTSpec(), batches, zen, True) / estimate_seconds(
        shape, SFTSpec(), batches, amx, True
    )
    assert ratio == pytest.approx((4.3e12 * EFFICIENCY["amx"]) / (0.66e12 * EFFICIENCY["avx512_bf16"]))


def test_plan_compares_arms_and_counts_the_documents_mixed_in(tiny_recipe, tmp_path, monkeypatch):
    from conftest import write_jsonl
    from typer.testing import CliRunner

    from lmforge.cli import app
    from lmforge.config import load_recipe
    from lmforge.perf.arms import plan_arms

    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))  # no replay generated yet for this model
    rules = [f"# Rule {i}\n\nThe levy under rule {i} is {i * 3} crowns.\n\nIt is paid yearly." for i in range(5)]
    docs = [{"text": text} for text in rules]
    write_jsonl(tiny_recipe.parent / "docs.jsonl", docs)
    text = tiny_recipe.read_text().replace("split: test}", "split: test}\n    - {path: docs.jsonl, split: documents}")
    tiny_recipe.write_text(text)

    arms = plan_arms(
        lambda extra: load_recipe(tiny_recipe, ["data.questions.enabled=false", *extra]),
        [
            "",
            "sft.documents.enabled=true sft.documents.copies=3",
            "data.questions.enabled=true",
            "data.questions.enabled=true sft.reword.enabled=true sft.reword.per_question=2",
        ],
    )
    (_, [plain]), (_, [mixed]), (_, [asked]), (_, [reworded]) = arms
    assert mixed.batches.trained_examples == plain.batches.trained_examples + 5 * 3 * 2  # 5 docs, 3 forms, 2 epochs
    assert any("15 document chunks (3 form(s) each)" in note for note in mixed.notes)
    assert asked.batches.trained_examples > plain.batches.trained_examples  # the arm's own data, questions written
    assert any("replay of the base model's replies not counted" in note for note in plain.notes)
    questions = (asked.batches.trained_examples - plain.batches.trained_examples) // 2  # trained for 2 epochs
    assert any(
        f"rewordings of {questions} rule-made questions not counted (at most {questions * 2};" in note
        for note in reworded.notes
    )

    result = CliRunner().invoke(app, ["plan", str(tiny_recipe), "--arm", "sft.method=full", "--arm", "sft.epochs=4"])
    assert result.exit_code == 0, result.output
    assert "arms" in result.output and "sft.epochs=4" in result.output and "sft (full)" in result.output
