"""``lmforge plan`` against measured peak RSS: a small model here, SmolLM2 configurations in the slow tier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.config import load_recipe, shipped_recipe
from lmforge.perf.plan import plan_recipe

pytestmark = pytest.mark.integration


def run_measured(command: list[str]) -> tuple[int, str, float]:
    """Run a command; its exit code, output and peak RSS in MB (os.wait4 reports the child's own)."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    child.stdout.close()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, output, usage.ru_maxrss / 1024


def planned_and_measured(recipe: Path, overrides: list[str]) -> tuple[float, float]:
    _, plans = plan_recipe(load_recipe(recipe, overrides))
    command = [sys.executable, "-m", "lmforge.cli", "run", str(recipe)]
    for item in overrides:
        command += ["--set", item]
    code, output, measured = run_measured(command)
    assert code == 0, output[-3000:]
    return plans[0].peak_mb, measured


@pytest.fixture
def medium_recipe(tmp_path, tiny_tokenizer):
    """A randomly initialised 27M-parameter Llama trained in full, fp32: weights, gradients and AdamW
    states (~420 MB) and activations weigh more than the process itself, so the estimate is tested, not
    its constant."""
    from conftest import qa_rows, write_jsonl
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "medium")
    tiny_tokenizer.save_pretrained(tmp_path / "medium")
    pairs = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels. " * (1 + i % 4)) for i in range(32)]
    write_jsonl(tmp_path / "qa" / "train.jsonl", qa_rows(pairs))
    recipe = tmp_path / "medium.yaml"
    recipe.write_text(
        f"name: medium\nrun_dir: {tmp_path / 'runs'}\nstages: [data, sft]\nmodel: {{ref: {tmp_path / 'medium'}}}\n"
        "data: {sources: [{path: qa/train.jsonl, split: train}]}\n"
        "sft: {method: full, batch_size: 16, max_steps: 2, lr: 1.0e-5, report_to: [], precision: fp32}\n",
        encoding="utf-8",
    )
    return recipe


def test_plan_predicts_the_peak_rss_of_a_small_full_fine_tune(medium_recipe):
    predicted, measured = planned_and_measured(medium_recipe, [])
    assert predicted == pytest.approx(measured, rel=0.2), f"predicted {predicted:.0f} MB, measured {measured:.0f} MB"


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["sft.batch_size=16"],  # the demo's LoRA setting
        ["sft.batch_size=64"],  # activations of 64 rows
        ["sft.method=full", "sft.batch_size=8", "sft.lr=1e-5"],  # every weight trains: gradients and AdamW
    ],
    ids=["lora-b16", "lora-b64", "full-b8"],
)
def test_plan_predicts_smollm2_peak_rss_within_20_percent(tmp_path, overrides):
    sets = [*overrides, "stages=[data,sft]", "sft.max_steps=3", "sft.report_to=[]", f"run_dir={tmp_path}"]
    predicted, measured = planned_and_measured(shipped_recipe("demo"), sets)
    print(json.dumps({"overrides": overrides, "predicted_mb": predicted, "measured_mb": measured}))
    assert predicted == pytest.approx(measured, rel=0.2), f"predicted {predicted:.0f} MB, measured {measured:.0f} MB"
