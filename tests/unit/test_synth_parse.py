"""Parsing and repairing teacher replies, templates, filters and the request cache."""

from __future__ import annotations

import pytest

from lmforge.config import SynthSpec
from lmforge.synth import tasks
from lmforge.synth.stage import Item, Tally, to_records
from lmforge.synth.teacher import Reply, RequestCache

PAIR = {"question": "What is the retirement age?", "answer": "It is 64 years."}


@pytest.mark.parametrize(
    ("reply", "repair"),
    [
        ('{"pairs": [{"question": "What is the retirement age?", "answer": "It is 64 years."}]}', None),
        (
            '```json\n{"pairs": [{"question": "What is the retirement age?", "answer": "It is 64 years."}]}\n```',
            "code fence",
        ),
        (
            'Sure:\n{"pairs": [{"question": "What is the retirement age?", "answer": "It is 64 years."},]}',
            "trailing comma or smart quotes",
        ),
        ('[{"Question": "What is the retirement age?", "Answer": "It is 64 years."}]', None),
        (
            '{"qa": [{"question": "What is the retirement age?", "answer": "It is 64 years."}]}',
            "list under another key",
        ),
        (
            '{"pairs": [{"question": "What is the retirement age?", "answer": "It is 64 years."}, {"question": "Who pa',
            "truncated reply closed",
        ),
        ("{'pairs': [{'question': 'What is the retirement age?', 'answer': 'It is 64 years.'}]}", "json-repair"),
        (
            '{"pairs": [\n  // one pair\n  {"question": "What is the retirement age?" "answer": "It is 64 years."}]}',
            "json-repair",
        ),
    ],
)
def test_replies_are_repaired_into_valid_pairs(reply, repair):
    items, repairs = tasks.parse_items("qa_from_docs", reply)
    assert items == [PAIR]
    if repair:
        assert repair in repairs


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("I cannot help with that.", "no JSON"),
        ('{"pairs": []}', "non-empty list"),
        ('{"pairs": [{"question": "Q?", "answer": ""}]}', "answer must be a non-empty string"),
        ('{"pairs": "none"}', "non-empty list"),
    ],
)
def test_unusable_replies_say_why(reply, reason):
    with pytest.raises(ValueError, match=reason):
        tasks.parse_items("qa_from_docs", reply)


def test_triples_judge_and_paraphrases():
    items, _ = tasks.parse_items(
        "instruction_triples", '{"triples": [{"instruction": "Summarize", "output": "Short."}]}'
    )
    assert items == [{"instruction": "Summarize", "input": "", "output": "Short."}]
    assert tasks.parse_judge('{"score": "4", "reason": "ok"}') == (4, "ok")
    with pytest.raises(ValueError, match="1 to 5"):
        tasks.parse_judge('{"score": 9}')
    assert tasks.parse_paraphrases('{"paraphrases": ["A?", " ", "B?"]}') == ["A?", "B?"]


def test_templates_can_be_overridden():
    assert "{chunk}" not in tasks.render({}, "qa_from_docs", chunk="TEXT", n=2, source="a.md")
    assert tasks.render({"judge": "J {question}"}, "judge", chunk="", question="Q", answer="A") == "J Q"


def test_filters_and_dedup_account_for_every_item():
    chunk = {
        "id": "c1",
        "kind": "text",
        "text": "The retirement age is 64 years.",
        "source": {"path": "a.md", "line": 1},
    }
    spec = SynthSpec.model_validate({"filters": {"answer_in_chunk": True, "near_duplicate": 0.5}})
    items = [
        Item("What is the retirement age?", "64 years", chunk),
        Item("What is the retirement age?", "64 years", chunk),  # exact duplicate
        Item("What is the retirement age in Kestria?", "64 years", chunk),  # near duplicate
        Item("Who pays contributions?", "employers", chunk),  # answer not in chunk
        Item("Q", "A", chunk),  # too short
    ]
    tally = Tally()
    records = to_records(items, spec, {}, tally)
    assert len(records) == 1 and records[0]["source"] == {"path": "a.md", "line": 1}
    assert dict(tally.filtered) == {
        "duplicate": 1,
        "near duplicate": 1,
        "answer not found in chunk": 1,
        "too short": 1,
    }


def test_request_cache_keys_on_teacher_messages_and_params(tmp_path):
    cache = RequestCache(tmp_path / "cache.sqlite")
    messages = [{"role": "user", "content": "hi"}]
    key = RequestCache.key("endpoint:x:m", messages, {"temperature": 0.7})
    assert key != RequestCache.key("endpoint:x:other", messages, {"temperature": 0.7})
    assert key != RequestCache.key("endpoint:x:m", messages, {"temperature": 0.0})
    assert cache.get(key) is None
    cache.put(key, Reply("hello", 3, 1))
    cache.close()
    reopened = RequestCache(tmp_path / "cache.sqlite")
    assert reopened.get(key) == Reply("hello", 3, 1, cached=True) and len(reopened) == 1


def test_rpm_limit_spaces_request_starts():
    import asyncio
    import time

    from lmforge.config import TeacherSpec
    from lmforge.synth.teacher import EndpointTeacher

    async def five_starts() -> float:
        teacher = EndpointTeacher(TeacherSpec(rpm=1200))  # one start every 50 ms
        started = time.monotonic()
        await asyncio.gather(*(teacher._wait_for_rate() for _ in range(5)))
        await teacher.close()
        return time.monotonic() - started

    assert asyncio.run(five_starts()) >= 0.19


def test_string_lists_are_read_under_their_key_a_lone_other_key_or_bare():
    assert tasks.parse_strings('{"facts": ["A is 1.", " "]}', "facts") == ["A is 1."]
    assert tasks.parse_strings('```json\n["X", "Y",]\n```', "entities") == ["X", "Y"]
    assert tasks.parse_strings('{"items": ["Q?"]}', "questions") == ["Q?"]
    with pytest.raises(ValueError, match="empty"):
        tasks.parse_strings('{"facts": []}', "facts")
    with pytest.raises(ValueError, match="list of strings under 'facts'"):
        tasks.parse_strings('{"facts": [{"a": 1}]}', "facts")


def test_a_restated_fact_may_not_hold_a_number_its_chunk_lacks():
    from lmforge.synth.stage import numbers

    chunk = "Employees pay 8.15% of 1,200 crowns; the term is 5 years."
    assert numbers("They pay 8.15% of 1200 crowns for 5 years.") <= numbers(chunk)
    assert not numbers("They pay 8.2% for 5 years.") <= numbers(chunk)
