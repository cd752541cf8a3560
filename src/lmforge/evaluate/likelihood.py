"""Log-likelihoods of continuations, for multiple choice and perplexity.

A continuation is scored given its context: ``sum log p(token | everything before it)`` over the
continuation's tokens. Rows are batched with *left* padding so every continuation ends at the
last column; the model then computes logits for the last ``c + 1`` columns only
(``logits_to_keep``), never for the whole ``batch x length x vocabulary`` block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lmforge.evaluate.tasks import Item

Pair = tuple[list[int], list[int]]
"""(context token ids, continuation token ids); the context holds at least one token."""


def continuation_logprobs(
    model: PreTrainedModel,
    pairs: list[Pair],
    pad_id: int,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[tuple[float, int]]:
    """``(sum of log-probabilities, token count)`` of each continuation given its context.

    Pairs are sorted by length so batches pad little; results come back in input order.
    """
    import torch

    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        rows = [pairs[i][0] + pairs[i][1] for i in batch]
        width = max(len(row) for row in rows)
        keep = max(len(pairs[i][1]) for i in batch) + 1
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            input_ids[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
        # Explicit positions: with left padding each row's first real token is position 0.
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(
                input_ids=input_ids.to(model.device),
                attention_mask=mask.to(model.device),
                position_ids=positions.to(model.device),
                logits_to_keep=keep,
                use_cache=False,
            ).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1).cpu()  # (rows, keep, vocab)
        for r, index in enumerate(batch):
            continuation = pairs[index][1]
            count = len(continuation)
            # Column j of the kept logits predicts the token in column j + 1 of the kept window.
            predicted = logprobs[r, keep - 1 - count : keep - 1]
            targets = torch.tensor(continuation).unsqueeze(1)
            results[index] = (float(predicted.gather(1, targets).sum()), count)
        if on_batch is not None:
            on_batch(len(batch))
    return results


def context_ids(tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat prompt up to the start of the assistant's reply."""
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def choice_pairs(tokenizer: PreTrainedTokenizerBase, item: Item) -> list[Pair]:
    """One (context, continuation) pair per choice of a multiple-choice item."""
    context = context_ids(tokenizer, item.prompt)
    return [(context, _encode(tokenizer, choice)) for choice in item.choices]


def perplexity_pairs(tokenizer: PreTrainedTokenizerBase, item: Item, max_length: int) -> list[Pair]:
    """Pairs whose continuations together cover the item's text (or its answer turn).

    A text longer than ``max_length`` tokens is cut into consecutive windows; each window is
    conditioned on the token before it only, so every token is predicted exactly once.
    """
    if not item.is_text:
        return [(context_ids(tokenizer, item.prompt), _encode(tokenizer, item.gold))]
    ids = _encode(tokenizer, item.gold)
    start_ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else ids[:1]
    if tokenizer.bos_token_id is None:
        ids = ids[1:]  # the first token has nothing to be predicted from
    pairs = []
    step = max_length - 1
    for start in range(0, len(ids), step):
        context = start_ids if start == 0 else ids[start - 1 : start]
        pairs.append((context, ids[start : start + step]))
    return pairs


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_pairs(
    tokenizer: PreTrainedTokenizerBase, items: list[Item], mode: str, max_length: int
) -> tuple[list[Pair], list[int]]:
    """The pairs to score for a ``choice`` or ``perplexity`` set, and the index of the item each belongs to."""
    owners: list[int] = []
    pairs: list[Pair] = []
    for index, item in enumerate(items):
        if mode == "choice":
            item_pairs = choice_pairs(tokenizer, item)
        else:
            item_pairs = perplexity_pairs(tokenizer, item, max_length)
        pairs += item_pairs
        owners += [index] * len(item_pairs)
    return pairs, owners


def item_outputs(items: list[Item], mode: str, owners: list[int], scored: list[tuple[float, int]]) -> list[Any]:
    """Per item: its choices' (log-probability, tokens), or its (negative log-likelihood in nats, tokens)."""
    grouped: list[list[tuple[float, int]]] = [[] for _ in items]
    for owner, result in zip(owners, scored, strict=True):
        grouped[owner].append(result)
    if mode == "choice":
        return grouped
    # Perplexity: an item's windows add up to one figure.
    return [(-sum(lp for lp, _ in parts), sum(n for _, n in parts)) for parts in grouped]
