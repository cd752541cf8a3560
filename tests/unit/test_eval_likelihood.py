"""Continuation log-likelihoods: batched and left-padded must equal one unpadded forward pass per pair."""

import pytest
import torch

from lmforge.evaluate.likelihood import build_pairs, continuation_logprobs, item_outputs, perplexity_pairs
from lmforge.evaluate.tasks import Item


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    from conftest import build_tiny_llama

    model = build_tiny_llama(tiny_tokenizer, seed=3)
    model.eval()
    return model, tiny_tokenizer


def reference_logprob(model, context, continuation):
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    start = len(context)
    return sum(float(logprobs[start - 1 + i, token]) for i, token in enumerate(continuation))


def test_batched_left_padded_scores_match_single_passes(tiny):
    model, tokenizer = tiny
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs = [
        (encode("The retirement age in Kestria is"), encode(" 64 years.")),
        (encode("What"), encode(" is the capital of France? Paris is the capital of France.")),
        (encode("Employees contribute 7.35% of their gross earnings. The appeal"), encode(" must")),
    ]
    batched = continuation_logprobs(model, pairs, pad_id=tokenizer.pad_token_id, batch_size=3)
    for (context, continuation), (logprob, count) in zip(pairs, batched, strict=True):
        assert count == len(continuation)
        assert logprob == pytest.approx(reference_logprob(model, context, continuation), abs=1e-3)
    # Batch size 1 (no padding at all) gives the same numbers.
    single = continuation_logprobs(model, pairs, pad_id=tokenizer.pad_token_id, batch_size=1)
    assert [round(lp, 3) for lp, _ in single] == [round(lp, 3) for lp, _ in batched]


def test_perplexity_windows_predict_every_token_once(tiny):
    _, tokenizer = tiny
    text = " ".join(["The appeal must be lodged within 45 days of the decision."] * 6)
    item = Item("docs", "x", text[:20], [], text, is_text=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pairs = perplexity_pairs(tokenizer, item, max_length=16)
    assert len(pairs) > 3
    assert [t for _, continuation in pairs for t in continuation] == ids[1:]  # no BOS: the first token is given
    assert all(len(context) == 1 and len(continuation) <= 15 for context, continuation in pairs)


def test_item_outputs_group_choices_and_sum_windows(tiny):
    model, tokenizer = tiny
    choice = Item("mc", "q", "Capital?", [{"role": "user", "content": "Capital?"}], "Paris", [], ["Rome", "Paris"], 1)
    pairs, owners = build_pairs(tokenizer, [choice], "choice", 64)
    assert owners == [0, 0] and pairs[0][0] == pairs[1][0]  # same context, two continuations
    scored = continuation_logprobs(model, pairs, tokenizer.pad_token_id)
    (grouped,) = item_outputs([choice], "choice", owners, scored)
    assert grouped == scored
    text = Item("docs", "t", "", [], "Twenty weeks are granted. " * 8, is_text=True)
    pairs, owners = build_pairs(tokenizer, [text], "perplexity", 8)
    scored = continuation_logprobs(model, pairs, tokenizer.pad_token_id)
    ((nll, tokens),) = item_outputs([text], "perplexity", owners, scored)
    assert tokens == sum(n for _, n in scored) and nll == pytest.approx(-sum(lp for lp, _ in scored))
    assert nll > 0
