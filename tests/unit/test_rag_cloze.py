"""Fill-in-the-blank questions cut from chunks (rag/cloze.py) and their RAFT examples."""

import random

from lmforge.config import RaftSpec
from lmforge.rag.chunk import Chunk
from lmforge.rag.cloze import ENUMERATOR, cloze_items, cloze_records, sentence_facts
from lmforge.rag.raft import build_raft_records


def test_sentence_facts_are_dates_counted_numbers_and_names():
    assert sentence_facts("The contribution year begins on 1 April and ends on 31 March.") == ["1 April", "31 March"]
    assert sentence_facts("A pension requires at least 13 years of contributions.") == ["13 years"]
    assert sentence_facts("The rate is 2.5 percent of the wage, or 12% for the self-employed.") == [
        "2.5 percent",
        "12%",
    ]
    assert sentence_facts("Contributions go to the Common Provident Fund.") == ["Common Provident Fund"]
    # A determiner is not part of a name; a number followed by a function word keeps only the number.
    assert sentence_facts("It applies to persons aged 16 or more under The Labour Code.") == ["16", "Labour Code"]
    assert sentence_facts("Persons have rights and duties under this law.") == []  # nothing to blank
    assert ENUMERATOR.sub("", "(2) The Code organises insurance in seven branches.").startswith("The Code")
    assert sentence_facts("The Code organises insurance in seven branches.") == ["seven branches"]


def chunk(text: str, index: int = 0) -> Chunk:
    return Chunk(f"docs/pensions.md#{index}", "docs/pensions.md", "docs/pensions.md", 3, None, "Pensions", text)


TEXT = (
    "(1) A retirement pension requires at least 13 years of contributions. "
    "(2) The contribution year begins on 1 April. (3) Short. "
    "(4) Contributions are paid into the Common Provident Fund of the Republic."
)


def test_cloze_items_blank_one_fact_of_distinct_sentences():
    items = cloze_items(chunk(TEXT), 5, random.Random(0))
    assert len(items) == 3  # "Short." is too short and holds no fact
    sentences = {sentence for _, _, sentence in items}
    assert len(sentences) == 3 and not any(s.startswith("(") for s in sentences)
    for prompt, answer, sentence in items:
        assert prompt.startswith('Complete this sentence from "Pensions": ') and "____" in prompt
        assert answer in sentence and answer not in prompt
        assert prompt.split(": ", 1)[1].replace("____", answer) == sentence
    assert len(cloze_items(chunk(TEXT), 1, random.Random(0))) == 1


def test_cloze_records_become_raft_examples_with_their_chunk_as_gold():
    chunks = [chunk(TEXT), Chunk("docs/other.md#0", "docs/other.md", "docs/other.md", 1, None, "Other", "Boats sail.")]
    records = cloze_records(chunks, 2, seed=3, domain="law")
    assert len(records) == 2 and records == cloze_records(chunks, 2, seed=3, domain="law")  # seeded
    for record in records:
        assert record["meta"]["source"] == "docs/pensions.md" and record["meta"]["cloze"] == "docs/pensions.md#0"
        assert record["domain"] == "law" and record["messages"][-1]["content"] in TEXT  # a sentence of the chunk
    passages = [{"id": c.id, "source": c.source(), "text": c.text, "score": 0.0} for c in chunks]
    spec = RaftSpec(enabled=True, no_gold_share=0.0, min_distractors=1, max_distractors=1)
    out, stats = build_raft_records(records, [passages] * 2, chunks, spec, "article", seed=0)
    assert stats["skipped"] == {} and stats["with_gold"] == 2
    assert all(r["messages"][-1]["content"].startswith("According to [") for r in out)
