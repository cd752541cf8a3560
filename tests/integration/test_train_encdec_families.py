"""Encoder-decoders beyond T5 (BART, LED with global attention and 4,096+ token inputs) in the seq2seq stage, and
encoders beyond BERT (RoBERTa, ModernBERT) in the mlm stage: tiny random models built in-process."""

from __future__ import annotations

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file
from test_train_models import build_tiny_bert, build_tiny_t5, letters, save_model
from test_train_stages import DOCUMENTS, TRAIN, logged, write_recipe

from lmforge.config import load_recipe
from lmforge.pipeline import run_recipe
from lmforge.train.seq2seq import attends_globally, collate

pytestmark = pytest.mark.integration


def _encoder_decoder(family: str, tokenizer) -> torch.nn.Module:
    """A 2+2-layer, d_model-32 BART or LED on the T5-style tokenizer (pad 0, </s> 1)."""
    from transformers import BartConfig, BartForConditionalGeneration, LEDConfig, LEDForConditionalGeneration

    ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 1, "decoder_start_token_id": 1}
    shape = {
        "vocab_size": len(tokenizer),
        "d_model": 32,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
    }
    torch.manual_seed(0)
    if family == "bart":
        return BartForConditionalGeneration(BartConfig(**shape, **ids, max_position_embeddings=256))
    positions = {"max_encoder_position_embeddings": 8192, "max_decoder_position_embeddings": 128}
    config = LEDConfig(**shape, **ids, **positions, attention_window=[32, 32])
    return LEDForConditionalGeneration(config)


@pytest.mark.parametrize("family", ["bart", "led"])
def test_seq2seq_learns_json_fields_with_bart_and_led(tmp_path, family):
    _, tokenizer = build_tiny_t5()
    model_dir = save_model(_encoder_decoder(family, tokenizer), tokenizer, tmp_path / family)
    write_jsonl(tmp_path / "train.jsonl", letters(24))
    write_jsonl(tmp_path / "test.jsonl", letters(4, offset=24))
    recipe = write_recipe(
        tmp_path,
        f"""
name: extract-{family}
run_dir: {tmp_path / "runs"}
stages: [data, seq2seq]
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: train.jsonl, split: train}}
    - {{path: test.jsonl, split: test}}
seq2seq: {{epochs: 6, lr: 3.0e-3, batch_size: 8, max_input_length: 96, max_output_length: 48, {TRAIN}}}
""",
    )
    result = run_recipe(load_recipe(recipe))["seq2seq"]
    losses = logged(tmp_path / "runs" / f"extract-{family}", "seq2seq")
    assert losses[-1] < losses[0] - 0.5, losses
    assert result.metrics["extraction"]["test"]["tuned"]["n"] == 4


def test_led_attends_globally_to_the_first_token_and_reads_4096_tokens():
    """The LED batch carries global attention on each row's first token (training and generation), and a
    document longer than 4,096 tokens trains in one pass: the local window keeps attention linear in length."""
    _, tokenizer = build_tiny_t5()
    led = _encoder_decoder("led", tokenizer)
    bart = _encoder_decoder("bart", tokenizer)
    assert attends_globally(led) and not attends_globally(bart)
    batch = collate([{"input_ids": [5] * 7, "labels": [6, 1]}, {"input_ids": [5] * 3, "labels": [1]}], 0, True)
    assert batch["global_attention_mask"].tolist() == [[1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]]
    assert "global_attention_mask" not in collate([{"input_ids": [5], "labels": [1]}], 0)

    from lmforge.train.seq2seq import seq2seq_loss_sum

    long = collate([{"input_ids": [7] * 4200 + [1], "labels": [8, 9, 1]}], 0, global_first=True)
    loss, tokens = seq2seq_loss_sum(led, long)
    loss.backward()
    assert tokens == 3 and torch.isfinite(loss)
    first = led.led.encoder.layers[0].self_attn.longformer_self_attn
    assert first.query_global.weight.grad is not None and first.query_global.weight.grad.abs().sum() > 0
    led.zero_grad()
    local_only = {k: v for k, v in long.items() if k != "global_attention_mask"}
    seq2seq_loss_sum(led, local_only)[0].backward()
    assert first.query_global.weight.grad is None or first.query_global.weight.grad.abs().sum() == 0


def _encoder(family: str, tokenizer) -> torch.nn.Module:
    from transformers import ModernBertConfig, ModernBertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    torch.manual_seed(0)
    if family == "roberta":
        config = RobertaConfig(
            **ids, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=160,
        )  # fmt: skip
        return RobertaForMaskedLM(config)
    config = ModernBertConfig(
        **ids, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        global_attn_every_n_layers=2, local_attention=16,
    )  # fmt: skip
    return ModernBertForMaskedLM(config)


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_mlm_pretrains_roberta_and_modernbert(tmp_path, family):
    _, tokenizer = build_tiny_bert()
    model_dir = save_model(_encoder(family, tokenizer), tokenizer, tmp_path / family)
    write_jsonl(tmp_path / "docs.jsonl", [{"text": text} for text in DOCUMENTS])
    recipe = write_recipe(
        tmp_path,
        f"""
name: mlm-{family}
run_dir: {tmp_path / "runs"}
stages: [data, mlm]
model: {{ref: {model_dir}}}
data:
  sources: [{{path: docs.jsonl}}]
  dedup: {{exact: false}}
mlm: {{max_length: 32, batch_size: 4, epochs: 8, lr: 2.0e-3, mlm_probability: 0.3, {TRAIN}}}
""",
    )
    result = run_recipe(load_recipe(recipe))["mlm"]
    losses = logged(tmp_path / "runs" / f"mlm-{family}", "mlm")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    before, after = load_file(model_dir / "model.safetensors"), load_file(result.model_dir / "model.safetensors")
    moved = [name for name in before if name in after and not torch.equal(before[name], after[name])]
    assert len(moved) > len(before) // 2, f"{family}: only {len(moved)} of {len(before)} tensors trained"
