"""Prompt formats for base models (alpaca, domain_tag) and raw-text packing for continued pretraining."""

import pytest
import torch

from lmforge.engine.templates import ALPACA_PREAMBLE, ALPACA_PREAMBLE_WITH_INPUT, install_template
from lmforge.engine.tokenize import IGNORE, pack_texts, tokenize_chat, tokenize_records
from lmforge.errors import StageError
from lmforge.train.cpt import collate_rows

TWO_TURNS = [
    {"role": "user", "content": "Translate to French.\n\nthe cat"},
    {"role": "assistant", "content": "le chat"},
    {"role": "user", "content": "And the dog?"},
    {"role": "assistant", "content": "le chien"},
]


@pytest.fixture
def tokenizer():
    from conftest import build_tiny_tokenizer

    return build_tiny_tokenizer()


def trained_text(tokenizer, example):
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE])


def test_alpaca_splits_instruction_and_input_and_trains_every_response(tokenizer):
    install_template(tokenizer, "alpaca", [], "tiny")
    rendered = tokenizer.apply_chat_template(TWO_TURNS, tokenize=False)
    assert rendered.startswith(ALPACA_PREAMBLE_WITH_INPUT + "\n\n### Instruction:\nTranslate to French.\n\n")
    assert "### Input:\nthe cat\n\n### Response:\nle chat<|im_end|>" in rendered
    assert "### Instruction:\nAnd the dog?\n\n### Response:\nle chien<|im_end|>" in rendered
    prompt = tokenizer.apply_chat_template(TWO_TURNS[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("### Input:\nthe cat\n\n### Response:\n")
    example = tokenize_chat(tokenizer, TWO_TURNS, max_length=512)
    assert trained_text(tokenizer, example) == "le chat<|im_end|>\n\nle chien<|im_end|>\n\n"


def test_alpaca_without_input_and_with_a_system_prompt(tokenizer):
    install_template(tokenizer, "alpaca", [], "tiny")
    plain = [{"role": "user", "content": "Name the fund."}, {"role": "assistant", "content": "The Reserve."}]
    rendered = tokenizer.apply_chat_template(plain, tokenize=False)
    assert rendered.startswith(ALPACA_PREAMBLE + "\n\n### Instruction:\nName the fund.\n\n### Response:\n")
    assert "### Input:" not in rendered
    system = [{"role": "system", "content": "You answer about Kestria."}, *plain]
    assert tokenizer.apply_chat_template(system, tokenize=False).startswith("You answer about Kestria.\n\n### Instr")


def test_domain_tag_puts_the_record_domain_on_one_line(tokenizer):
    records = [{"domain": "pensions"}, {"domain": "pensions"}, {"domain": "tax"}, {"domain": None}]
    assert install_template(tokenizer, "domain_tag", records, "tiny") == "pensions"
    messages = [{"role": "user", "content": "Retirement\nage?"}, {"role": "assistant", "content": "64 years."}]
    # At inference (no domain given) the most common training domain is used.
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "[DOMAIN: pensions] Retirement age?\n64 years.<|im_end|>\n"
    )
    record = {"id": "x", "kind": "chat", "domain": "tax", "messages": messages, "source": {"path": "a", "line": 1}}
    (example,), _ = tokenize_records(tokenizer, [record], 512, False, template="domain_tag")
    assert tokenizer.decode(example.input_ids).startswith("[DOMAIN: tax] Retirement age?\n")
    assert trained_text(tokenizer, example) == "64 years.<|im_end|>\n"


def test_chat_template_is_required_for_the_chat_format(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(StageError, match=r"alpaca or sft\.template: domain_tag"):
        install_template(tokenizer, "chat", [], "some/base-model")


def test_pack_texts_fills_rows_and_keeps_documents_apart(tokenizer):
    texts = ["The retirement age in Kestria is 64 years.", "Employees contribute 7.35% of their gross earnings."]
    lengths = [len(tokenizer(t)["input_ids"]) + 1 for t in texts]  # + EOS
    width = lengths[0] + 3  # the second document starts inside the first row, 3 tokens before its end
    rows, counts = pack_texts(tokenizer, texts, max_length=width, isolate_documents=True)
    assert counts == {"documents": 2, "tokens": sum(lengths), "rows": -(-sum(lengths) // width)}
    assert all(len(row.input_ids) == width for row in rows[:-1])
    stream = [t for row in rows for t in row.input_ids]
    assert stream.count(tokenizer.eos_token_id) == 2
    # At the boundary the position restarts and the first token is not predicted from the other document.
    assert rows[0].position_ids[lengths[0] - 1 : lengths[0] + 2] == [lengths[0] - 1, 0, 1]
    assert rows[0].labels[lengths[0]] == IGNORE and IGNORE not in rows[0].labels[: lengths[0]]
    assert rows[1].position_ids[0] == 0  # the document goes on in the next row
    joined, _ = pack_texts(tokenizer, texts, max_length=8, isolate_documents=False)
    assert all(row.position_ids == list(range(len(row.input_ids))) for row in joined)
    assert all(IGNORE not in row.labels for row in joined)


def test_cpt_rows_collate_with_padding_that_carries_no_loss():
    rows = [
        {"input_ids": [5, 6, 7, 8], "labels": [5, 6, IGNORE, 8], "position_ids": [0, 1, 0, 1]},
        {"input_ids": [9, 10], "labels": [9, 10], "position_ids": [2, 3]},
    ]
    batch = collate_rows(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, IGNORE, 8], [IGNORE, 10, IGNORE, IGNORE]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [2, 3, 4, 5]]
    assert batch["input_ids"].dtype == torch.long


def test_data_inspect_shows_the_labels_in_the_recipe_template(tiny_recipe):
    from typer.testing import CliRunner

    from lmforge.cli import app

    args = ["data", "inspect", str(tiny_recipe), "--show-labels", "1", "--set", "sft.template=alpaca"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "### Instruction:" in result.output and "### Response:" in result.output


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_packed_document_sees_nothing_of_the_one_before(tokenizer, attention):
    """In a packed row (positions restarting, no mask) the second document's logits are exactly those
    it has alone: attention never crosses the boundary, in either kernel."""
    from conftest import build_tiny_llama

    from lmforge.engine.fast import causal_lm_loss_sum

    model = build_tiny_llama(tokenizer).eval()
    model.config._attn_implementation = attention
    first, second = "The retirement age in Kestria is 64 years.", "Employees contribute 7.35% of their earnings."
    (row,), _ = pack_texts(tokenizer, [first, second], max_length=256, isolate_documents=True)
    (alone,), _ = pack_texts(tokenizer, [second], max_length=256, isolate_documents=True)
    start = len(row.input_ids) - len(alone.input_ids)
    with torch.no_grad():
        # use_cache=False as in training (fast.backbone_inputs): transformers looks for packed rows only then
        ids, positions = torch.tensor([row.input_ids]), torch.tensor([row.position_ids])
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        single = model(input_ids=torch.tensor([alone.input_ids]), use_cache=False).logits
        assert torch.allclose(packed[0, start:], single[0], atol=1e-5)
        # Every token is trained but the first of each document: len - 2 positions for two documents.
        batch = collate_rows([{"input_ids": row.input_ids, "labels": row.labels, "position_ids": row.position_ids}], 0)
        _, count = causal_lm_loss_sum(model, batch)
    assert count == len(row.input_ids) - 2
