"""sft.replay: the base model's own replies to general prompts, generated once and mixed into training."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmforge.config import ReplaySpec, load_recipe
from lmforge.records import chat_record
from lmforge.train import replay


def _chat(domain: str | None) -> dict:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    return chat_record(messages, {"path": "x"}, domain)


def test_replay_is_on_by_default_unless_the_recipe_brings_its_own():
    spec = ReplaySpec()
    assert replay.replay_wanted(spec, "chat", [_chat("law")])
    assert not replay.replay_wanted(spec, "chat", [_chat("law"), _chat("general")])  # the demo's replay.jsonl
    assert not replay.replay_wanted(spec, "alpaca", [_chat("law")])  # no chat template to replay in
    assert replay.replay_wanted(ReplaySpec(enabled=True), "alpaca", [_chat("general")])
    assert not replay.replay_wanted(ReplaySpec(enabled=False), "chat", [_chat("law")])


def test_replies_are_generated_once_filtered_and_weighted(tmp_path: Path, tiny_recipe: Path, monkeypatch):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    prompts = tmp_path / "prompts.yaml"
    items = [
        {"prompt": "What is the capital of Italy?", "answer": "Rome"},
        {"prompt": "What is the capital of Peru?", "answer": "Lima"},
        {"prompt": "Say something kind."},
        {"prompt": "Count to three."},
    ]
    prompts.write_text(yaml.safe_dump(items), encoding="utf-8")
    scripted = ["The capital of Italy is Rome. It is", "The capital of Peru is Cusco.", "You are kind!", "One two"]
    calls = []

    def fake_replies(model, tokenizer, conversations, max_new_tokens=48, **_):
        calls.append([c[-1]["content"] for c in conversations])
        return scripted

    import lmforge.models

    monkeypatch.setattr(lmforge.models, "generate_replies", fake_replies)
    recipe = load_recipe(tiny_recipe, [f"sft.replay.prompts={prompts}", "sft.replay.weight=1.5"])
    records = replay.replay_records(recipe, recipe.sft.replay, tmp_path / "replay.jsonl")
    replies = sorted({r["messages"][-1]["content"] for r in records})
    # cut to the last full sentence; Peru's wrong answer and the reply with no full sentence are not replayed
    assert replies == ["The capital of Italy is Rome.", "You are kind!"]
    assert len(records) == 3  # weight 1.5: both once, plus a seeded half
    assert all(r["domain"] == replay.REPLAY_DOMAIN and r["meta"]["replay"] for r in records)
    assert (tmp_path / "replay.jsonl").is_file()
    again = replay.replay_records(recipe, recipe.sft.replay, tmp_path / "replay-2.jsonl")
    assert len(calls) == 1 and again == records  # cached per model and prompt file: not generated again


def test_missing_prompt_file_is_a_config_error(tiny_recipe: Path):
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sft\.replay\.prompts.*file not found"):
        load_recipe(tiny_recipe, ["sft.replay.prompts=nowhere.yaml"])
