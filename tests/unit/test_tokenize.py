import pytest
import torch

from lmforge.engine.fast import pack_batch
from lmforge.engine.tokenize import IGNORE, tokenize_chat, tokenize_records
from lmforge.errors import DataError

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the retirement age?"},
    {"role": "assistant", "content": "It is 64 years."},
    {"role": "user", "content": "And the rate?"},
    {"role": "assistant", "content": "7.35%."},
]


def labelled_text(tokenizer, example):
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE])


def test_loss_only_on_every_assistant_turn(tiny_tokenizer):
    example = tokenize_chat(tiny_tokenizer, CONVERSATION, max_length=512)
    assert labelled_text(tiny_tokenizer, example) == "It is 64 years.<|im_end|>\n7.35%.<|im_end|>\n"
    assert not example.truncated
    # The token ids are exactly the template's rendering, tokenized once.
    rendered = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tiny_tokenizer.decode(example.input_ids) == rendered


def test_train_on_inputs_labels_everything(tiny_tokenizer):
    example = tokenize_chat(tiny_tokenizer, CONVERSATION, max_length=512, train_on_inputs=True)
    assert example.labels == example.input_ids


def test_truncation_is_reported_and_examples_without_trainable_tokens_fail(tiny_tokenizer):
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "yes"}]
    record = {"id": "abc", "source": {"path": "train.jsonl", "line": 7}, "kind": "chat", "messages": long_prompt}
    with pytest.raises(DataError, match=r"train\.jsonl:7"):
        tokenize_records(tiny_tokenizer, [record], max_length=32, train_on_inputs=False)
    ok = {"id": "def", "source": {"path": "t", "line": 1}, "kind": "chat", "messages": CONVERSATION}
    examples, counts = tokenize_records(tiny_tokenizer, [ok], max_length=512, train_on_inputs=False)
    assert counts["examples"] == 1 and counts["truncated"] == 0
    assert counts["trainable_tokens"] == examples[0].trainable > 0


def test_pack_batch_restarts_positions_and_masks_boundaries():
    batch = pack_batch([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [IGNORE, 9]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]]


def test_packed_loss_equals_per_example_loss(tiny_tokenizer):
    """Attention never crosses example boundaries: packed per-token losses equal unpacked ones."""
    from conftest import build_tiny_llama

    model = build_tiny_llama(tiny_tokenizer).eval()
    conversations = [
        CONVERSATION,
        [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
        [{"role": "user", "content": "Appeal deadline?"}, {"role": "assistant", "content": "45 days."}],
    ]
    examples = [tokenize_chat(tiny_tokenizer, c, max_length=512) for c in conversations]

    def token_losses(input_ids, labels, position_ids=None):
        with torch.no_grad():
            logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0, :-1]
        targets = labels[0, 1:]
        losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none", ignore_index=IGNORE)
        return losses[targets != IGNORE]

    separate = torch.cat(
        [token_losses(torch.tensor([e.input_ids]), torch.tensor([[IGNORE, *e.labels[1:]]])) for e in examples]
    )
    packed = pack_batch([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    together = token_losses(packed["input_ids"], packed["labels"], packed["position_ids"])
    assert together.shape == separate.shape
    torch.testing.assert_close(together, separate, atol=1e-5, rtol=1e-5)
    # Without position_ids the examples would attend to each other and the losses would differ.
    leaky = token_losses(packed["input_ids"], packed["labels"])
    assert not torch.allclose(leaky, separate, atol=1e-4)
