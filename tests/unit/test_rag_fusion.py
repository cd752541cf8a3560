"""Rank fusion, retrieval metrics, the context prompt, citations and RAFT examples (no model needed)."""

import pytest

from lmforge.config import RaftSpec, Recipe
from lmforge.rag.chunk import Chunk
from lmforge.rag.quality import first_hit, from_document, retrieval_scores
from lmforge.rag.raft import ABSTAIN, build_raft_records, cited_answer, closed_book_copies, quote_around
from lmforge.rag.retrieve import rrf_fuse
from lmforge.records import (
    CITATION,
    CONTEXT_INSTRUCTION,
    chat_record,
    cited_passages,
    context_messages,
    reasked,
    validate_record,
)


def test_rrf_fusion_order_and_scores_on_a_constructed_example():
    dense = ["a", "b", "c", "d"]
    bm25 = ["d", "c", "e"]
    fused = rrf_fuse([dense, bm25], k_rrf=60)
    # Hand-computed: d = 1/64 + 1/61, c = 1/63 + 1/62, a = 1/61, b = 1/62, e = 1/63.
    assert [doc for doc, _ in fused] == ["d", "c", "a", "b", "e"]
    expected = {"d": 1 / 64 + 1 / 61, "c": 1 / 63 + 1 / 62, "a": 1 / 61, "b": 1 / 62, "e": 1 / 63}
    for doc, score in fused:
        assert score == pytest.approx(expected[doc])
    # Being in both lists beats being first in one; a small k makes the first places count more.
    rankings = [["x", "a", "y"], ["z", "b", "c", "y"]]
    assert rrf_fuse(rankings, k_rrf=60)[0][0] == "y"  # 1/63 + 1/64 > 1/61
    assert [doc for doc, _ in rrf_fuse(rankings, k_rrf=1)][:3] == ["x", "z", "y"]  # 1/2 > 1/4 + 1/5


def test_a_weighted_ranking_counts_more_in_the_fusion():
    dense, bm25 = ["a", "b", "c"], ["c", "d", "a"]
    assert [doc for doc, _ in rrf_fuse([dense, bm25])][:2] == ["a", "c"]  # a tie (1/61 + 1/63 each): a seen first
    weighted = rrf_fuse([dense, bm25], weights=[1.0, 2.0])
    assert [doc for doc, _ in weighted][:2] == ["c", "a"]  # c: 1/63 + 2/61 beats a: 1/61 + 2/63
    assert dict(weighted)["d"] == pytest.approx(2 / 62)
    with pytest.raises(ValueError):
        rrf_fuse([dense, bm25], weights=[1.0])


def test_rrf_ties_keep_first_seen_order():
    fused = rrf_fuse([["a", "b"], ["b", "a"]])
    assert [doc for doc, _ in fused] == ["a", "b"] and fused[0][1] == fused[1][1]


def passage(pid: str, path: str, text: str = "t", heading: str = "") -> dict:
    return {"id": pid, "source": {"path": path, "line": 1, "heading": heading}, "text": text, "score": 0.0}


def test_gold_document_matching_and_recall_mrr_by_hand():
    assert from_document("articles/art-12-pension.md", "art-12-pension")
    assert from_document("articles/art-12-pension.md", "articles/art-12-pension")
    assert from_document("articles/art-12-pension.md", "art-12-pension.md")
    assert not from_document("articles/art-12-pension.md", "art-1")
    ranked = [
        [passage("1", "x.md"), passage("2", "gold1.md")],  # hit at rank 2
        [passage("3", "gold2.md")],  # hit at rank 1
        [passage("4", "x.md"), passage("5", "y.md")],  # miss
    ]
    assert first_hit(ranked[0], "gold1") == 2 and first_hit(ranked[2], "gold3") is None
    scores = retrieval_scores(ranked, ["gold1", "gold2", "gold3"], ks=[1, 2])
    assert scores == {"n": 3, "recall@1": round(1 / 3, 4), "recall@2": round(2 / 3, 4), "mrr": round(1.5 / 3, 4)}


