"""Cleaning: normalisation, filters, exact and near-duplicate removal, the token-length filter."""

from __future__ import annotations

import json
import random

from lmforge.config import CleanSpec, DataSpec, DedupSpec, FilterSpec
from lmforge.data import clean
from lmforge.data.stage import prepare_records
from lmforge.records import chat_record, text_record

SRC = {"path": "x"}


def qa(question: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return chat_record(messages, SRC)


def test_normalize_text_unicode_and_whitespace():
    spec = CleanSpec()
    assert clean.normalize_text("Cafe\u0301", spec) == "Caf\u00e9"  # NFC composes
    assert (
        clean.normalize_text(" a\u00a0b\u200bc\u00add \r\nline 2  \n\n\n\n\nend\x07 ", spec) == "a bcd\nline 2\n\nend"
    )
    assert clean.normalize_text("def f():\n    return 1", spec) == "def f():\n    return 1"  # indentation kept
    assert clean.normalize_text("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", spec).count("\u200c") == 1
    assert clean.normalize_text("\ufb01ne", CleanSpec(unicode="NFKC")) == "fine"
    assert clean.normalize_text("  keep  \r\n", CleanSpec(unicode="none", whitespace=False)) == "  keep  \r\n"


def test_cleaning_is_idempotent_when_a_removed_character_stood_before_an_accent():
    # found by tests/unit/test_data_fuzz.py: removing \x08 or a soft hyphen left "A" + U+0300 not composed
    for text, unicode in [
        ("A\x08\u0300", "NFC"),
        ("e\u00ad\u0301", "NFC"),
        ("\u00a8x", "NFKC"),
        ("e\u200b\u0301", "NFKC"),
    ]:
        spec = CleanSpec(unicode=unicode)
        once = clean.normalize_text(text, spec)
        assert clean.normalize_text(once, spec) == once, (text, once)
    assert clean.normalize_text("e\u00ad\u0301", CleanSpec()) == "\u00e9"


def test_clean_record_recomputes_the_content_id():
    record = qa("  What?  ", "That.\r\n")
    cleaned = clean.clean_record(record, CleanSpec())
    assert cleaned["messages"][0]["content"] == "What?"
    assert cleaned["id"] == qa("What?", "That.")["id"] != record["id"]


def test_filter_reasons():
    spec = FilterSpec(min_chars=3, max_chars=200)
    assert clean.filter_reason(qa("Q?", ""), spec) == "empty answer"
    assert clean.filter_reason(qa("", "Answer."), spec) == "empty question"
    assert clean.filter_reason(qa("Q?", "No"), spec) == "too short"
    assert clean.filter_reason(qa("Q?", "word " * 100), spec) == "too long (characters)"
    assert clean.filter_reason(qa("Total?", "12 345 678 / 9 876 543 = 1.25 ± 0.01 %"), spec) == "mostly non-text"
    assert clean.filter_reason(text_record("", SRC), spec) == "empty text"
    assert clean.filter_reason(text_record("\ufffd\ufffd\ufffd\ufffd #### 1234", SRC), spec) == "mostly non-text"
    assert clean.filter_reason(qa("How much is it?", "It is 42 kestrels."), spec) is None
    assert clean.filter_reason(qa("Total?", "1 2 3 4 5 6"), FilterSpec(min_letter_ratio=0)) is None


def test_near_duplicates_are_found_and_distinct_texts_kept():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(2000)]
    base = [" ".join(rng.choice(words) for _ in range(120)) for _ in range(30)]
    near = [b.replace(b.split()[60], "CHANGED", 1) for b in base[:10]]  # one word of 120 changed
    records = [text_record(t, SRC) for t in base + near]
    finder = clean.NearDuplicates(DedupSpec(near_threshold=0.8))
    flags = finder.find(records)
    assert flags == [False] * 30 + [True] * 10


def test_near_duplicate_check_ignores_a_shared_system_prompt():
    system = "You are an expert on the Social Security Code of Kestria. Answer in one sentence, citing the article."
    a = qa("What is the retirement age?", "It is 64.", system)
    b = qa("Who pays contributions?", "The employer does.", system)
    assert clean.NearDuplicates(DedupSpec(near_threshold=0.5)).find([a, b]) == [False, False]


def test_prepare_counts_exact_and_near_duplicates_per_source(tmp_path):
    text = " ".join(f"Article {i} of the Kestrian code sets rule number {i * 7} for insured people." for i in range(12))
    near = text.replace("rule number 7 ", "rule no. 7 ", 1)
    rows = [{"text": text}, {"text": text}, {"text": near}, {"text": "Other."}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = DataSpec.model_validate({"sources": [{"path": str(path)}], "dedup": {"near_threshold": 0.8}})
    prepared = prepare_records(spec, seed=0)
    (stats,) = prepared.stats.values()
    assert stats.as_dict()["duplicates"] == {"exact": 1, "near": 1}
    assert stats.kept == 2 and stats.read == 4
    off = DataSpec.model_validate({"sources": [{"path": str(path)}], "dedup": {"exact": False}})
    assert len(prepare_records(off, seed=0).splits["train"]) == 4


def test_token_length_filter_uses_the_chat_template(tmp_path, tiny_tokenizer):
    rows = [
        {"question": "What is the retirement age?", "answer": "The retirement age is 64 years. " * n} for n in (1, 40)
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = DataSpec.model_validate({"sources": [{"path": str(path)}]})
    lengths = clean.token_lengths(tiny_tokenizer, [qa(r["question"], r["answer"]) for r in rows])
    templated = tiny_tokenizer.apply_chat_template(
        qa(rows[0]["question"], rows[0]["answer"])["messages"], tokenize=True
    )
    assert lengths[0] == len(templated if isinstance(templated, list) else templated["input_ids"])
    limit = (lengths[0] + lengths[1]) // 2
    prepared = prepare_records(
        spec, seed=0, count_tokens=lambda recs: clean.token_lengths(tiny_tokenizer, recs), max_tokens=limit
    )
    (stats,) = prepared.stats.values()
    assert stats.filtered == {"too long for the context": 1}
    assert len(prepared.splits["train"]) == 1


def test_a_pairs_rejected_answer_is_cleaned_and_an_empty_one_filtered():
    source = {"path": "pairs.jsonl", "line": 1}
    messages = [{"role": "user", "content": "Who pays?"}, {"role": "assistant", "content": "The Fund."}]
    pair = chat_record(messages, source, meta={"rejected": " Nobody\u00a0pays.\u200b "})
    cleaned = clean.clean_record(pair, CleanSpec())  # NFKC, invisible characters and outer spaces, as for answers
    assert cleaned["meta"]["rejected"] == "Nobody pays." and cleaned["id"] != pair["id"]
    empty = chat_record(messages, source, meta={"rejected": "  \u200b "})
    assert clean.filter_reason(clean.clean_record(empty, CleanSpec()), FilterSpec()) == "empty rejected answer"
