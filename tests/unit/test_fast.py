"""The fast training path must compute exactly what the plain path computes."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.engine.fast import (
    chunked_cross_entropy,
    disable_lean_lora,
    enable_lean_lora,
    pad_batch,
)
from lmforge.engine.tokenize import IGNORE


@pytest.mark.parametrize("weight_grad", [False, True])
def test_chunked_cross_entropy_matches_the_full_logits_loss(weight_grad):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=weight_grad)
    targets = torch.randint(0, 50, (37,))
    expected = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    expected.backward()
    want_h = hidden.grad.clone()
    want_w = weight.grad.clone() if weight_grad else None
    hidden.grad = None
    if weight_grad:
        weight.grad = None
    got = chunked_cross_entropy(hidden, weight, targets, chunk=8)
    (got * 0.5).backward()  # a scaled upstream gradient must scale every gradient
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(hidden.grad, 0.5 * want_h, rtol=1e-5, atol=1e-5)
    if weight_grad:
        torch.testing.assert_close(weight.grad, 0.5 * want_w, rtol=1e-5, atol=1e-5)


def test_pad_batch_right_pads_without_a_mask():
    batch = pad_batch([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]
    assert "attention_mask" not in batch


def _token_losses(model, batch):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"), use_cache=False).logits[
            :, :-1
        ]
    targets = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=IGNORE)
    return losses[targets != IGNORE]


def test_lean_lora_forward_matches_peft(tiny_tokenizer):
    from conftest import build_tiny_llama
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_tiny_llama(tiny_tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; give it values so the adapter matters
            torch.nn.init.normal_(param, std=0.1)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 11))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        assert enable_lean_lora(model) == 2 * 7
        got = model(input_ids=ids).logits
        disable_lean_lora(model)
        again = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, expected)


def test_lean_lora_leaves_gpt2_conv1d_layers_to_peft(tiny_tokenizer):
    """GPT-2's projections are Conv1D (weight stored in x out): the lean forward would multiply the wrong shapes."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=64)
    model = get_peft_model(GPT2LMHeadModel(config), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"]))
    model.eval()  # GPT-2 has dropout
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        assert enable_lean_lora(model) == 0
        torch.testing.assert_close(model(input_ids=ids).logits, expected)
