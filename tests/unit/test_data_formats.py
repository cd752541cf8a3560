"""Formats: each known row shape becomes the expected canonical record; bad rows are rejected with a reason."""

from __future__ import annotations

import json

import pytest

from lmforge.config import ColumnMap
from lmforge.data import formats
from lmforge.records import record_problem

SRC = {"path": "x.jsonl", "line": 1}


def convert(row, fmt=None, columns=None, domain=None):
    fmt = fmt or formats.row_format(row)
    record = formats.to_record(row, fmt, columns, SRC, domain)
    assert record_problem(record) is None
    return record


def chat(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


@pytest.mark.parametrize(
    ("row", "fmt", "messages"),
    [
        (
            {"instruction": "Translate", "input": "chat", "output": "cat", "system": "Be brief."},
            "alpaca",
            chat(("system", "Be brief."), ("user", "Translate\n\nchat"), ("assistant", "cat")),
        ),
        (
            {"instruction": "Say hi", "input": "", "output": "hi"},
            "alpaca",
            chat(("user", "Say hi"), ("assistant", "hi")),
        ),
        ({"Question": "Age?", "Answer": 64}, "qa", chat(("user", "Age?"), ("assistant", "64"))),
        ({"prompt": "P", "response": "R"}, "prompt_response", chat(("user", "P"), ("assistant", "R"))),
        ({"prompt": "P", "completion": "C"}, "prompt_completion", chat(("user", "P"), ("assistant", "C"))),
        (
            {"prompt": [{"role": "user", "content": "P"}], "completion": [{"role": "assistant", "content": "C"}]},
            "prompt_completion",
            chat(("user", "P"), ("assistant", "C")),
        ),
        (
            {
                "conversations": [
                    {"from": "system", "value": "S"},
                    {"from": "human", "value": "H"},
                    {"from": "gpt", "value": "G"},
                ]
            },
            "sharegpt",
            chat(("system", "S"), ("user", "H"), ("assistant", "G")),
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
                    {"role": "assistant", "content": "Hi", "name": "bot"},
                ]
            },
            "messages",
            chat(("user", "Hello"), ("assistant", "Hi")),
        ),
    ],
)
def test_chat_formats_become_canonical_chat_records(row, fmt, messages):
    assert formats.row_format(row) == fmt
    record = convert(row)
    assert record["kind"] == "chat"
    assert record["messages"] == messages
    assert record["source"] == SRC


def test_text_and_canonical_rows():
    text = convert({"text": "Plain words.", "meta": {"k": 1}, "domain": "law"})
    assert (text["kind"], text["text"], text["meta"], text["domain"]) == ("text", "Plain words.", {"k": 1}, "law")
    canonical = {"id": "abc", "kind": "text", "source": {"path": "orig.md"}, "text": "T"}
    record = convert(canonical, domain="pensions")
    assert record["source"] == {"path": "orig.md"} and record["domain"] == "pensions"


def test_columns_mapping_with_meta_and_domain():
    columns = ColumnMap(user="q", input="ctx", assistant="a", system="sys", domain="area", meta=["gold"])
    row = {"q": "Rate?", "ctx": "For 2024.", "a": "7.35%", "sys": "Answer briefly.", "area": "tax", "gold": "7.35%"}
    record = convert(row, fmt="columns", columns=columns)
    assert record["messages"] == chat(
        ("system", "Answer briefly."), ("user", "Rate?\n\nFor 2024."), ("assistant", "7.35%")
    )
    assert record["domain"] == "tax" and record["meta"] == {"gold": "7.35%"}
    assert convert({"body": "Some text."}, fmt="columns", columns=ColumnMap(text="body"))["kind"] == "text"


