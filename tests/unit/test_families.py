"""Chat templates of the families people fine-tune, with their real tokenizers: what the loss sees, where
generation stops, a system prompt on a template without a system role, Qwen3's thinking block."""

from __future__ import annotations

from pathlib import Path

import pytest
from families import FAMILIES, family_tokenizer

from lmforge.engine.templates import install_template
from lmforge.engine.tokenize import IGNORE, tokenize_chat
from lmforge.export import llamacpp
from lmforge.models import end_of_turn_id, load_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Answer like a clerk."},
    {"role": "user", "content": "Which form starts a claim?"},
    {"role": "assistant", "content": "Form K-7, filed with the Fund."},
]
WITH_TEMPLATE = [name for name, family in FAMILIES.items() if family.end_of_turn]
WITHOUT_TEMPLATE = [name for name, family in FAMILIES.items() if not family.end_of_turn]


@pytest.fixture(scope="module", autouse=True)
def _vocabularies():
    if not llamacpp.vocab_file("qwen2").is_file():
        pytest.fail(
            f"llama.cpp's vocabularies are not in {llamacpp.converter_dir()}: python -m lmforge.export.llamacpp"
        )


def saved_tokenizer(name: str, tmp_path: Path):
    """The family's tokenizer as lmforge loads it (its template adapted where needed)."""
    family_tokenizer(name).save_pretrained(tmp_path / name)
    return load_tokenizer(tmp_path / name)


@pytest.mark.parametrize("name", WITH_TEMPLATE)
def test_the_loss_sees_the_reply_and_the_end_of_turn_only(name, tmp_path):
    tokenizer = saved_tokenizer(name, tmp_path)
    end = tokenizer.convert_tokens_to_ids(FAMILIES[name].end_of_turn)
    assert end_of_turn_id(tokenizer) == end, "generation must stop where the template ends a reply"
    example = tokenize_chat(tokenizer, CONVERSATION, max_length=256)
    trained = [t for t in example.labels if t != IGNORE]
    shown = tokenizer.decode(trained)
    assert shown.strip().startswith("Form K-7, filed with the Fund."), shown
    assert end in trained[-3:], "the end-of-turn token is learned, at the end (a newline after it at most)"
    for prompt_text in ("clerk", "Which form", "assistant", "model"):
        assert prompt_text not in shown, f"prompt text {prompt_text!r} carries loss: {shown!r}"
    # The system prompt reaches the model, also where the template has no system role (folded into the user turn).
    assert "Answer like a clerk." in tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False)


@pytest.mark.parametrize("name", ["mistral", "gemma2"])
def test_a_template_without_a_system_role_gets_it_in_the_first_user_turn(name, tmp_path):
    raw = family_tokenizer(name)
    with pytest.raises(Exception, match="System role not supported"):
        raw.apply_chat_template(CONVERSATION[:2], tokenize=False)
    rendered = saved_tokenizer(name, tmp_path).apply_chat_template(CONVERSATION[:2], tokenize=False)
    assert "Answer like a clerk.\n\nWhich form starts a claim?" in rendered


def test_a_template_that_takes_a_system_prompt_itself_is_left_as_it_is(tmp_path):
    """Gemma 3's format puts the system prompt ahead of the first user turn by itself: lmforge adapts nothing."""
    raw = family_tokenizer("gemma3").apply_chat_template(CONVERSATION[:2], tokenize=False)
    assert "<start_of_turn>user\nAnswer like a clerk.\n\nWhich form starts a claim?<end_of_turn>" in raw
    tokenizer = saved_tokenizer("gemma3", tmp_path)
    assert tokenizer.chat_template == family_tokenizer("gemma3").chat_template
    assert tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False) == raw


def test_qwen3_thinks_only_when_asked(tmp_path):
    tokenizer = saved_tokenizer("qwen3", tmp_path)
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), prompt
    asked = tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, tokenize=False, enable_thinking=True
    )
    assert asked.endswith("<|im_start|>assistant\n")
    # Trained replies carry the same empty block in the prompt part, not in what the loss sees.
    trained = [t for t in tokenize_chat(tokenizer, CONVERSATION, 256).labels if t != IGNORE]
    assert "think" not in tokenizer.decode(trained)


@pytest.mark.parametrize("name", WITHOUT_TEMPLATE)
def test_a_base_vocabulary_trains_in_lmforges_alpaca_format(name, tmp_path):
    tokenizer = saved_tokenizer(name, tmp_path)
    assert not tokenizer.chat_template
    install_template(tokenizer, "alpaca", [], name)
    trained = [t for t in tokenize_chat(tokenizer, CONVERSATION, 256).labels if t != IGNORE]
    assert tokenizer.decode(trained).strip().startswith("Form K-7") and tokenizer.eos_token_id in trained[-3:]
