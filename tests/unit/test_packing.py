"""sft's packing path keeps examples apart: a packed row trains exactly like its examples one by one.

``sft.packing`` collates a micro-batch with ``fast.pack_batch`` (one row, ``position_ids`` restarting
at every example, no 2-D attention mask) into the model built by ``causal.build_causal_model`` with
the kernel ``compute.attention_kernel`` picks. If attention crossed an example boundary, or a
token were predicted from the previous example, the per-token losses and the gradients would differ.
"""

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import load_recipe
from lmforge.engine.causal import build_causal_model
from lmforge.engine.fast import causal_lm_loss_sum, pack_batch, pad_batch
from lmforge.engine.tokenize import IGNORE, tokenize_chat

CONVERSATIONS = [
    ("What is fact number 3?", "Fact 3 is 21 kestrels."),
    ("How many weeks of maternity leave are granted?", "Twenty weeks are granted."),
    ("What is the retirement age?", "The retirement age in Kestria is 64 years."),
    ("Name the capital of France.", "Paris is the capital of France."),
]


def _features(tokenizer):
    features = []
    for question, answer in CONVERSATIONS:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        example = tokenize_chat(tokenizer, messages, max_length=128)
        features.append({"input_ids": example.input_ids, "labels": example.labels})
    return features


def _sft_model(tiny_recipe, tiny_model_dir, attention, max_length=128):
    overrides = [f"sft.attention={attention}", "sft.packing=true", f"sft.max_length={max_length}"]
    recipe = load_recipe(tiny_recipe, overrides)  # the tiny recipe trains in fp32: exact comparisons
    torch.manual_seed(0)
    model = build_causal_model(tiny_model_dir, recipe.sft, max_length, recipe.sft.attention, recipe)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; give the adapter a say so its gradients are informative
            torch.nn.init.normal_(param, std=0.2)
    return model


def _per_token_losses(model, batch):
    """Loss of every labelled token, in order (through the model's full logits, not the fast path)."""
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch.get("position_ids"), use_cache=False
        ).logits.float()
    targets = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none", ignore_index=IGNORE)
    return losses[targets != IGNORE]


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss, count = causal_lm_loss_sum(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), count, grads


def test_pack_batch_carries_positions_and_no_mask():
    batch = pack_batch([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # The first token of each example is never a target: nothing is predicted across the boundary.
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]]


@pytest.mark.parametrize(("max_length", "kernel"), [(128, "eager"), (1024, "sdpa")])
def test_packed_loss_and_gradients_equal_one_example_at_a_time(
    tiny_recipe, tiny_model_dir, tiny_tokenizer, max_length, kernel
):
    """Both kernels sft picks on a CPU (``attention: auto``): eager for short rows, sdpa for long ones."""
    model = _sft_model(tiny_recipe, tiny_model_dir, "auto", max_length)
    assert model.config._attn_implementation == kernel
    features = _features(tiny_tokenizer)
    packed = pack_batch(features)
    assert "attention_mask" not in packed

    separate = torch.cat([_per_token_losses(model, pad_batch([f], pad_id=0)) for f in features])
    together = _per_token_losses(model, packed)
    torch.testing.assert_close(together, separate, atol=1e-5, rtol=1e-5)

    # The training loss (fast path: chunked CE on the labelled rows) and every LoRA gradient agree too.
    packed_loss, packed_count, packed_grads = _loss_and_grads(model, packed)
    sums = [_loss_and_grads(model, pad_batch([f], pad_id=0)) for f in features]
    assert packed_count == sum(count for _, count, _ in sums)
    assert packed_loss == pytest.approx(sum(loss for loss, _, _ in sums), rel=1e-5)
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, sum(g[name] for _, _, g in sums), atol=1e-5, rtol=1e-4)


def test_the_check_fails_when_attention_crosses_examples(tiny_recipe, tiny_model_dir, tiny_tokenizer):
    """Control: the same row with positions that do not restart is one long sequence, and the losses differ."""
    model = _sft_model(tiny_recipe, tiny_model_dir, "eager")
    features = _features(tiny_tokenizer)
    packed = pack_batch(features)
    separate = torch.cat([_per_token_losses(model, pad_batch([f], pad_id=0)) for f in features])
    crossing = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    assert not torch.allclose(_per_token_losses(model, crossing), separate, atol=1e-3)