def test_context_messages_puts_numbered_passages_into_the_last_user_turn():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "What is the retirement age? "},
    ]
    passages = [
        passage("law.md#0", "law.md", "The age is 64 years.", "Article 3 — Age"),
        passage("faq.md#2", "faq.md", "Ask the Office."),
    ]
    out = context_messages(messages, passages)
    assert out[:3] == messages[:3] and out is not messages
    assert out[3]["content"] == (
        "Passages:\n\n[1] Article 3 — Age\nThe age is 64 years.\n\n[2] faq.md\nAsk the Office.\n\n"
        f"Question: What is the retirement age?\n{CONTEXT_INSTRUCTION}"
    )
    assert messages[3]["content"] == "What is the retirement age? "  # the input is not modified
    assert context_messages(messages, []) == messages
    with pytest.raises(ValueError, match="user turn"):
        context_messages([{"role": "system", "content": "x"}], passages)


def test_reasked_swaps_the_question_and_keeps_the_passages():
    turn = context_messages([{"role": "user", "content": "How old?"}], [passage("a", "a.md", "Age 64.")])[0]
    again = reasked(turn["content"], " What is the age? ")
    assert (
        again
        == context_messages([{"role": "user", "content": "What is the age?"}], [passage("a", "a.md", "Age 64.")])[0][
            "content"
        ]
    )
    assert reasked("How old?", "What is the age?") is None  # no passages: not a context_messages turn
    assert reasked(turn["content"].replace(CONTEXT_INSTRUCTION, "Answer."), "What is the age?") is None


def test_cited_passages_follow_the_numbers_in_the_reply():
    passages = [passage("a", "a.md"), passage("b", "b.md"), passage("c", "c.md")]
    assert [p["id"] for p in cited_passages("As [3] says, and [1], again [3]; not [7].", passages)] == ["c", "a"]
    assert cited_passages("no citation", passages) == []


def test_quote_is_centred_on_the_answer_and_marks_cuts():
    text = (
        "(1) A retirement pension is payable only to an insured person who has completed at least 13 years "
        "of contributions, including credited periods. (2) Another sentence."
    )
    quote = quote_around(text, "13 years", max_words=8)
    assert "13 years" in quote and quote.startswith("...") and quote.endswith("...")
    assert len(quote.strip(".").split()) == 8
    assert quote_around("Short: 13 years.", "13 years", 16) == "Short: 13 years."
    assert quote_around(text, "99 days", 8) is None
    assert cited_answer(2, "the age is 64.", "It is 64.") == 'According to [2], "the age is 64". It is 64.'


def raft_fixture():
    chunks = [
        Chunk("art-1.md#0", "art-1.md", "art-1.md", 3, None, "Article 1", "The retirement age is 64 years."),
        Chunk("art-2.md#0", "art-2.md", "art-2.md", 3, None, "Article 2", "Employees pay 8.15% of earnings."),
        Chunk("art-3.md#0", "art-3.md", "art-3.md", 3, None, "Article 3", "Appeals within 45 days."),
        Chunk("art-4.md#0", "art-4.md", "art-4.md", 3, None, "Article 4", "Funeral grant of 900 kestrels."),
    ]
    passages = [{"id": c.id, "source": c.source(), "text": c.text, "score": 1.0 - i / 10} for i, c in enumerate(chunks)]
    messages = [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "At what age can one retire?"},
        {"role": "assistant", "content": "One can retire at 64 years."},
    ]
    record = chat_record(messages, {"path": "qa.jsonl", "line": 1}, "law", {"answer": "64 years", "article": "art-1"})
    return chunks, passages, record


