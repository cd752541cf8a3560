"""Questions written by rules about every fact of the documents (lmforge.data.questions, data.questions)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from lmforge.config import load_recipe
from lmforge.config.recipe import validate_recipe
from lmforge.data.questions import (
    document_questions,
    drop_eval_overlap,
    normalise_question,
    sentence_facts,
    short_names,
)
from lmforge.data.stage import prepare_records
from lmforge.errors import ConfigError
from lmforge.records import chat_record, text_record

MANUAL = """# Backups

The backup daemon keeps 14 daily snapshots and deletes older ones.

A full backup runs every Sunday at 02:00 and takes about 3 hours on a 2 TB disk.

Snapshots are stored in the Cold Storage Pool, hereinafter "the Pool", which is replicated to a second site.

The Pool is checked for errors on 1 March of each year.

"retention window" means the period during which a snapshot cannot be deleted.

Restores are refused when the disk is more than 95% full.
"""


def manual_records() -> list[dict]:
    return [text_record(MANUAL, {"path": "ops/backups.md", "line": 1, "heading": "Backups"}, "ops")]


def test_facts_of_a_sentence_are_dates_quantities_names_and_definitions():
    kinds = {f.answer: f.kind for f in sentence_facts("The Pool is checked by the Storage Review Board on 1 March.")}
    assert kinds == {"Storage Review Board": "name", "1 March": "date"}
    kinds = {
        f.answer: f.kind for f in sentence_facts("Restores are refused above 95% for 3 hours and 14 daily snapshots.")
    }
    assert kinds == {"95%": "percent", "3 hours": "duration", "14 daily snapshots": "count"}
    definition = sentence_facts('"retention window" means the period during which a snapshot cannot be deleted.')
    assert definition[0].kind == "definition" and definition[0].unit == "retention window"
    assert definition[0].answer == "the period during which a snapshot cannot be deleted"


def test_every_fact_gets_several_wordings_answered_by_its_sentence():
    records = document_questions(manual_records(), wordings=5, seed=0)
    by_fact = defaultdict(list)
    for record in records:
        by_fact[record["meta"]["answer"]].append(record)
    assert {"3 hours", "Cold Storage Pool", "1 March", "95%"} <= set(by_fact)
    for answer, group in by_fact.items():
        questions = [r["messages"][0]["content"] for r in group]
        assert len(set(questions)) == len(questions) >= 2, (answer, questions)
        for record in group:
            question, reply = record["messages"][0]["content"], record["messages"][1]["content"]
            assert question.endswith("?") and answer.lower() not in question.lower()
            assert answer.lower() in reply.lower() or record["meta"]["kind"] == "definition"
            assert reply in " ".join(MANUAL.split())  # the reply quotes the document, nothing invented
            assert record["meta"]["source"] == "ops/backups.md" and record["meta"]["generated"] == "rules"
    march = [r["messages"][0]["content"] for r in by_fact["1 March"]]
    assert any(q.startswith(("On what date", "On which date")) for q in march), march  # fronted, not only in place
    assert all("Cold Storage Pool" in q for q in march), march  # the short name "the Pool" spelled out


def test_short_names_are_read_from_the_document():
    names = short_names(MANUAL + "\nThis Manual is the Operations Manual of the Example Company.")
    assert names["the Pool"] == "the Cold Storage Pool"
    assert names["this Manual"] == "the Operations Manual of the Example Company"


def test_generation_is_deterministic():
    assert document_questions(manual_records(), seed=3) == document_questions(manual_records(), seed=3)


def test_questions_like_an_evaluation_question_are_dropped():
    generated = document_questions(manual_records(), wordings=5)
    target = next(r for r in generated if r["meta"]["answer"] == "3 hours")["messages"][0]["content"]
    near = target.replace("?", " exactly?")
    held_out = [chat_record([{"role": "user", "content": near}, {"role": "assistant", "content": "x"}], {"path": "t"})]
    kept, dropped = drop_eval_overlap(generated, held_out)
    assert dropped >= 1 and len(kept) == len(generated) - dropped
    assert all(normalise_question(r["messages"][0]["content"]) != normalise_question(target) for r in kept)


def test_the_demo_writes_questions_that_no_evaluation_set_asks(tmp_path: Path):
    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / "demo.yaml")
    prepared = prepare_records(recipe.data, recipe.seed)
    generated = prepared.splits["doc_qa"]
    counts = prepared.generated["questions"]
    assert counts["written"] == len(generated) > 300
    assert counts["questions"] == counts["written"] + counts["dropped_as_evaluation_questions"]
    asked = {
        normalise_question(m["content"])
        for split in ("test", "docs_only", "known")
        for r in prepared.splits[split]
        for m in r["messages"]
        if m["role"] == "user"
    }
    assert not asked & {normalise_question(r["messages"][-2]["content"]) for r in generated}
    # every generated question carries the domain's system prompt, as the evaluation questions do
    assert all(r["messages"][0]["role"] == "system" for r in generated)
    replies = " ".join(r["messages"][-1]["content"] for r in generated).lower()
    covered = sum(r["meta"]["answer"].lower() in replies for r in prepared.splits["docs_only"])
    assert covered >= 0.9 * len(prepared.splits["docs_only"])  # nearly every document-only fact is asked about


def test_held_out_questions_keep_whole_sections_apart(tmp_path: Path):
    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / "demo.yaml", ["data.questions.held_out=0.25"])
    prepared = prepare_records(recipe.data, recipe.seed)
    train = {r["meta"]["section"] for r in prepared.splits["doc_qa"]}
    held = {r["meta"]["section"] for r in prepared.splits["doc_qa_test"]}
    assert held and train and not train & held
    assert prepared.generated["questions"]["held_out"]["questions"] == len(prepared.splits["doc_qa_test"])


def test_sft_trains_on_what_the_recipe_writes_unless_told_otherwise():
    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / "demo.yaml")
    assert recipe.sft.splits == ["train", "doc_qa"]
    off = load_recipe(Path(__file__).parents[2] / "recipes" / "demo.yaml", ["data.questions.enabled=false"])
    assert off.sft.splits == ["train"]
    path = Path(__file__).parents[2] / "recipes" / "demo-rag.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["sft"].pop("splits", None)
    rag = validate_recipe(raw, str(path), path.parent)
    assert rag.sft.splits == ["train", "doc_qa", "raft"]


def test_raft_without_training_on_it_is_refused():
    with pytest.raises(ConfigError, match=r"index\.raft\.enabled writes the split 'raft'"):
        load_recipe(Path(__file__).parents[2] / "recipes" / "demo-rag.yaml", ["sft.splits=[train]"])


CODE = """# Article 3 — Benefits

