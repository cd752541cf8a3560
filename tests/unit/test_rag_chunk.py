"""Chunking: structure boundaries, token budget, overlap and source metadata."""

import re

import pytest

from lmforge.rag.chunk import chunk_document, chunk_records, count_words, document_key, merge_headings
from lmforge.records import text_record

DOCUMENT = """# Part I — Contributions

Intro line of part one.

## Article 1 — Rates

(1) Employees pay 8.15% of gross earnings.

(2) Employers pay 11.4% of the payroll.

## Article 2 — Ceiling

Earnings above 6,850 kestrels are exempt.

# Part II — Pensions

### Article 3 — Age

The retirement age is 64 years.
"""


def sentences(count: int, words: int = 6, start: int = 0) -> list[str]:
    """Numbered sentences of ``words`` words each: s<i> w1 ... ."""
    middle = [f"w{j}" for j in range(1, words - 1)]
    return [" ".join([f"s{i}", *middle, "end."]) for i in range(start, start + count)]


def test_headings_split_sections_and_keep_their_path_and_line():
    record = text_record(DOCUMENT.strip(), {"path": "code/law.md", "line": 1})
    chunks = chunk_document(record, max_tokens=200, overlap=0)
    assert [c.heading for c in chunks] == [
        "Part I — Contributions",
        "Part I — Contributions > Article 1 — Rates",
        "Part I — Contributions > Article 2 — Ceiling",
        "Part II — Pensions > Article 3 — Age",
    ]
    lines = DOCUMENT.strip().splitlines()
    for chunk in chunks:
        # Each chunk starts on the source line that holds its first words.
        assert lines[chunk.line - 1].startswith(chunk.text.split()[0]), (chunk.line, chunk.text)
    assert chunks[1].text == "(1) Employees pay 8.15% of gross earnings.\n\n(2) Employers pay 11.4% of the payroll."
    assert [c.id for c in chunks] == [f"code/law.md#{i}" for i in range(4)]
    assert {c.path for c in chunks} == {"code/law.md"} and all(c.page is None for c in chunks)
    assert chunks[3].search_text() == "Part II — Pensions > Article 3 — Age\nThe retirement age is 64 years."
    assert chunks[3].source() == {"path": "code/law.md", "line": 19, "heading": "Part II — Pensions > Article 3 — Age"}


def test_section_records_offset_lines_and_carry_page_and_heading():
    record = text_record("First paragraph here.\n\nSecond one.", {"path": "a.pdf", "line": 40, "page": 3})
    record["meta"] = {"heading": "Chapter 9"}
    chunks = chunk_document(record, max_tokens=3, overlap=0)
    assert [(c.line, c.text) for c in chunks] == [(40, "First paragraph here."), (42, "Second one.")]
    assert all(c.page == 3 and c.heading == "Chapter 9" for c in chunks)
    assert chunks[0].id == "a.pdf:p3:40#0" and chunks[0].source()["page"] == 3  # one of the page's sections
    assert document_key(text_record("x", {"path": "a.pdf", "page": 3})) == "a.pdf:p3"
    assert document_key(text_record("x", {"path": "b.md", "line": 12})) == "b.md:12"
    assert document_key(text_record("x", {"path": "b.md", "line": 1})) == "b.md"


def test_budget_is_respected_and_overlap_repeats_trailing_sentences():
    body = " ".join(sentences(12))  # one paragraph of 12 six-word sentences
    chunks = chunk_document(text_record(body, {"path": "p.txt"}), max_tokens=20, overlap=6)
    assert len(chunks) > 3
    seen: list[str] = []
    for previous, chunk in zip([None, *chunks], chunks, strict=False):
        assert count_words(chunk.text) <= 20
        ids = re.findall(r"s\d+", chunk.text)
        if previous is not None:
            # The chunk starts with the last sentence of the previous one (6 words = the overlap budget).
            assert ids[0] == re.findall(r"s\d+", previous.text)[-1]
        seen += [i for i in ids if i not in seen]
    assert seen == [f"s{i}" for i in range(12)]  # every sentence, in order, none lost


def test_paragraphs_stay_whole_when_they_fit():
    paragraphs = [" ".join(sentences(2, start=2 * i)) for i in range(3)]  # 12 words each
    chunks = chunk_document(text_record("\n\n".join(paragraphs), {"path": "p.md"}), max_tokens=30, overlap=0)
    # 12 + 12 fit in 30; the third paragraph would overflow, so it starts a new chunk rather than being cut.
    assert [c.text for c in chunks] == [paragraphs[0] + "\n\n" + paragraphs[1], paragraphs[2]]


def test_a_sentence_longer_than_the_budget_is_cut_between_words():
    long_sentence = " ".join(f"word{i}" for i in range(25)) + "."
    chunks = chunk_document(text_record(long_sentence, {"path": "long.txt"}), max_tokens=10, overlap=0)
    assert [count_words(c.text) for c in chunks] == [10, 10, 5]
    assert " ".join(c.text for c in chunks) == long_sentence


def test_token_counter_is_pluggable_and_non_text_records_are_ignored():
    chat = {"id": "q", "source": {"path": "qa.jsonl"}, "kind": "chat", "messages": []}
    doc = text_record("aaaa bbbb. cccc dddd.", {"path": "d.txt"})
    chunks = chunk_records([chat, doc], max_tokens=10, overlap=0, count_tokens=len)  # characters as tokens
    assert [c.text for c in chunks] == ["aaaa bbbb.", "cccc dddd."]


def test_overlap_must_be_below_the_budget():
    with pytest.raises(ValueError, match="overlap"):
        chunk_document(text_record("x", {"path": "x.txt"}), max_tokens=10, overlap=10)


def test_a_section_record_that_repeats_its_heading_keeps_it_once():
    text = "# Article 1 — Title\n\n(1) Body of the article."
    record = text_record(text, {"path": "articles/art-01.md", "line": 1, "heading": "Article 1 — Title"})
    [chunk] = chunk_document(record, max_tokens=50, overlap=0)
    assert chunk.heading == "Article 1 — Title" and chunk.text == "(1) Body of the article." and chunk.line == 3
    assert merge_headings(["Part I", "Article 3"], ["Article 3", "Para 2"]) == ["Part I", "Article 3", "Para 2"]
    assert merge_headings(["Part I"], ["Article 3"]) == ["Part I", "Article 3"]