@pytest.mark.parametrize(
    ("row", "fmt", "reason"),
    [
        ({"instruction": "x"}, "alpaca", "missing field"),
        ({"question": "x", "answer": ["a", "b"]}, "qa", "wrong type"),
        ({"question": "x", "answer": True}, "qa", "wrong type"),
        ({"question": "x", "answer": None}, "qa", "missing field"),
        ({"messages": "not a list"}, "messages", "invalid conversation"),
        ({"messages": []}, "messages", "invalid conversation"),
        ({"messages": chat(("user", "only a question"))}, "messages", "invalid conversation"),
        ({"messages": [{"role": "tool", "content": "{}"}]}, "messages", "invalid conversation"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages", "invalid conversation"),
        ({"conversations": [{"from": "human", "value": 3}]}, "sharegpt", "invalid conversation"),
        ({"prompt": [{"role": "user", "content": "P"}], "completion": "C"}, "prompt_completion", "wrong type"),
        ({"id": "1", "kind": "chat", "source": {"path": "p"}, "messages": []}, "canonical", "invalid record"),
        ([1, 2, 3], "qa", "not an object"),
    ],
)
def test_bad_rows_are_rejected_with_a_category(row, fmt, reason):
    with pytest.raises(formats.Rejected) as caught:
        formats.to_record(row, fmt, None, SRC, None)
    assert caught.value.reason == reason
    assert caught.value.detail or reason == "not an object"


def test_detection_takes_the_most_common_format_of_the_first_rows():
    rows = [{"question": "q", "answer": "a"}] * 3 + [{"text": "t"}] + ["not a dict", 5]
    assert formats.detect_format(rows) == "qa"
    assert formats.detect_format([{"foo": 1}, "x"]) is None
    message = str(formats.unrecognised({"foo": 1, "bar": 2}))
    assert "['bar', 'foo']" in message and "alpaca (instruction/output)" in message and "columns" in message


def test_a_file_rejects_rows_that_do_not_fit_its_detected_format(tmp_path):
    from lmforge.config import DataSpec
    from lmforge.data.stage import prepare_records

    rows = [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(3)] + [{"text": "a stray text row"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    prepared = prepare_records(DataSpec.model_validate({"sources": [{"path": str(path)}]}), seed=0)
    assert len(prepared.splits["train"]) == 3
    assert prepared.rejects == [
        {"source": {"path": "mixed.jsonl", "line": 4}, "reason": "missing field", "detail": "no 'question'"}
    ]
    # an explicit format overrides detection
    forced = DataSpec.model_validate({"sources": [{"path": str(path), "format": "text"}]})
    assert len(prepare_records(forced, seed=0).splits["train"]) == 1


def test_readme_format_examples_are_detected_as_documented():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Data formats", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `(\{.*\})` \|$", section, flags=re.M)
    assert {name for name, _ in rows} == set(formats.FORMAT_KEYS) | {"canonical"}
    for name, example in rows:
        row = json.loads(example)
        assert formats.row_format(row) == name
        if name != "canonical":  # the README elides the canonical id
            assert record_problem(formats.to_record(row, name, None, SRC, None)) is None


def test_preference_rows_keep_the_chosen_conversation_and_the_rejected_answer():
    plain = convert({"prompt": "Who pays?", "chosen": "The Fund.", "rejected": "Nobody."})
    assert plain["messages"][-2:] == chat(("user", "Who pays?"), ("assistant", "The Fund."))
    assert plain["meta"]["rejected"] == "Nobody."
    listed = convert(
        {
            "prompt": [{"role": "user", "content": "Who pays?"}],
            "chosen": [{"role": "assistant", "content": "The Fund."}],
            "rejected": [{"role": "assistant", "content": "Nobody."}],
        }
    )
    assert listed["messages"] == plain["messages"] and listed["meta"]["rejected"] == "Nobody."
    user = {"role": "user", "content": "Who pays?"}
    implicit = {"chosen": [user, {"role": "assistant", "content": "The Fund."}]}
    implicit["rejected"] = [user, {"role": "assistant", "content": "Nobody."}]
    assert formats.row_format(implicit) == "preference_implicit"
    assert convert(implicit)["id"] == plain["id"]  # the same pair, whatever its layout
    assert convert(dict(plain))["id"] == plain["id"]  # read back as a canonical record
    other = convert({"prompt": "Who pays?", "chosen": "The Fund.", "rejected": "The state."})
    assert other["id"] != plain["id"]  # pairs that share a chosen answer are not duplicates
    implicit["rejected"] = [{"role": "user", "content": "Who else?"}, {"role": "assistant", "content": "No."}]
    with pytest.raises(formats.Rejected, match="different turns"):
        convert(implicit)


def test_kto_rows_need_a_true_or_false_label():
    row = {"prompt": "Who pays?", "completion": "Nobody.", "label": False}
    assert formats.row_format(row) == "kto" and convert(row)["meta"]["label"] is False
    classed = {"prompt": "Review: great!", "completion": " positive", "label": "positive"}
    assert formats.row_format(classed) == "prompt_completion"  # some other label: a plain pair
    with pytest.raises(formats.Rejected, match="true or false"):
        formats.to_record(classed, "kto", None, SRC, None)


def test_near_duplicate_text_tells_pairs_apart_by_their_rejected_answer():
    from lmforge.data.clean import content_text

    first = convert({"prompt": "Who pays?", "chosen": "The Fund.", "rejected": "Nobody."})
    second = convert({"prompt": "Who pays?", "chosen": "The Fund.", "rejected": "The state."})
    assert content_text(first) != content_text(second) and content_text(first).endswith("Nobody.")


def test_the_data_stage_keeps_pairs_that_share_a_chosen_answer(tmp_path):
    """Adding a system prompt rebuilds each record; the pair id must survive it (exact dedup runs after)."""
    from lmforge.config import DataSpec
    from lmforge.data.stage import prepare_records

    rows = [{"prompt": "Who pays?", "chosen": "The Fund.", "rejected": r} for r in ("Nobody.", "The state.")]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = {"sources": [{"path": str(path), "domain": "x"}], "system_prompts": {"x": "Be brief."}}
    prepared = prepare_records(DataSpec.model_validate(spec), seed=0)
    kept = prepared.splits["train"]
    assert sorted(r["meta"]["rejected"] for r in kept) == ["Nobody.", "The state."]
    assert all(r["messages"][0] == {"role": "system", "content": "Be brief."} for r in kept)
