"""Every family end to end on a tiny random model with its real tokenizer: data -> sft (LoRA) -> eval, then
``lmforge export`` (merge, GGUF through llama.cpp's converter, parity). Slow tier: the vocabularies of
Llama 3 and Qwen are 128-152k tokens, and each GGUF is written and read back."""

from __future__ import annotations

import json

import pytest
from families import FAMILIES, build_family_model

from lmforge.config import load_recipe
from lmforge.errors import StageError
from lmforge.export.run import ExportSettings, run_export
from lmforge.models import eos_ids, load_for_inference
from lmforge.pipeline import run_recipe

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_trains_evaluates_and_exports(name, tmp_path):
    import conftest as shared

    model_dir = build_family_model(name, tmp_path / "model")
    facts = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(8)]
    shared.write_jsonl(tmp_path / "qa" / "train.jsonl", shared.qa_rows(facts))
    held_out = [(f"Tell me fact {i}.", answer) for i, (_, answer) in enumerate(facts[:3])]
    shared.write_jsonl(tmp_path / "qa" / "test.jsonl", shared.qa_rows(held_out))
    template = "chat" if FAMILIES[name].end_of_turn else "alpaca"
    (tmp_path / "family.yaml").write_text(
        f"""
name: {name}
run_dir: {tmp_path / "runs"}
stages: [data, sft, eval]
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: qa/train.jsonl, split: train}}
    - {{path: qa/test.jsonl, split: test}}
  system_prompts: {{general: Answer in one sentence.}}
sft: {{epochs: 3, lr: 2.0e-2, batch_size: 4, max_length: 96, precision: fp32, template: {template}, logging_steps: 1,
      lora: {{r: 4, alpha: 16}}, replay: {{enabled: false}}}}
eval: {{sets: [test], max_new_tokens: 12, batch_size: 4, bootstrap: 0}}
""",
        encoding="utf-8",
    )
    run_recipe(load_recipe(tmp_path / "family.yaml"))
    run = tmp_path / "runs" / name
    losses = [json.loads(line).get("loss") for line in (run / "sft" / "train_log.jsonl").read_text().splitlines()]
    losses = [x for x in losses if isinstance(x, float)]
    assert losses[-1] < losses[0], f"{name}: sft did not learn ({losses})"
    model, tokenizer = load_for_inference(model_dir, run / "sft" / "adapter")
    if FAMILIES[name].end_of_turn:  # generation stops at the family's end of turn
        assert tokenizer.convert_tokens_to_ids(FAMILIES[name].end_of_turn) in eos_ids(model, tokenizer)

    settings = ExportSettings(gguf_types=["f16"], samples=2, new_tokens=8)
    if FAMILIES[name].no_gguf:  # the failure is a clear message, not a traceback
        with pytest.raises(StageError, match=r"tokenizer\.model|rotary_pct"):
            run_export(str(run), settings)
        return
    result = run_export(str(run), settings)
    gguf = result.gguf_files["f16"]
    assert gguf.stat().st_size > 0
    checks = {c["name"]: c for c in result.checks}
    assert checks["hf"]["passed"] and checks["merge"]["passed"], checks
    gguf_check = checks["gguf:f16"]
    # read back by transformers where it can (llama, qwen2, gpt2 ...), else said why not, never silently passed
    assert gguf_check["passed"] is True or (gguf_check["passed"] is None and "cannot read" in gguf_check["not_run"])
