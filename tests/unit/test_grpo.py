"""The grpo stage on a tiny model: its loss equals TRL's GRPO loss (value and gradients) on the same batch, the
policy learns what the reward asks for, and the stage runs after sft, becomes the run's result and is compared
with sft by eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama, qa_rows, write_jsonl

from lmforge.config import GRPOSpec, RewardSpec, load_recipe
from lmforge.errors import StageError
from lmforge.pipeline import run_recipe
from lmforge.rundir import StageDir, final_model
from lmforge.train import grpo

FACTS = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(8)]


def test_answer_mask_ends_at_the_first_stop_token_inclusive():
    completions = torch.tensor([[5, 6, 2, 9, 2], [5, 6, 7, 8, 9], [2, 3, 3, 3, 3]])
    assert grpo.answer_mask(completions, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_group_advantages_compare_each_answer_with_its_own_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 5.0])
    advantages = grpo.group_advantages(rewards, 4)
    assert advantages[:4].tolist() == pytest.approx([0.866, -0.866, -0.866, 0.866], abs=1e-3)
    assert advantages[4:].tolist() == [0.0, 0.0, 0.0, 0.0]  # a group all alike teaches nothing


def test_reward_is_evals_rule():
    closed = grpo.Question([1], "42", ("forty-two",))
    spec = RewardSpec(length_penalty=0.01)
    assert grpo.reward("It is 42.", closed, spec, 10) == (pytest.approx(0.9), True)
    assert grpo.reward("forty-two", closed, spec, 0) == (1.0, True)
    assert grpo.reward("It is 42 [1].", closed, spec, 0) == (0.5, True)  # a citation with no passage shown
    with_passages = grpo.Question([1], "42", cites=(2,), shown=3)
    assert grpo.reward("It is 42 [2].", with_passages, spec, 0) == (1.5, True)
    assert grpo.reward("It is 42 [1].", with_passages, spec, 0) == (1.0, True)  # another document's passage
    assert grpo.reward("It is 41 [7].", with_passages, spec, 0) == (-0.5, False)  # invented number [7]


def test_loss_and_gradients_match_trls_grpo_on_the_same_batch(tmp_path, tiny_tokenizer, tiny_model_dir):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch, prompt_width = 4, 6
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, len(tiny_tokenizer), (batch, prompt_width), generator=generator)
    completions = torch.randint(3, len(tiny_tokenizer), (batch, 7), generator=generator)
    mask = torch.ones_like(completions)
    mask[1, 4:], mask[3, 2:] = 0, 0  # two answers ended early
    advantages = torch.tensor([1.2, -0.4, 0.3, -1.1])
    sequences = torch.cat([prompts, completions], dim=1)
    attention = torch.cat([torch.ones_like(prompts), mask], dim=1)
    with torch.no_grad():
        ref = grpo.completion_logps(model, sequences, attention, prompt_width, 0.7) + 0.05 * torch.randn(
            batch, 7, generator=generator
        )
    args = trl.GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=7,
        beta=0.04, epsilon=0.2, loss_type="grpo", temperature=0.7, use_bias_correction_kl=True,
        report_to="none", use_cpu=True, bf16=False,
    )  # fmt: skip
    trainer = trl.GRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "hi"}] * 4),
        processing_class=tiny_tokenizer,
    )
    trainer.current_gradient_accumulation_steps = 1
    inputs = {
        "prompt_ids": prompts, "prompt_mask": torch.ones_like(prompts), "completion_ids": completions,
        "completion_mask": mask, "advantages": advantages, "ref_per_token_logps": ref,
    }  # fmt: skip
    theirs = trainer._compute_loss(trainer.model, inputs)
    theirs.backward()
    their_grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}

    ours_model = model  # the same weights, loaded apart from TRL's trainer
    logps = grpo.completion_logps(ours_model, sequences, attention, prompt_width, 0.7)
    ours = grpo.sequence_losses(logps, logps.detach(), ref, advantages, mask, 0.04, 0.2).mean()
    ours.backward()
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5, abs=1e-7)
    for name, p in ours_model.named_parameters():
        if name in their_grads:
            assert p.grad is not None, name
            torch.testing.assert_close(p.grad, their_grads[name], rtol=1e-4, atol=1e-6)
    assert len(their_grads) > 10


def test_the_policy_learns_what_the_reward_asks_for(tiny_tokenizer):
    """Rewarding shorter answers (length penalty only) makes the policy end its answers sooner; the same loop with
    the advantages' sign flipped (the defect this guards) would not."""
    torch.manual_seed(0)
    model = build_tiny_llama(tiny_tokenizer, seed=1)
    spec = GRPOSpec(samples=16, max_new_tokens=12, beta=0.0, temperature=1.0, reward=RewardSpec(length_penalty=0.1))
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "pension"}], add_generation_prompt=True, tokenize=False
    )
    prompt = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    questions = [grpo.Question(list(prompt), "never-said-gold")]
    pad = tiny_tokenizer.pad_token_id
    objective = grpo.GroupObjective(spec, questions, tiny_tokenizer, pad, [tiny_tokenizer.eos_token_id])
    batch = grpo.collate_questions([{"input_ids": list(prompt), "item": 0}], pad)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    lengths = []
    for _ in range(25):
        loss, count = objective(model, batch)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad()
        lengths.append(objective.drain()["answer_tokens"])
    first, last = sum(lengths[:5]) / 5, sum(lengths[-5:]) / 5
    assert first > 8 and last < first / 2, lengths


