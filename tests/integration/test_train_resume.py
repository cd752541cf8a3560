"""A training run killed with SIGKILL mid-way and re-run ends exactly where an uninterrupted run ends:
same final weights (max abs difference below 1e-5) and the same logged losses, step for step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import qa_rows, write_jsonl
from safetensors.torch import load_file
from test_train_models import build_tiny_bert, save_model

pytestmark = pytest.mark.integration

# Runs a recipe in a fresh process; with KILL_AT_STEP set, the process SIGKILLs itself when the
# Trainer is about to run that optimizer step (no clean-up, no atexit: like a power cut).
RUNNER = """
import os, signal, sys
from transformers import Trainer

kill_at = int(os.environ.get("KILL_AT_STEP", "-1"))
train_step = Trainer.training_step

def training_step(self, *args, **kwargs):
    if self.state.global_step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(self, *args, **kwargs)

Trainer.training_step = training_step
from lmforge.config import load_recipe
from lmforge.pipeline import run_recipe
run_recipe(load_recipe(sys.argv[1], sys.argv[2:]))
"""


def run_process(tmp_path: Path, recipe: Path, run_dir: Path, kill_at: int = -1) -> subprocess.CompletedProcess:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    env = {**os.environ, "KILL_AT_STEP": str(kill_at)}
    return subprocess.run(
        [sys.executable, str(runner), str(recipe), f"run_dir={run_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def losses(stage_dir: Path) -> list[tuple[int, float]]:
    entries = map(json.loads, (stage_dir / "train_log.jsonl").read_text().splitlines())
    return [(entry["step"], entry["loss"]) for entry in entries if "loss" in entry]


def recipe_for(stage: str, tmp_path: Path, model_dir: Path) -> Path:
    settings = "precision: fp32, logging_steps: 1, save_steps: 3, report_to: [], max_steps: 11"
    if stage == "sft":
        pairs = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(24)]
        write_jsonl(tmp_path / "data.jsonl", qa_rows(pairs))
        section = f"sft: {{batch_size: 4, epochs: 3, lr: 5.0e-3, lora: {{dropout: 0.1}}, {settings}}}"
    else:
        texts = [f"Article {i}. The benefit number {i} is paid after {i * 3} days of incapacity." for i in range(24)]
        write_jsonl(tmp_path / "data.jsonl", [{"text": text} for text in texts])
        section = f"mlm: {{batch_size: 2, max_length: 24, epochs: 3, lr: 2.0e-3, {settings}}}"
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"""
name: resume
stages: [data, {stage}]
model: {{ref: {model_dir}}}
data: {{sources: [{{path: data.jsonl}}]}}
{section}
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("stage", ["sft", pytest.param("mlm", marks=pytest.mark.slow)])  # mlm: the slow tier
def test_a_killed_run_resumes_to_the_same_weights_and_losses(stage, tmp_path, tiny_model_dir):
    # sft: LoRA with dropout on a length-grouped sampler; mlm: random masking; both draw on the RNG.
    model_dir = tiny_model_dir if stage == "sft" else save_model(*build_tiny_bert(), tmp_path / "bert")
    recipe = recipe_for(stage, tmp_path, model_dir)
    whole = run_process(tmp_path, recipe, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = run_process(tmp_path, recipe, tmp_path / "killed", kill_at=7)
    assert killed.returncode == -9, killed.stderr[-3000:]
    stage_dir = tmp_path / "killed" / "resume" / stage
    assert json.loads((stage_dir / "manifest.json").read_text())["status"] == "running"
    assert sorted(p.name for p in (stage_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    resumed = run_process(tmp_path, recipe, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming an interrupted run from checkpoint-6" in resumed.stdout
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["attempts"] == 2

    expected = losses(tmp_path / "whole" / "resume" / stage)
    assert len(expected) == 11
    assert losses(stage_dir) == expected
    weights_file = "adapter/adapter_model.safetensors" if stage == "sft" else "model/model.safetensors"
    want = load_file(tmp_path / "whole" / "resume" / stage / weights_file)
    got = load_file(stage_dir / weights_file)
    assert want.keys() == got.keys()
    assert max(float((want[k] - got[k]).abs().max()) for k in want) < 1e-5