def test_raft_examples_hold_gold_and_distractors_and_quote_the_gold_passage():
    chunks, passages, record = raft_fixture()
    spec = RaftSpec(enabled=True, no_gold_share=0.0, examples_per_question=20, min_distractors=1, max_distractors=3)
    # Retrieval put the gold passage second; distractors must come from the other documents.
    retrieved = [[passages[1], passages[0], passages[2], passages[3]]]
    out, stats = build_raft_records([record], retrieved, chunks, spec, gold_key="article", seed=0)
    expected = {"questions": 1, "examples": 20, "with_gold": 20, "without_gold": 0, "closed_book": 0, "skipped": {}}
    assert stats == expected
    counts = set()
    for example in out:
        validate_record(example)
        shown = example["meta"]["raft"]["passages"]
        assert "art-1.md#0" in shown and 2 <= len(shown) <= 4
        counts.add(len(shown) - 1)
        number = shown.index("art-1.md#0") + 1
        prompt, reply = example["messages"][1]["content"], example["messages"][2]["content"]
        assert example["messages"][0] == record["messages"][0]  # the system prompt is kept
        assert prompt.startswith("Passages:") and "At what age can one retire?" in prompt
        assert reply == f'According to [{number}], "The retirement age is 64 years". One can retire at 64 years.'
        assert example["meta"]["article"] == "art-1" and example["meta"]["raft"]["gold"] is True
    assert counts == {1, 2, 3}  # the number of distractors varies within the configured range
    again, _ = build_raft_records([record], retrieved, chunks, spec, gold_key="article", seed=0)
    assert again == out  # seeded


def test_raft_gold_absent_share_and_answers():
    chunks, passages, record = raft_fixture()
    retrieved = [passages]
    spec = RaftSpec(enabled=True, no_gold_share=0.2, examples_per_question=200)
    out, stats = build_raft_records([record], retrieved, chunks, spec, gold_key="article", seed=1)
    assert 0.12 < stats["without_gold"] / stats["examples"] < 0.28
    for example in out:
        if not example["meta"]["raft"]["gold"]:
            assert "art-1.md#0" not in example["meta"]["raft"]["passages"]
            assert example["messages"][-1]["content"] == "One can retire at 64 years."
    abstain = RaftSpec(enabled=True, no_gold_share=1.0, no_gold_answer="abstain")
    out, _ = build_raft_records([record], retrieved, chunks, abstain, gold_key="article", seed=1)
    assert out[0]["messages"][-1]["content"] == ABSTAIN


def test_raft_skips_records_without_gold_or_answer_and_says_why():
    chunks, passages, record = raft_fixture()
    no_key = chat_record(record["messages"], record["source"], None, {"answer": "64 years"})
    wrong = chat_record(record["messages"], record["source"], None, {"answer": "70 years", "article": "art-1"})
    out, stats = build_raft_records([no_key, wrong], [passages, passages], chunks, RaftSpec(), "article", 0)
    assert out == []
    no_document = "no meta.article (nor source, document, doc) naming its document"
    assert stats["skipped"] == {no_document: 1, "answer not found in its document's chunks": 1}


def test_closed_book_copies_answer_plainly_and_never_cite():
    chunks, passages, record = raft_fixture()
    spec = RaftSpec(enabled=True, no_gold_share=0.3, examples_per_question=10)
    out, stats = build_raft_records([record], [passages], chunks, spec, "article", seed=2, closed_book=True)
    assert stats["closed_book"] == 1 and stats["examples"] == 11
    assert stats["with_gold"] + stats["without_gold"] == 10
    closed = [r for r in out if r["meta"]["raft"].get("closed_book")]
    assert len(closed) == 1 and closed[0]["messages"] == record["messages"]  # the question as written
    for example in out:
        reply = example["messages"][-1]["content"]
        shown = example["meta"]["raft"]["passages"]
        # A reply cites [n] only when its prompt holds the gold passage; without passages, never.
        assert bool(CITATION.search(reply)) == ("art-1.md#0" in shown)
        if not shown:
            assert "Passages:" not in example["messages"][-2]["content"]


def test_closed_book_default_follows_what_sft_trains_on():
    def recipe(splits, closed_book=None):
        raft = {"enabled": True, "source_split": "qa", "closed_book": closed_book}
        data = {"sources": [{"path": "qa.jsonl", "split": "qa"}]}
        stages = ["data", "index", "sft"]
        return Recipe.model_validate(
            {
                "name": "r",
                "stages": stages,
                "model": {"ref": "m"},
                "data": data,
                "index": {"raft": raft},
                "sft": {"splits": splits},
            }
        )

    assert closed_book_copies(recipe(["train", "raft"])) is True  # qa seen only through RAFT: add it plain
    assert closed_book_copies(recipe(["qa", "raft"])) is False  # sft trains on qa itself already
    assert closed_book_copies(recipe(["train", "raft"], closed_book=False)) is False
