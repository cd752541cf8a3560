"""Turn canonical chat records into token ids and labels, with the loss on assistant tokens only.

The prompt format is the tokenizer's own chat template (the one ``chat``, ``serve`` and ``export``
use), so training and inference cannot drift. Assistant spans are found by rendering the template
on growing prefixes of the conversation: the text the template adds for assistant turn *i* is
``render(messages[:i+1])`` minus ``render(messages[:i], add_generation_prompt=True)``. That works
for any template that renders prefixes consistently, and is checked for each example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmforge.engine.templates import template_kwargs
from lmforge.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
"""Label value for tokens that carry no loss (the cross-entropy ignore index)."""


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def trainable(self) -> int:
        """Number of tokens that carry loss (after the causal shift, the first token never does)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], template_kwargs: dict[str, Any] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` and return the text with the character spans of every assistant turn.

    ``template_kwargs`` are extra variables for the chat template (e.g. ``domain`` for domain_tag).
    """
    extra = template_kwargs or {}
    full = tokenizer.apply_chat_template(messages, tokenize=False, **extra)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = ""
        if i:
            before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False, **extra)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False, **extra)
        if not (through.startswith(before) and full.startswith(through)):
            raise DataError(
                "the tokenizer's chat template does not render conversation prefixes consistently, "
                "so assistant tokens cannot be located",
                hint="use a template that renders each turn independently, or set sft.train_on_inputs: true",
            )
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    max_length: int,
    train_on_inputs: bool = False,
    template_kwargs: dict[str, Any] | None = None,
    last_turn_only: bool = False,
) -> TokenizedExample:
    """Token ids and labels for one conversation; labels are IGNORE outside assistant turns (outside the
    last one with ``last_turn_only``: a preference pair's completion, earlier turns being its prompt)."""
    text, spans = assistant_spans(tokenizer, messages, template_kwargs)
    spans = spans[-1:] if last_turn_only else spans
    # The template already holds the special tokens (BOS, turn markers); don't add them twice.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    if train_on_inputs:
        labels = list(ids)
    else:
        labels = [
            token if any(start <= begin < end for start, end in spans) else IGNORE
            for token, (begin, _) in zip(ids, encoded["offset_mapping"], strict=True)
        ]
    truncated = len(ids) > max_length
    return TokenizedExample(input_ids=ids[:max_length], labels=labels[:max_length], truncated=truncated)


def tokenize_records(
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict[str, Any]],
    max_length: int,
    train_on_inputs: bool,
    template: str = "chat",
) -> tuple[list[TokenizedExample], dict[str, int]]:
    """Tokenize chat records; fail before training if any example is left with no trainable token.

    ``template`` is the sft prompt format; domain_tag renders each record with its own domain.

    Returns:
        The examples and counts: ``examples``, ``tokens``, ``trainable_tokens``, ``truncated``.

    Raises:
        DataError: listing (up to 10) records whose trainable tokens were all truncated away.
    """
    examples, empty = [], []
    for record in records:
        extra = template_kwargs(template, record)
        example = tokenize_chat(tokenizer, record["messages"], max_length, train_on_inputs, extra)
        if example.trainable == 0:
            source = record.get("source", {})
            empty.append(f"{source.get('path')}:{source.get('line')} (id {record['id'][:10]})")
        examples.append(example)
    if empty:
        listed = "\n    ".join(empty[:10]) + (f"\n    ... and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise DataError(
            f"{len(empty)} training example(s) have no trainable token after truncation to "
            f"{max_length} tokens:\n    {listed}",
            hint="raise sft.max_length, shorten the prompts, or drop these records",
        )
    counts = {
        "examples": len(examples),
        "tokens": sum(len(e.input_ids) for e in examples),
        "trainable_tokens": sum(e.trainable for e in examples),
        "truncated": sum(e.truncated for e in examples),
    }
    return examples, counts


# ---------------------------------------------------------------- continued pretraining


@dataclass
class PackedRow:
    """One training row of raw text: exactly ``max_length`` tokens (the last row may be shorter)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def pack_texts(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, isolate_documents: bool = True
) -> tuple[list[PackedRow], dict[str, int]]:
    """Tokenize texts (each followed by EOS) into one stream and cut it into rows of ``max_length``.

    With ``isolate_documents`` the positions restart at every document inside a row, which makes the
    attention kernels keep documents apart (no 2-D mask needed), and a document's first token is not
    predicted from the end of the previous one (its label is IGNORE). A document longer than a row
    continues in the next row.

    Returns:
        The rows and counts: ``documents``, ``tokens``, ``rows``.
    """
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    starts: set[int] = set()
    for text in texts:
        ids = tokenizer(text)["input_ids"]  # with the BOS the tokenizer adds by itself, if any
        starts.add(len(stream))
        stream.extend(ids if eos is None else [*ids, eos])
    rows = []
    for begin in range(0, len(stream), max_length):
        ids = stream[begin : begin + max_length]
        labels, positions, position = list(ids), [], 0
        for offset in range(len(ids)):
            if isolate_documents and offset and begin + offset in starts:
                labels[offset] = IGNORE
                position = 0
            positions.append(position if isolate_documents else offset)
            position += 1
        rows.append(PackedRow(input_ids=ids, labels=labels, position_ids=positions))
    counts = {"documents": len(texts), "tokens": len(stream), "rows": len(rows)}
    return rows, counts
