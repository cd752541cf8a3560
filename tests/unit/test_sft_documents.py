"""sft.documents: the documents' text mixed into sft (forms, full names, headings, order)."""

from __future__ import annotations

import pytest
from conftest import build_tiny_tokenizer

from lmforge.config import DocumentsMixSpec, load_recipe
from lmforge.engine.tokenize import IGNORE
from lmforge.errors import ConfigError
from lmforge.records import text_record
from lmforge.train.documents import QuestionsFirstSampler, document_texts, tokenize_texts

ACT = text_record(
    "# Section 1 — Name\n\n(1) This Act is the Harbour Dues Act of Norland. It sets the dues of ships.\n\n"
    "(2) The Act applies to every port with more than 12 berths.",
    {"path": "act/s1.md", "line": 1},
    "ports",
)
FUND = text_record(
    '# Section 2 — The fund\n\n(1) The Harbour Renewal Fund, hereinafter "the Fund", receives 15% of all dues.\n\n'
    "(2) The Fund is audited every 3 years. It publishes its accounts.\n\n(3) The Act sets a cap of 40 ships a day.\n\n"
    "(4) Pilots are licensed for 5 years.",
    {"path": "act/s2.md", "line": 1, "heading": "Section 2 — The fund"},
    "ports",
)


def texts_of(spec: DocumentsMixSpec) -> list[dict]:
    return document_texts([ACT, FUND], spec, seed=0)


def paragraphs(text: str) -> list[str]:
    return text.split("\n\n")


def test_every_form_keeps_every_paragraph_under_its_heading_with_the_title():
    out = texts_of(DocumentsMixSpec(copies=3))
    assert len(out) == 6 and all(r["kind"] == "text" and r["domain"] == "ports" for r in out)
    fund = [r for r in out if r["source"]["path"] == "act/s2.md"]
    head = "The Harbour Dues Act of Norland — Section 2 — The fund"
    assert all(paragraphs(r["text"])[0] == head for r in fund)
    bodies = [paragraphs(r["text"])[1:] for r in fund]
    assert all(sorted(body) == sorted(bodies[0]) and len(body) == 4 for body in bodies)
    assert len({tuple(body) for body in bodies}) == 3  # three different orders
    assert bodies[0][0].startswith("(1)")  # the first form as written


def test_short_names_are_spelled_out_sentence_by_sentence():
    fund = next(r for r in texts_of(DocumentsMixSpec(copies=1)) if r["source"]["path"] == "act/s2.md")
    body = paragraphs(fund["text"])
    assert body[2] == "(2) The Harbour Renewal Fund is audited every 3 years. It publishes its accounts."
    assert body[3] == "(3) The Harbour Dues Act of Norland sets a cap of 40 ships a day."
    plain = next(
        r
        for r in texts_of(DocumentsMixSpec(copies=1, full_names=False, headings=False))
        if r["source"]["path"] == "act/s2.md"
    )
    assert paragraphs(plain["text"])[1] == "(2) The Fund is audited every 3 years. It publishes its accounts."


def test_chunks_stay_under_the_word_limit_and_keep_paragraphs_whole():
    out = texts_of(DocumentsMixSpec(copies=1, chunk_words=20, headings=False))
    fund = [r for r in out if r["source"]["path"] == "act/s2.md"]
    assert len(fund) > 1
    assert all(len(r["text"].split()) <= 20 for r in fund)
    joined = [p for r in fund for p in paragraphs(r["text"])]
    assert len(joined) == 4 and [r["meta"]["chunk"] for r in fund] == list(range(len(fund)))


def test_text_examples_carry_the_loss_on_every_token():
    tokenizer = build_tiny_tokenizer()
    [example] = tokenize_texts(tokenizer, [ACT], max_length=4096)
    assert example.labels == example.input_ids and IGNORE not in example.labels
    assert example.input_ids[-1] == tokenizer.eos_token_id and not example.truncated
    [cut] = tokenize_texts(tokenizer, [ACT], max_length=10)
    assert len(cut.input_ids) == 10 and cut.truncated


def test_questions_first_orders_every_epoch_questions_then_documents():
    lengths = [5, 9, 3, 7, 11, 4, 8, 20, 30, 25]
    sampler = QuestionsFirstSampler(lengths, questions=6, batch_size=2, seed=1)
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(10)) and len(sampler) == 10
        assert set(order[:6]) == set(range(6)) and set(order[6:]) == {6, 7, 8, 9}
        orders.append(order)
    assert orders[0] != orders[1]  # reshuffled per epoch
    sampler.set_epoch(0)
    assert list(sampler) == orders[0]  # a function of the epoch (resumable)


def test_validate_refuses_a_documents_split_nobody_writes(tmp_path):
    with pytest.raises(ConfigError, match=r"sft\.documents\.enabled mixes in the split .manuals."):
        load_recipe("recipes/demo.yaml", ["sft.documents.enabled=true", "sft.documents.split=manuals"])
    assert load_recipe("recipes/demo.yaml", ["sft.documents.enabled=true"]).sft.documents.copies == 2
