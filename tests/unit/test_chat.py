import pytest

from lmforge.config import load_recipe
from lmforge.errors import ModelError
from lmforge.pipeline import run_recipe
from lmforge.serve.chat import chat_loop, resolve_target


def scripted(lines):
    queue = list(lines)
    return lambda prompt: queue.pop(0) if queue else "/exit"


def test_chat_keeps_history_and_handles_commands(tiny_model_dir):
    written, streamed = [], []
    chat_loop(
        str(tiny_model_dir),
        read=scripted(["hello", "", "/reset", "/system Be brief.", "again", "/exit", "never read"]),
        write=written.append,
        on_token=streamed.append,
        max_new_tokens=4,
    )
    assert written[0].startswith("Chatting with model")
    assert "(conversation cleared)" in written
    assert any("system prompt set" in line for line in written)
    assert not any(line.startswith("bot>") for line in written)  # replies were streamed instead


def test_chat_without_streaming_writes_whole_replies(tiny_model_dir):
    written = []
    chat_loop(str(tiny_model_dir), read=scripted(["hi"]), write=written.append, max_new_tokens=3)
    assert sum(line.startswith("bot>") for line in written) == 1


def test_chat_on_a_run_uses_the_tuned_adapter(tiny_recipe):
    recipe = load_recipe(tiny_recipe, ["stages=[data, sft]"])
    run_recipe(recipe)
    _, adapter_dir, description = resolve_target(str(recipe.run_path()))
    assert adapter_dir == recipe.run_path() / "sft" / "adapter"
    assert "tuned" in description


def test_chat_on_an_unfinished_run_is_explained(tmp_path):
    (tmp_path / "sft").mkdir()
    with pytest.raises(ModelError, match="have not finished"):
        resolve_target(str(tmp_path))