This Code is the Harbour Code of the Republic of Veloria.

The harbour levy is collected on 2 May.

The permit is suspended for four weeks where the holder fails an inspection.

Harbour logs are kept for 12 years after the last entry.
"""


def test_wordings_use_the_everyday_question_word_and_the_place_the_code_governs():
    records = [text_record(CODE, {"path": "code/art3.md", "line": 1, "heading": "Article 3 — Benefits"}, "law")]
    questions = {r["meta"]["answer"]: [] for r in document_questions(records, wordings=20)}
    for record in document_questions(records, wordings=20):
        questions[record["meta"]["answer"]].append(record["messages"][0]["content"])
    assert "When is the harbour levy collected?" in questions["2 May"]
    assert "How long is the permit suspended where the holder fails an inspection?" in questions["four weeks"]
    assert "How long are Harbour logs kept after the last entry?" in questions["12 years"]  # "logs are": a noun
    every = [q for qs in questions.values() for q in qs]
    assert any(q.endswith("in Veloria?") or q.startswith("In Veloria,") for q in every), every
    assert not [q for q in every if q.count("Veloria") > 1]
    assert any(q.startswith("Under the Harbour Code,") for q in every)  # the title without "of the Republic ..."


def test_no_question_is_fronted_across_a_clause_or_away_from_its_phrase():
    text = (
        "A child who has lost both parents receives 37% of the pension.\n\n"
        "No benefit is paid for the first 3 days of unemployment.\n\n"
        "Payment continues until the child's 25th birthday."
    )
    records = [text_record(text, {"path": "code/art9.md", "line": 1, "heading": "Article 9 — Orphans"}, "law")]
    questions = [r["messages"][0]["content"] for r in document_questions(records, wordings=20)]
    assert questions and not [q for q in questions if q.startswith(("What percentage has", "What share has"))]
    assert not [q for q in questions if q.rstrip("?").endswith(("the first", "child's"))], questions
    assert "A child who has lost both parents receives what percentage of the pension?" in questions


def test_a_number_before_a_name_is_no_count_and_only_bodies_are_asked_as_which_body():
    assert [
        f.kind for f in sentence_facts("Write to the Foundation at 51 Franklin Street, Boston, within 30 days.")
    ] == [
        "name",
        "duration",
    ]
    records = document_questions(
        [
            text_record(
                "Mailboxes are owned by group mail, as the Debian Policy Manual explains. Appeals go to the "
                "Review Board of the Office within 21 days.",
                {"path": "p.md", "line": 1},
                "ops",
            )
        ],
        wordings=5,
        seed=0,
    )
    asked = defaultdict(list)
    for record in records:
        asked[record["meta"]["answer"]].append(record["messages"][0]["content"])
    assert not any("which body" in q for q in asked["Debian Policy Manual"]), asked["Debian Policy Manual"]
    assert any("which body" in q for q in asked["Review Board"]), asked["Review Board"]


def test_manual_text_gives_no_fact_a_question_cannot_ask_well():
    from lmforge.data.facts import split_sentences

    assert sentence_facts('Builders use the "Gain Root API" accordingly and CUPS (Common Un*x Printing System).') == []
    assert sentence_facts("This means that dpkg reincorporates pending trigger information at start.") == []
    assert sentence_facts("Before dpkg 1.19.1 and in LSB 1.3 lists daemon as legacy for 3 years.")[0].answer == (
        "3 years"
    )
    text = (
        "Command line Configure --unpack ----------+---------+ no usually none.\n\n"
        '- When the builder runs it exposes an interface within 3 days.\n\nprintf "Updating.\\n" update -q fi'
    )
    assert split_sentences(text) == ["When the builder runs it exposes an interface within 3 days."]
