"""LoRA variants (plain, DoRA, trained embeddings, full): what trains, and that what is saved reloads
into the model that was trained (the way eval, serve and export load it)."""

import pytest
import torch

from lmforge.config import Recipe, SFTSpec
from lmforge.engine.causal import build_causal_model
from lmforge.engine.fast import causal_lm_loss_sum, disable_lean_lora
from lmforge.engine.trainer import save_folder

IDS = torch.tensor([[5, 17, 42, 99, 123, 7, 64, 30]])


def recipe_for(model_dir) -> Recipe:
    return Recipe.model_validate({"name": "x", "stages": ["data"], "model": {"ref": str(model_dir)},
                                  "data": {"sources": [{"path": "unused"}]}})  # fmt: skip


@pytest.mark.parametrize(
    ("lora", "method", "trained"),
    [
        ({}, "lora", {"lora_A", "lora_B"}),
        ({"use_dora": True}, "lora", {"lora_A", "lora_B", "lora_magnitude_vector"}),
        ({"train_embeddings": True}, "lora", {"lora_A", "lora_B", "embed_tokens"}),
        ({}, "full", {"embed_tokens", "q_proj", "norm"}),
    ],
)
def test_variants_train_the_right_weights_and_reload_exactly(tmp_path, tiny_model_dir, lora, method, trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = SFTSpec(method=method, lora={"r": 4, "alpha": 8, **lora}, precision="fp32")
    torch.manual_seed(0)
    model = build_causal_model(tiny_model_dir, spec, 128, "eager", recipe_for(tiny_model_dir))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    for part in trained:
        assert any(part in n for n in names), (part, sorted(names)[:5])
    if method == "lora":
        assert not any("lora" not in n and "embed_tokens" not in n and "lm_head" not in n for n in names)

    loss, _ = causal_lm_loss_sum(model, {"input_ids": IDS, "labels": IDS.clone()})
    loss.backward()
    with torch.no_grad():  # one plain gradient step so adapters (B starts at 0) and embeddings move
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad.sign()
    disable_lean_lora(model)
    model.eval()
    with torch.no_grad():
        trained_logits = model(input_ids=IDS).logits
    folder = save_folder(tmp_path / ("adapter" if method == "lora" else "model"), model)
    if method == "lora":
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(folder))
        reloaded = reloaded.merge_and_unload()
    else:
        reloaded = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=IDS).logits, trained_logits, atol=1e-4, rtol=1e-4)
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(input_ids=IDS).logits
    assert not torch.allclose(trained_logits, base_logits, atol=1e-3)


def test_auto_attention_picks_eager_for_short_rows_and_sdpa_when_its_scores_are_large(tiny_model_dir, monkeypatch):
    from lmforge.engine import compute

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # demo sft: 16 rows of 95 tokens, 9 heads, 30 layers, bf16 -> 0.27 GB of scores; demo-rag: 385 tokens -> 4.5 GB
    demo = compute.eager_scores_bytes(16, 95, 9) * 30 / 2**20
    rag = compute.eager_scores_bytes(16, 385, 9) * 30 / 2**20
    assert demo < compute.EAGER_SCORES_BUDGET_MB < rag
    assert compute.attention_kernel("auto", 95, demo) == "eager"
    assert compute.attention_kernel("auto", 385, rag) == "sdpa"
    assert compute.attention_kernel("auto", 600, 0.0) == "sdpa"  # long rows: sdpa whatever the batch
    assert compute.attention_kernel("eager", 385, rag) == "eager"  # an explicit choice is kept
    # batch 64 of the demo: 1.1 GB of scores -> sdpa; with activation checkpointing one layer's -> eager
    b64 = compute.eager_scores_mb(SFTSpec(precision="bf16"), 64, 95, 9, 30)
    b64_ckpt = compute.eager_scores_mb(SFTSpec(precision="bf16", gradient_checkpointing=True), 64, 95, 9, 30)
    assert (
        compute.attention_kernel("auto", 95, b64) == "sdpa"
        and compute.attention_kernel("auto", 95, b64_ckpt) == "eager"
    )

    # build_causal_model counts the model's own heads and layers and the micro-batch rows
    recipe = recipe_for(tiny_model_dir)
    small = build_causal_model(tiny_model_dir, SFTSpec(batch_size=2, precision="fp32"), 64, "auto", recipe)
    assert small.config._attn_implementation == "eager"
    monkeypatch.setattr(compute, "EAGER_SCORES_BUDGET_MB", 1.0)  # 64 rows x 128 tokens of a tiny model: > 1 MB
    large = build_causal_model(tiny_model_dir, SFTSpec(batch_size=64, precision="fp32"), 128, "auto", recipe)
    assert large.config._attn_implementation == "sdpa"
