"""The serve engine and app in-process: batched decoding, stop strings, the request schema, the RAG hook."""

from __future__ import annotations

import threading

import pytest

from lmforge.serve.engine import Engine, Event, GenerationRequest
from lmforge.serve.protocol import APIError, ChatCompletionRequest, parse_request


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from lmforge.models import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir)
    return model, tokenizer


def run_batch(model, tokenizer, prompts: list[str], **settings) -> list[tuple[str, Event]]:
    engine = Engine(model, [tokenizer.eos_token_id], tokenizer.pad_token_id, use_adapter_names=False)
    results: list[list] = [[] for _ in prompts]
    requests = [
        GenerationRequest(
            prompt_ids=tokenizer(p, add_special_tokens=False)["input_ids"],
            tokenizer=tokenizer,
            emit=results[i].append,
            **settings,
        )
        for i, p in enumerate(prompts)
    ]
    engine.generate_batch(requests)
    return [("".join(e.text for e in events if e.kind == "delta"), events[-1]) for events in results]


def greedy_reference(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    import torch

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_batched_left_padded_greedy_matches_generate(tiny):
    model, tokenizer = tiny
    prompts = ["The retirement age", "Employees contribute 7.35% of their gross earnings, and", "What"]
    batched = run_batch(model, tokenizer, prompts, max_tokens=10)
    for prompt, (text, done) in zip(prompts, batched, strict=True):
        assert text == greedy_reference(model, tokenizer, prompt, 10)
        assert done.kind == "done" and done.completion_tokens <= 10


def test_stop_strings_cut_the_reply_and_are_never_streamed(tiny):
    model, tokenizer = tiny
    [(full, _)] = run_batch(model, tokenizer, ["The appeal must"], max_tokens=16)
    stop = full[5:8]
    [(cut, done)] = run_batch(model, tokenizer, ["The appeal must"], max_tokens=16, stop=[stop])
    assert cut == full[: full.find(stop)] and done.finish_reason == "stop"


def test_cancelled_request_finishes_early(tiny):
    model, tokenizer = tiny
    cancelled = threading.Event()
    cancelled.set()
    events: list[Event] = []
    request = GenerationRequest(
        prompt_ids=tokenizer("pension")["input_ids"], tokenizer=tokenizer, emit=events.append, cancelled=cancelled
    )
    Engine(model, [tokenizer.eos_token_id], 0, use_adapter_names=False).generate_batch([request])
    assert events[-1].finish_reason == "cancelled" and events[-1].completion_tokens == 0


def test_request_schema_rejects_what_it_cannot_honour():
    ok = parse_request(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert ok.requested_max_tokens() is None and ok.temperature == 1.0
    bad = [
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ]
    for payload, param in bad:
        with pytest.raises(APIError) as error:
            parse_request(ChatCompletionRequest, payload)
        assert error.value.status == 400 and error.value.param == param, payload


class FakeRetriever:
    """Stands in for lmforge.rag's index: returns fixed passages and records the query."""

    def __init__(self):
        self.queries: list[str] = []

    def search(self, queries: list[str], k: int, mode: str = "hybrid") -> list[list[dict]]:
        self.queries.extend(queries)
        passage = {"id": "p1", "text": "Article 15: the retirement age is 64.", "source": {"path": "art-15.md"}}
        # Dense scores: a question mentioning retirement is close to the passage, others are not.
        return [[{**passage, "score": 0.8 if "etirement" in q else 0.1}][:k] for q in queries]


def test_rag_hook_puts_passages_in_the_prompt_and_returns_citations(tiny_model_dir):
    from fastapi.testclient import TestClient

    from lmforge.serve.server import ServeSettings, build_app, load_models

    retriever = FakeRetriever()
    models = load_models(str(tiny_model_dir), name="tiny")
    app = build_app(models, ServeSettings(), retriever=retriever)
    with TestClient(app) as client:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Retirement age?"}], "max_tokens": 4}
        plain = client.post("/v1/chat/completions", json=body).json()
        assert "citations" not in plain and retriever.queries == []
        cited = client.post("/v1/chat/completions", json={**body, "rag": True}).json()
        assert retriever.queries == ["Retirement age?"]
        assert cited["citations"][0]["source"] == {"path": "art-15.md"} and cited["citations"][0]["index"] == 1
        assert cited["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


def test_rag_requests_are_routed_by_the_runs_threshold(tiny_model_dir):
    from fastapi.testclient import TestClient

    from lmforge.serve.server import ServeSettings, build_app, load_models

    models = load_models(str(tiny_model_dir), name="tiny")
    retriever = FakeRetriever()
    app = build_app(models, ServeSettings(rag_route_threshold=0.5), retriever=retriever)
    with TestClient(app) as client:

        def ask(question: str, **extra) -> dict:
            body = {"model": "tiny", "messages": [{"role": "user", "content": question}], "max_tokens": 2, "rag": True}
            return client.post("/v1/chat/completions", json={**body, **extra}).json()

        assert ask("Retirement age?")["citations"][0]["id"] == "p1"  # relevance 0.8 >= 0.5
        assert ask("Capital of Italy?")["citations"] == []  # relevance 0.1: answered without passages
    unrouted = build_app(models, ServeSettings(rag_route_threshold=0.5, rag_route=False), retriever=retriever)
    with TestClient(unrouted) as client:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Capital of Italy?"}], "max_tokens": 2}
        assert client.post("/v1/chat/completions", json={**body, "rag": True}).json()["citations"][0]["id"] == "p1"


def test_serve_cli_passes_rag_top_k_and_mode_and_refuses_unknown_modes(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import lmforge.rag.retrieve
    import lmforge.serve.server
    from lmforge.cli import app

    seen = {}
    monkeypatch.setattr(lmforge.rag.retrieve, "open_retriever", lambda target, needed_by: (FakeRetriever(), None))
    monkeypatch.setattr(lmforge.serve.server, "serve", lambda target, settings, **kw: seen.update(settings=settings))
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--rag", "--rag-top-k", "5", "--rag-mode", "bm25"])
    assert result.exit_code == 0, result.output
    assert (seen["settings"].rag_top_k, seen["settings"].rag_mode) == (5, "bm25")

    bad = CliRunner().invoke(app, ["serve", str(tmp_path), "--rag", "--rag-mode", "fuzzy"])
    assert bad.exit_code == 2 and "expected bm25, dense or hybrid" in bad.output


def test_run_index_settings_fill_in_only_what_the_command_line_left_unset(tmp_path):
    from lmforge.rundir import StageDir
    from lmforge.serve.server import ServeSettings, index_settings

    index = StageDir.open(tmp_path, "index")
    index.start("fp", {"index": {"top_k": 3, "mode": "hybrid"}}, {})
    index.finish({}, outputs={"route": {"threshold": 0.42}})
    chosen = ServeSettings(rag_top_k=7)
    index_settings(str(tmp_path), chosen)
    assert (chosen.rag_top_k, chosen.rag_mode, chosen.rag_route_threshold) == (7, "hybrid", 0.42)


def test_a_full_engine_queue_answers_429_before_anything_is_queued():
    import queue
    from types import SimpleNamespace

    from lmforge.serve.server import ServeSettings, _admit

    engine = SimpleNamespace(pending=queue.Queue())
    settings = ServeSettings(max_queue=2)
    _admit(engine, settings)
    engine.pending.put("a")
    _admit(engine, settings)
    engine.pending.put("b")
    with pytest.raises(APIError) as refused:
        _admit(engine, settings)
    assert refused.value.status == 429 and refused.value.code == "server_busy"
    assert "2 requests" in refused.value.message and engine.pending.qsize() == 2
