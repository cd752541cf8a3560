"""``lmforge serve``: a run's model (and any number of LoRA adapters on its base) behind an OpenAI-compatible API;
a seq2seq run behind an extraction endpoint instead (:mod:`lmforge.serve.extract`).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (both also streaming over
server-sent events), ``GET /v1/models``, ``GET /health``. ``model`` in a request picks the base
model or one of the adapters; requests that arrive together are decoded in one batch whatever
adapter they ask for (see :mod:`lmforge.serve.engine`).

Safety defaults: the server binds 127.0.0.1; binding any other address requires an API key in
the environment (``LMFORGE_API_KEY`` unless told otherwise), and a key that is set is always
required. On loopback, requests whose ``Host`` is not a loopback name (DNS rebinding) get 403, and so
do requests from a web ``Origin`` that is not the server's own or allowed (see :mod:`lmforge.serve.middleware`).
Bodies over ``max_request_bytes`` get 413, ``max_tokens`` over the limit or past the context window
get 400, and every error has the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``;
a 500 carries only a request id (``x-request-id``), the traceback goes to the server's log.

This module imports FastAPI at the top: only ``lmforge serve`` imports it, lazily.

Retrieval hook: pass a :class:`Retriever` to :func:`build_app` (``lmforge serve RUN --rag`` passes
the run's index from ``lmforge.rag``) and requests with ``"rag": true`` (or every request, with
``rag_default``) get the retrieved passages put into their last user turn, in the same format as
evaluation and RAFT training (``records.context_messages``), and returned in ``citations``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from lmforge.errors import ConfigError, Problem
from lmforge.serve.app import base_app
from lmforge.serve.engine import Engine, Event, GenerationRequest
from lmforge.serve.loading import ModelSet, ServedModel, load_models
from lmforge.serve.middleware import (
    LOOPBACK_NAMES,
    AccessPolicy,
    internal_error,
)
from lmforge.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, busy, parse_request
from lmforge.serve.settings import ServeSettings

DEFAULT_RAG_TOP_K = 4


class Retriever(Protocol):
    """What the server needs from a retrieval index: the shape of ``lmforge.rag.retrieve.Retriever``."""

    def search(self, queries: list[str], k: int, mode: str = "hybrid") -> list[list[dict[str, Any]]]:
        """The ``k`` best passages for each query, best first; each has ``id``, ``source``, ``text``, ``score``
        (routing asks ``mode="dense"``, whose score is the cosine similarity)."""
        ...


# ---------------------------------------------------------------- the app


def build_app(
    models: ModelSet,
    settings: ServeSettings,
    retriever: Retriever | None = None,
    api_key: str | None = None,
    policy: AccessPolicy | None = None,
) -> Any:
    """The FastAPI application serving causal LMs; the engine starts and stops with the app's lifespan.

    Args:
        models: the base model and its adapters.
        settings: limits, batching and retrieval settings.
        retriever: the index behind ``"rag": true`` (None: such requests get 400).
        api_key: required as a Bearer token on every route but ``/health`` (None: no key).
        policy: the Host/Origin checks (None: none, as for an app driven in-process by a test client;
            :func:`serve` always passes one).
    """
    import contextlib

    engine = Engine(
        models.model,
        models.eos_ids,
        models.pad_id,
        use_adapter_names=models.has_adapters,
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.stop()

    app, auth, read_json_body = base_app(settings, api_key, policy, lifespan)
    app.state.engine = engine
    app.include_router(chat_router(models, engine, settings, retriever, auth, read_json_body))
    return app


def chat_router(
    models: ModelSet,
    engine: Engine,
    settings: ServeSettings,
    retriever: Retriever | None,
    auth: Any,
    read_json_body: Any,
) -> APIRouter:
    """``/health``, ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` (all but health behind
    ``auth``)."""
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(models.served), "engine": engine.stats}

    @router.get("/v1/models", dependencies=[Depends(auth)])
    async def list_models(request: Request) -> dict[str, Any]:
        return _model_list(models)

    @router.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(request: Request) -> Any:
        body = parse_request(ChatCompletionRequest, await read_json_body(request))
        served = _served(models, body.model)
        if not served.tokenizer.chat_template:
            raise APIError(400, f"model {body.model!r} has no chat template; use /v1/completions", param="model")
        messages = [{"role": _role(m.role), "content": m.text()} for m in body.messages]
        citations = None
        if body.rag if body.rag is not None else settings.rag_default:
            # retrieval embeds the query: keep it off the event loop
            messages, citations = await asyncio.to_thread(augment, messages, retriever, settings)
        prompt_ids = chat_prompt_ids(served, messages)
        job = _job(served, prompt_ids, body, models, settings, request.state.request_id)
        _admit(engine, settings)
        reply_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = _chat_chunks(engine, job, reply_id, body.model, include_usage, citations)
            return StreamingResponse(chunks, media_type="text/event-stream")
        text, done = await _collect(engine, job)
        return _reply(
            reply_id,
            "chat.completion",
            body.model,
            {"message": {"role": "assistant", "content": text}},
            done,
            citations,
        )

    @router.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(request: Request) -> Any:
        body = parse_request(CompletionRequest, await read_json_body(request))
        served = _served(models, body.model)
        prompt_ids = served.tokenizer(body.prompt)["input_ids"]
        job = _job(served, prompt_ids, body, models, settings, request.state.request_id)
        _admit(engine, settings)
        reply_id = f"cmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _text_chunks(engine, job, reply_id, body.model, include_usage), media_type="text/event-stream"
            )
        text, done = await _collect(engine, job)
        return _reply(reply_id, "text_completion", body.model, {"text": text}, done)

    return router


def _model_list(models: ModelSet) -> dict[str, Any]:
    """The body of ``/v1/models``."""
    data = [
        {"id": m.id, "object": "model", "created": models.created, "owned_by": "lmforge", "description": m.description}
        for m in models.served.values()
    ]
    return {"object": "list", "data": data}


def _reply(
    reply_id: str, kind: str, model: str, content: dict[str, Any], done: Any, citations: Any = None
) -> dict[str, Any]:
    """A finished (not streamed) completion: ``content`` is the choice's ``message`` or ``text``."""
    choice = {"index": 0, **content, "finish_reason": _reason(done), "logprobs": None}
    reply = {
        "id": reply_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(done),
    }
    if citations is not None:
        reply["citations"] = citations
    return reply


def chat_prompt_ids(served: ServedModel, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of ``messages`` in ``served``'s chat template, ready for the assistant's reply."""
    prompt = served.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return served.tokenizer(prompt, add_special_tokens=False)["input_ids"]


def _role(role: str) -> str:
    return "system" if role == "developer" else role


def _served(models: ModelSet, model_id: str) -> ServedModel:
    served = models.served.get(model_id)
    if served is None:
        raise APIError(
            404,
            f"the model {model_id!r} does not exist on this server; available: {sorted(models.served)}",
            param="model",
            code="model_not_found",
        )
    return served


def _admit(engine: Engine, settings: ServeSettings) -> None:
    """429 when ``max_queue`` requests already wait for the engine (memory stays bounded under a flood)."""
    if engine.pending.qsize() >= settings.max_queue:
        raise busy(settings.max_queue, "requests")


def _job(
    served: ServedModel, prompt_ids: list[int], body: Any, models: ModelSet, settings: ServeSettings, request_id: str
) -> Any:
    """A GenerationRequest (without its emit callback yet) after checking the token budget."""
    room = models.context_length - len(prompt_ids)
    if room < 1:
        raise APIError(
            400,
            f"the prompt has {len(prompt_ids)} tokens; this model's context is {models.context_length} tokens",
            code="context_length_exceeded",
        )
    asked = body.requested_max_tokens()
    if asked is not None and asked > settings.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens is {asked}; this server allows at most {settings.max_tokens_limit}",
            param="max_tokens",
            code="max_tokens_too_large",
        )
    if asked is not None and asked > room:
        raise APIError(
            400,
            f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({asked}) exceed the context of "
            f"{models.context_length} tokens; lower max_tokens to at most {room}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return GenerationRequest(
        prompt_ids=prompt_ids,
        tokenizer=served.tokenizer,
        emit=lambda event: None,
        adapter=served.adapter,
        max_tokens=asked if asked is not None else min(settings.default_max_tokens, room),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=list(body.stop or []),
        seed=body.seed,
        request_id=request_id,
    )


async def _events(engine: Engine, job: GenerationRequest) -> AsyncIterator[Event]:
    """Submit ``job`` and yield its events; cancels it if the consumer stops early (client gone)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()
    job.emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
    engine.submit(job)
    try:
        while True:
            event = await events.get()
            yield event
            if event.kind in ("done", "error"):
                return
    finally:
        job.cancelled.set()


async def _collect(engine: Engine, job: GenerationRequest) -> tuple[str, Event]:
    pieces: list[str] = []
    async for event in _events(engine, job):
        if event.kind == "delta":
            pieces.append(event.text)
        elif event.kind == "error":  # the engine logged the traceback with the request id
            raise internal_error(job.request_id)
        else:
            return "".join(pieces), event
    raise internal_error(job.request_id)


def _reason(done: Event) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def _usage(done: Event) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _chat_chunks(
    engine: Engine, job: GenerationRequest, reply_id: str, model_id: str, include_usage: bool, citations: Any
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {
            "id": reply_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [choice],
        }

    first = chunk({"role": "assistant", "content": ""}, None)
    if citations is not None:
        first["citations"] = citations
    yield _sse(first)
    async for event in _events(engine, job):
        if event.kind == "delta":
            yield _sse(chunk({"content": event.text}, None))
        elif event.kind == "error":  # the engine logged the traceback with the request id
            yield _sse(internal_error(job.request_id).body())
            return
        else:
            yield _sse(chunk({}, _reason(event)))
            if include_usage:
                tail = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model_id}
                yield _sse({**tail, "choices": [], "usage": _usage(event)})
    yield "data: [DONE]\n\n"


async def _text_chunks(
    engine: Engine, job: GenerationRequest, reply_id: str, model_id: str, include_usage: bool
) -> AsyncIterator[str]:
    created = int(time.time())
    head = {"id": reply_id, "object": "text_completion", "created": created, "model": model_id}
    async for event in _events(engine, job):
        if event.kind == "delta":
            yield _sse({**head, "choices": [{"index": 0, "text": event.text, "finish_reason": None, "logprobs": None}]})
        elif event.kind == "error":  # the engine logged the traceback with the request id
            yield _sse(internal_error(job.request_id).body())
            return
        else:
            choice = {"index": 0, "text": "", "finish_reason": _reason(event), "logprobs": None}
            yield _sse({**head, "choices": [choice]})
            if include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(event)})
    yield "data: [DONE]\n\n"


def augment(
    messages: list[dict[str, str]], retriever: Retriever | None, settings: ServeSettings
) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Put the passages retrieved for the last user turn into it (``records.context_messages``, the format
    evaluation and RAFT training use); return them, numbered, as citations."""
    from lmforge.records import context_messages

    if retriever is None:
        raise APIError(
            400,
            "this server has no retrieval index, so 'rag' cannot be honoured; serve a run with an index "
            "(lmforge serve runs/NAME --rag) or drop 'rag'",
            param="rag",
        )
    query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    threshold = settings.rag_route_threshold if settings.rag_route else None
    if threshold is not None:
        from lmforge.rag.route import relevance

        if relevance(retriever, [query])[0] < threshold:  # outside the documents: answer plainly
            return messages, []
    mode = {"mode": settings.rag_mode} if settings.rag_mode else {}
    passages = retriever.search([query], settings.rag_top_k or DEFAULT_RAG_TOP_K, **mode)[0]
    citations = [{"index": i + 1, **p} for i, p in enumerate(passages)]
    return context_messages(messages, passages), citations


# ---------------------------------------------------------------- running


def index_settings(target: str, settings: ServeSettings) -> None:
    """Retrieve as the run's evaluation and RAFT data did: its ``index.top_k`` and ``index.mode``,
    unless the settings name their own."""
    from lmforge.rundir import StageDir

    if not Path(target).is_dir():
        return
    index = StageDir.open(target, "index")
    spec = index.manifest.get("config", {}).get("index", {}) if index.status == "done" else {}
    settings.rag_top_k = settings.rag_top_k or spec.get("top_k")
    settings.rag_mode = settings.rag_mode or spec.get("mode")
    route = index.manifest.get("outputs", {}).get("route") if index.status == "done" else None
    if settings.rag_route_threshold is None and route:
        settings.rag_route_threshold = float(route["threshold"])


def check_binding(settings: ServeSettings) -> str | None:
    """The API key to require; refuses to bind beyond loopback without one."""
    key = os.environ.get(settings.api_key_env) or None
    if settings.host not in LOOPBACK_NAMES and key is None:
        raise ConfigError(
            "lmforge serve",
            [
                Problem(
                    "--host",
                    f"binding {settings.host!r} exposes the model beyond this machine, which needs an API key; "
                    f"set ${settings.api_key_env} (clients send it as a Bearer token) or bind 127.0.0.1",
                )
            ],
        )
    return key


def serve(
    target: str,
    settings: ServeSettings,
    adapters: list[str] | None = None,
    name: str | None = None,
    retriever: Retriever | None = None,
) -> None:
    """Load the models and serve them until interrupted."""
    import uvicorn

    api_key = check_binding(settings)
    loopback = settings.host in LOOPBACK_NAMES
    policy = AccessPolicy.build(settings.host, loopback, settings.allowed_hosts, settings.allowed_origins)
    _log_to_stderr()
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    from lmforge.serve.extract import build_extraction_app, is_extraction_run, load_extractor

    if is_extraction_run(target):  # a seq2seq run: documents in, fields out
        if adapters or retriever is not None:
            raise ConfigError(
                "lmforge serve",
                [Problem("--adapter/--rag", f"{target} is an extraction (seq2seq) run: it serves /v1/extract alone")],
            )
        extractor = load_extractor(target, name, settings.dtype)
        app = build_extraction_app(extractor, settings, api_key=api_key, policy=policy)
        print(f"serve: extraction model {extractor.model_id} ({len(extractor.schema.get('properties', {}))} fields)")
        where = "/v1/extract"
    else:
        if retriever is not None:
            index_settings(target, settings)
        models = load_models(target, adapters, name, settings.dtype)
        app = build_app(models, settings, retriever=retriever, api_key=api_key, policy=policy)
        print(f"serve: models {', '.join(models.served)}", flush=True)
        where = "/v1"
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    if retriever is not None:
        top_k, mode = settings.rag_top_k or DEFAULT_RAG_TOP_K, settings.rag_mode or "the retriever's default"
        when = "every request" if settings.rag_default else 'requests with "rag": true'
        print(f"serve: retrieval for {when}: {top_k} passages, {mode} search", flush=True)
    print(f"serve: accepting {_describe(policy)}", flush=True)
    auth = f"API key required (${settings.api_key_env})" if api_key else "no API key"
    print(f"serve: listening on http://{shown_host}:{settings.port}{where} ({auth})", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)


def _describe(policy: AccessPolicy) -> str:
    """Which Host and Origin headers the server accepts, in one line."""
    if policy.hosts is None:
        hosts = "any"
    else:
        shown = [(f"[{host}]" if ":" in host else host) + (f":{port}" if port else "") for host, port in policy.hosts]
        hosts = ", ".join(sorted(shown)) + " (any port unless one is given)"
    origins = "any" if policy.origins is None else ", ".join(["none", "its own", *sorted(policy.origins)])
    return f"Host header: {hosts}; Origin header: {origins}"


def _log_to_stderr() -> None:
    """Send the server's log (failed requests with their id and traceback) to stderr, once."""
    logger = logging.getLogger("lmforge.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
