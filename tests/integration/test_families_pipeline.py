"""Every family end to end on a tiny random model with its real tokenizer: data -> cpt -> sft (LoRA) -> dpo
-> eval, a chat request served from the run, ``lmforge export`` (merge, GGUF through llama.cpp's converter,
parity), and full fine-tuning. Slow tier: the vocabularies of Llama 3 and Qwen are 128-152k tokens, and
each GGUF is written and read back."""

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
    (tmp_path / "corpus.md").write_text("# Facts\n\n" + " ".join(a for _, a in facts) + "\n", encoding="utf-8")
    template = "chat" if FAMILIES[name].end_of_turn else "alpaca"
    tiny = "precision: fp32, logging_steps: 1, lora: {r: 4, alpha: 16}"
    (tmp_path / "family.yaml").write_text(
        f"""
name: {name}
run_dir: {tmp_path / "runs"}
stages: [data, cpt, sft, dpo, eval]
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: qa/train.jsonl, split: train}}
    - {{path: qa/test.jsonl, split: test}}
    - {{path: corpus.md, split: corpus}}
  system_prompts: {{general: Answer in one sentence.}}
cpt: {{splits: [corpus], max_steps: 2, lr: 1.0e-3, batch_size: 2, max_length: 32, {tiny}}}
sft: {{epochs: 3, lr: 2.0e-2, batch_size: 4, max_length: 96, template: {template}, replay: {{enabled: false}}, {tiny}}}
dpo: {{max_steps: 2, lr: 1.0e-3, batch_size: 2, max_length: 96, {tiny},
      build: {{splits: [train], samples: 2, max_new_tokens: 8, batch_size: 8, limit: 4}}}}
eval: {{sets: [test], max_new_tokens: 12, batch_size: 4, bootstrap: 0}}
""",
        encoding="utf-8",
    )
    run_recipe(load_recipe(tmp_path / "family.yaml"))
    run = tmp_path / "runs" / name
    for stage in ("cpt", "dpo"):
        logged = [json.loads(line) for line in (run / stage / "train_log.jsonl").read_text().splitlines()]
        assert any(isinstance(row.get("loss"), float) for row in logged), f"{name}: {stage} logged no loss"
    _serve_one_request(run, name)
    losses = [json.loads(line).get("loss") for line in (run / "sft" / "train_log.jsonl").read_text().splitlines()]
    losses = [x for x in losses if isinstance(x, float)]
    assert losses[-1] < losses[0], f"{name}: sft did not learn ({losses})"
    model, tokenizer = load_for_inference(model_dir, run / "sft" / "adapter")
    if FAMILIES[name].end_of_turn:  # generation stops at the family's end of turn
        assert tokenizer.convert_tokens_to_ids(FAMILIES[name].end_of_turn) in eos_ids(model, tokenizer)

    settings = ExportSettings(gguf_types=["f16"], samples=2, new_tokens=8)
    if FAMILIES[name].no_gguf:  # the failure is a clear message, not a traceback
        with pytest.raises(StageError, match=r"tokenizer\.model|rotary_pct|pre-tokenizer"):
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


def _serve_one_request(run, name: str) -> None:
    """The run's final model (cpt + sft + dpo adapters, served under the run's name) answers one OpenAI-style
    request: a chat where the family has a template, a completion where it has none."""
    from fastapi.testclient import TestClient

    from lmforge.serve.server import ServeSettings, build_app, load_models

    app = build_app(load_models(str(run)), ServeSettings())
    chat = bool(FAMILIES[name].end_of_turn)
    with TestClient(app) as client:
        if chat:
            messages = [{"role": "user", "content": "What is fact number 2?"}]
            response = client.post("/v1/chat/completions", json={"model": name, "messages": messages, "max_tokens": 6})
        else:
            response = client.post("/v1/completions", json={"model": name, "prompt": "Fact 2 is", "max_tokens": 6})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    assert isinstance(text, str) and choice["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_fully_fine_tunes(name, tmp_path):
    """sft with every weight trained: the loss falls and the saved model loads and generates."""
    import conftest as shared

    model_dir = build_family_model(name, tmp_path / "model")
    facts = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(4)]
    shared.write_jsonl(tmp_path / "qa" / "train.jsonl", shared.qa_rows(facts))
    template = "chat" if FAMILIES[name].end_of_turn else "alpaca"
    (tmp_path / "full.yaml").write_text(
        f"""
name: {name}-full
run_dir: {tmp_path / "runs"}
stages: [data, sft]
model: {{ref: {model_dir}}}
data: {{sources: [{{path: qa/train.jsonl, split: train}}]}}
sft: {{method: full, epochs: 4, lr: 3.0e-3, batch_size: 4, max_length: 96, precision: fp32, template: {template},
      logging_steps: 1, replay: {{enabled: false}}}}
""",
        encoding="utf-8",
    )
    run_recipe(load_recipe(tmp_path / "full.yaml"))
    run = tmp_path / "runs" / f"{name}-full"
    losses = [json.loads(line).get("loss") for line in (run / "sft" / "train_log.jsonl").read_text().splitlines()]
    losses = [x for x in losses if isinstance(x, float)]
    assert losses[-1] < losses[0], f"{name}: full sft did not learn ({losses})"
    model, tokenizer = load_for_inference(run / "sft" / "model")
    prompt = tokenizer("Fact", return_tensors="pt")
    assert model.generate(**prompt, max_new_tokens=3, do_sample=False).shape[1] > prompt["input_ids"].shape[1]
