"""`lmforge export` on a tiny LoRA run: HF folder, GGUF f16/q8_0 with template and EOS, Modelfile, parity."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmforge.config import load_recipe
from lmforge.errors import StageError
from lmforge.export import gguf_file
from lmforge.export.run import ExportSettings, run_export
from lmforge.pipeline import run_recipe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """A tiny data -> sft run (LoRA) to export."""
    import conftest as shared

    root = tmp_path_factory.mktemp("export-run")
    train = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(8)]
    shared.write_jsonl(root / "qa" / "train.jsonl", shared.qa_rows(train))
    held_out = [(f"Tell me fact {i}.", answer) for i, (_, answer) in enumerate(train[:3])]
    shared.write_jsonl(root / "qa" / "test.jsonl", shared.qa_rows(held_out))
    recipe_path = root / "tiny.yaml"
    recipe_path.write_text(
        f"""
name: tiny
run_dir: {root / "runs"}
stages: [data, sft, eval]
model: {{ref: {tiny_model_dir}}}
data:
  sources:
    - {{path: qa/train.jsonl, split: train}}
    - {{path: qa/test.jsonl, split: test}}
sft: {{epochs: 1, lr: 5.0e-2, batch_size: 4, max_length: 64, precision: fp32, lora: {{r: 4, alpha: 16}}}}
eval: {{sets: [test], max_new_tokens: 8, batch_size: 4, bootstrap: 50}}
""",
        encoding="utf-8",
    )
    run_recipe(load_recipe(recipe_path))
    return root / "runs" / "tiny"


def test_export_cli_writes_checked_hf_gguf_and_modelfile(tiny_run):
    import gguf
    from transformers import AutoTokenizer

    command = [sys.executable, "-m", "lmforge.cli", "export", str(tiny_run), "--gguf", "f16,q8_0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tiny_run / "export"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done"

    checks = {c["name"]: c for c in json.loads((out / "parity.json").read_text())["checks"]}
    assert set(checks) >= {"merge", "hf", "gguf:f16", "gguf:q8_0"}
    assert all(c["passed"] for c in checks.values())
    assert checks["merge"]["max_abs_logit_diff"] < 1e-3
    assert checks["gguf:f16"]["same_greedy_as_rounded_merged"] and checks["gguf:f16"]["same_chat_template"]
    assert checks["gguf:q8_0"]["next_token_agreement"] >= 0.9

    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    generation = json.loads((out / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (out / "hf" / "model.safetensors").is_file() and tokenizer.chat_template

    reader = gguf.GGUFReader(out / "tiny.q8_0.gguf")
    fields = reader.fields
    eos = int(fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    assert eos == tokenizer.eos_token_id
    template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    assert template == tokenizer.chat_template
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied head: llama.cpp reuses token_embd

    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./tiny.q8_0.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile

    # The model card: what a hub's parser reads (header, eval results) and the evidence in the body.
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == str(tiny_run.parent.parent / "tiny-llama0") or card.data.base_model
    assert card.data.license == "other" and "lmforge" in card.data.tags and "sft" in card.data.tags
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert ("test", "accuracy (tuned)") in results and ("test", "accuracy (base)") in results
    for section in ("## Data", "## Training (sft)", "## Evaluation", "## How to run it", "## Recipe"):
        assert section in card.text, section
    assert "lmforge eval" in card.text and "| train |" in card.text  # the eval table and the data accounting
    assert (out / "hf" / "README.md").read_text() == (out / "README.md").read_text()


def test_a_broken_gguf_fails_the_export(tiny_run, tmp_path, monkeypatch):
    """Skip the rotary permutation of q/k: the file loads, but the parity check must catch it."""
    monkeypatch.setattr(gguf_file, "_permute", lambda weights, heads, kv_heads: weights)
    with pytest.raises(StageError, match="gguf:f16: its logits differ from the f16-rounded merged model"):
        run_export(str(tiny_run), ExportSettings(out_dir=tmp_path / "bad", gguf_types=["f16"], new_tokens=12))
    checks = json.loads((tmp_path / "bad" / "parity.json").read_text())["checks"]
    assert {c["name"]: c["passed"] for c in checks} == {"merge": True, "hf": True, "gguf:f16": False}
    manifest = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "gguf:f16" in manifest["error"]["message"]


def test_a_model_without_a_chat_template_exports_with_plain_prompts(tmp_path, tiny_model_dir):
    """A base model with no template (GPT-2 style) exports as it is: its parity prompts are the messages' text."""
    import shutil

    from transformers import AutoTokenizer

    from lmforge.export import parity
    from lmforge.export.run import ExportSettings, run_export

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    tokenizer = AutoTokenizer.from_pretrained(plain)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(plain)
    config = plain / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"chat_template"', '"unused_template"'))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fact 3?"}]
    assert parity.render(AutoTokenizer.from_pretrained(plain), conversation) == "Be brief.\n\nFact 3?"
    settings = ExportSettings(out_dir=tmp_path / "out", gguf_types=["f16"], samples=2, new_tokens=4)
    result = run_export(str(plain), settings)
    checks = {c["name"]: c for c in result.checks}
    assert checks["hf"]["passed"], checks["hf"]