def write_recipe(tmp_path: Path, model_dir: Path, grpo_section: str) -> Path:
    write_jsonl(tmp_path / "qa" / "train.jsonl", qa_rows(FACTS))
    write_jsonl(
        tmp_path / "qa" / "test.jsonl", qa_rows([(f"Tell me fact {i}.", a) for i, (_, a) in enumerate(FACTS[:3])])
    )
    recipe = tmp_path / "rl.yaml"
    recipe.write_text(
        f"""
name: rl
run_dir: {tmp_path / "runs"}
stages: [data, sft, grpo, eval]
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: qa/train.jsonl, split: train}}
    - {{path: qa/test.jsonl, split: test}}
sft: {{epochs: 1, lr: 5.0e-3, batch_size: 4, max_length: 128, precision: fp32, replay: {{enabled: false}}}}
grpo: {grpo_section}
eval: {{sets: [test], max_new_tokens: 8, batch_size: 4, bootstrap: 0}}
""",
        encoding="utf-8",
    )
    return recipe


def test_grpo_after_sft_becomes_the_runs_result_and_is_compared_with_sft(tmp_path, tiny_model_dir):
    section = "{samples: 4, max_new_tokens: 8, batch_size: 2, lr: 1.0e-3, precision: fp32, logging_steps: 1}"
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, section))
    run_recipe(recipe)
    run = recipe.run_path()
    stage = StageDir.open(run, "grpo")
    metrics, outputs = stage.manifest["metrics"], stage.manifest["outputs"]
    assert metrics["asked"] == len(FACTS) and metrics["samples"] == 4 and metrics["steps"] == 4
    assert outputs["starts_from"] == "sft" and "adapter" in outputs
    assert 0.0 <= metrics["mean_accuracy"] <= 1.0 and metrics["mean_kl"] >= 0.0
    logged = [json.loads(line) for line in (run / "grpo" / "train_log.jsonl").read_text().splitlines()]
    assert all("reward" in entry and "kl" in entry for entry in logged if "loss" in entry)
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: the fresh adapter is the reference
    assert final_model(run).stage == "grpo"
    summary = json.loads((run / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert {"base", "sft", "tuned"} <= set(summary["variants"])
    assert "sft" in summary["sets"]["test"]["tuned"]["vs"]
    run_recipe(recipe)  # unchanged: skipped
    assert StageDir.open(run, "grpo").manifest["metrics"] == metrics


def test_grpo_without_short_answers_says_what_it_needs(tmp_path, tiny_model_dir):
    recipe_path = write_recipe(tmp_path, tiny_model_dir, "{samples: 2, max_new_tokens: 4, precision: fp32}")
    long = " and it is written in the code that the harbour keeps, as everyone knows."
    rows = [
        {"messages": [m, {**a, "content": a["content"] + long}]} for m, a in (r["messages"] for r in qa_rows(FACTS))
    ]
    # no meta.answer, and replies too long to be a short answer themselves
    write_jsonl(tmp_path / "qa" / "train.jsonl", rows)
    recipe = load_recipe(recipe_path)
    with pytest.raises(StageError, match="short gold answer"):
        run_recipe(recipe, only=["data", "sft", "grpo"])


def test_the_reference_is_the_model_with_its_adapter_off_under_the_lean_lora_forward(tiny_tokenizer):
    """The KL term's reference for LoRA is the adapter switched off; lmforge's lean LoRA forward must honour
    PEFT's switch (it did not: the reference equalled the policy and the KL was always 0)."""
    from lmforge.engine.fast import enable_lean_lora
    from lmforge.engine.lora import add_lora

    base = build_tiny_llama(tiny_tokenizer, seed=2)
    sequences = torch.randint(3, len(tiny_tokenizer), (2, 9), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(sequences)
    with torch.no_grad():
        expected = grpo.completion_logps(base, sequences, attention, 4, 1.0)
    spec = GRPOSpec(method="lora")
    model = add_lora(base, spec, "CAUSAL_LM")
    assert enable_lean_lora(model) > 0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    objective = grpo.GroupObjective(spec, [], tiny_tokenizer, 0, [1])
    policy = grpo.completion_logps(model, sequences, attention, 4, 1.0)
    reference = objective.reference_logps(model, sequences, attention, 4)
    torch.testing.assert_close(reference, expected, rtol=1e-5, atol=1e-5)
    assert (policy - reference).abs().max() > 1e-2
