"""sft.reword: the base model's rewordings of the rule-made questions, checked, cached and trained on."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import qa_rows, write_jsonl

from lmforge.config import load_recipe
from lmforge.records import chat_record
from lmforge.train import rewording

SENTENCE = "Members of the Governing Board serve a term of seven years."


def _rule_made(question: str, fact: str = "f1", answer: str = "seven years", kind: str = "duration") -> dict:
    messages = [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": SENTENCE},
    ]
    meta = {"answer": answer, "kind": kind, "fact": fact, "generated": "rules", "section": "a#1"}
    return chat_record(messages, {"path": "a.md", "line": 1}, "law", meta)


QUESTION = "Members of the Governing Board serve a term of how many years?"


def test_a_rewording_is_kept_only_when_it_still_asks_the_same_fact():
    def why(rewrite: str, question: str = QUESTION) -> str | None:
        return rewording.rejection(question, rewrite, "seven years", "duration", SENTENCE)

    assert why("How long does a member of the Governing Board serve?") is None
    assert why("How many years is the term of a Governing Board member?") is None
    assert why("How long do members serve? And who appoints them?") == "not one question"
    assert why("How long?") == "too short or too long"
    assert why("Which body appoints the members of the Governing Board?") == "asks for another kind of fact"
    assert why("How many years, at most 12, does a Governing Board member serve?") == "brings a number of its own"
    assert why("How long do Governing Board members serve, seven years?") == "gives the answer away"
    assert why("How long does a library card remain valid?") == "drifts from the question"
    # words of the example rewrites leaking in (the Port Council, a licence) are not the question's
    assert why("How long does the Port Council licence of a Governing Board member run?") == "brings words of its own"
    # a verb of asking and the sentence's own words are fine
    assert why("How long does the term of a Governing Board member last?") is None


def test_rewordings_keep_the_answer_and_add_no_wording_a_fact_already_has():
    first = _rule_made(QUESTION)
    second = _rule_made("For how many years do members of the Governing Board serve a term?")
    rewrites = {
        QUESTION: ["How long does a member of the Governing Board serve?"],
        second["messages"][-2]["content"]: [
            "How long does a member of the Governing Board serve?",  # the first question's rewording again
            "Members of the Governing Board serve a term of how many years?",  # the other source question
            "Which fund pays the Governing Board?",
        ],
    }
    kept, rejected = rewording.reworded_records([first, second], rewrites)
    assert [r["messages"][-2]["content"] for r in kept] == ["How long does a member of the Governing Board serve?"]
    assert kept[0]["messages"][-1] == first["messages"][-1] and kept[0]["messages"][0] == first["messages"][0]
    assert kept[0]["meta"]["generated"] == "reworded" and kept[0]["meta"]["reworded_from"] == QUESTION
    assert kept[0]["id"] != first["id"]
    assert rejected == {"same wording as another": 2, "asks for another kind of fact": 1}


def test_the_wordings_of_a_fact_are_reworded_after_different_examples():
    sources = [
        _rule_made(f"Members of the Governing Board serve a term of how many years, wording {i}?") for i in range(3)
    ]
    sets = [rewording.shot_sets(s, sources, 2) for s in sources]
    assert sets == [[0, 1], [2, 3], [4, 5]]
    one, other = rewording.prompt(QUESTION, 0), rewording.prompt(QUESTION, 1)
    assert one != other and one.endswith(f"Question: {QUESTION}\nRewrite:") and other.endswith("\nRewrite:")
    assert one.count("\nRewrite: ") == rewording.SHOTS_PER_PROMPT


def test_continue_texts_completes_plain_text_up_to_the_line_break(tiny_model_dir):
    import torch

    from lmforge.models import load_for_inference
    from lmforge.train.rewording import continue_texts

    model, tokenizer = load_for_inference(str(tiny_model_dir))
    texts = ["Question: a b c\nRewrite:", "Question: d\nRewrite:", "x"]
    found = continue_texts(model, tokenizer, texts, max_new_tokens=12, batch_size=2)
    assert len(found) == 3 and all("\n" not in text for text in found)
    for text in texts:  # greedy, no chat template: the plain continuation up to its first line break
        encoded = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            raw = model.generate(**encoded, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        plain = tokenizer.decode(raw[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        assert continue_texts(model, tokenizer, [text], max_new_tokens=12, batch_size=1) == [
            plain.split("\n")[0].strip()
        ]


def test_sft_gets_checked_rewordings_once_and_none_that_repeats_an_evaluation_question(
    tmp_path, monkeypatch, tiny_model_dir
):
    from lmforge.data import stage as data_stage

    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    write_jsonl(tmp_path / "train.jsonl", qa_rows([("What is the Fund?", "A fund.")]))
    held_out = "How long does a member of the Governing Board serve?"
    write_jsonl(tmp_path / "test.jsonl", qa_rows([(held_out, "Seven years.")]))
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        f"name: r\nrun_dir: {tmp_path / 'runs'}\nstages: [data, sft]\nmodel: {{ref: {tiny_model_dir}}}\n"
        "data:\n  sources:\n    - {path: train.jsonl, split: train}\n    - {path: test.jsonl, split: test}\n"
        "sft:\n  splits: [train]\n  reword: {enabled: true}\n",
        encoding="utf-8",
    )
    recipe = load_recipe(recipe_file)
    data_stage.run(recipe)
    scripted = {
        QUESTION: "How long does a member of the Governing Board serve?",  # the evaluation's question
        "Which board has members who serve seven years?": "Which board do members serving seven years sit on?",
    }
    calls = []

    def fake_generate(recipe, wanted, max_new_tokens):
        calls.append(wanted)
        return {(q, n): scripted[q] for q, n in wanted}

    monkeypatch.setattr(rewording, "_generate", fake_generate)
    name_question = _rule_made(
        "Which board has members who serve seven years?", fact="f2", answer="Governing Board", kind="name"
    )
    records = [_rule_made(QUESTION), name_question, chat_record([], {"path": "t"}, "law")]
    out, added = rewording.with_rewording(recipe, records, tmp_path / "reworded.jsonl")
    assert added == 1 and out[:3] == records
    assert out[3]["messages"][-2]["content"] == "Which board do members serving seven years sit on?"
    written = [json.loads(line) for line in (tmp_path / "reworded.jsonl").read_text().splitlines()]
    assert written == out[3:]
    again, _ = rewording.with_rewording(recipe, records, tmp_path / "reworded-2.jsonl")
    assert len(calls) == 1 and again == out  # cached per model: asked once
    off = load_recipe(recipe_file, ["sft.reword.enabled=false"])
    assert rewording.with_rewording(off, records, tmp_path / "off.jsonl") == (records, 0)


def test_a_recipe_without_rule_made_questions_adds_nothing(tiny_recipe: Path, tmp_path):
    recipe = load_recipe(tiny_recipe, ["sft.reword.enabled=true"])
    records = [chat_record([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], {"path": "x"})]
    assert rewording.with_rewording(recipe, records, tmp_path / "r.jsonl") == (records, 0)


def _raft_example(question: str, fact: str = "f1") -> dict:
    from lmforge.records import context_messages

    passage = {"text": SENTENCE, "source": {"path": "a.md", "heading": "Article 5"}}
    record = _rule_made(question, fact=fact)
    reply = {"role": "assistant", "content": f'According to [1], "{SENTENCE}"'}
    messages = [*context_messages(record["messages"][:-1], [passage]), reply]
    meta = {**record["meta"], "raft": {"gold": True, "passages": ["a.md#0"]}}
    return chat_record(messages, record["source"], "law", meta)


def test_the_reader_trains_on_each_rewording_with_the_passages_of_its_facts_raft_example():
    raft = _raft_example(QUESTION)
    other_fact = _raft_example("Which fund pays the board?", fact="f9")
    kept, _ = rewording.reworded_records(
        [_rule_made(QUESTION)], {QUESTION: ["How long does a member of the Governing Board serve?"]}
    )
    copies = rewording.reading_copies([raft, other_fact, *kept], kept)
    assert len(copies) == 1
    turn = copies[0]["messages"][-2]["content"]
    assert turn == raft["messages"][-2]["content"].replace(
        f"Question: {QUESTION}", "Question: How long does a member of the Governing Board serve?"
    )
    assert copies[0]["messages"][-1] == raft["messages"][-1] and copies[0]["meta"]["raft"] == raft["meta"]["raft"]
    assert copies[0]["meta"]["generated"] == "reworded" and copies[0]["id"] != raft["id"]
    # a RAFT example is never itself sent to be reworded: only closed-book rule-made questions are
    assert rewording._rule_made([raft, _rule_made(QUESTION)]) == [_rule_made(QUESTION)]
