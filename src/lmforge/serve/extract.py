"""Serving a seq2seq run: ``POST /v1/extract`` turns a document into the fields the run learnt to extract.

A document comes in as JSON ``{"text": "..."}`` or as an uploaded file (multipart form field
``file``: PDF, DOCX, HTML, Markdown or text, read by the same readers as the data stage). The
encoder input is built as in training (``seq2seq.input_format``, its instruction and the run's
``seq2seq/schema.json``), requests that arrive together are generated in one batch, and the reply
is the fields as a JSON object, validated against the schema::

    {"id": "extract-...", "object": "extraction", "model": "...", "valid": true,
     "fields": {"reference": "KSS-2024-0193", ...}, "raw": "<the model's output>",
     "usage": {"input_tokens": 212, "output_tokens": 41}, "input_truncated": false}

An output that is not a JSON object, or breaks the schema, is not an HTTP error (the request was
fine): ``valid`` is false, ``fields`` null and ``error`` says what is wrong (``type``
``invalid_output``, the schema ``problems``), with the ``raw`` output. A bad request gets a 4xx in
the OpenAI error shape: no document (400), an unreadable or empty file (422), a file whose type the
readers do not know or whose content is not what its name says (415), a body or a document over the
limits (413: bytes, expanded size, pages; :mod:`lmforge.serve.uploads`), too many documents waiting
(429). No 4xx carries a library's exception text or a server path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request

from lmforge.errors import ModelError
from lmforge.serve.app import base_app, read_body
from lmforge.serve.protocol import APIError, busy
from lmforge.serve.uploads import UploadLimits, read_upload

TEXT_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data",)


@dataclass
class Extraction:
    """One document's result."""

    raw: str
    input_tokens: int
    output_tokens: int
    input_truncated: bool


@dataclass
class Extractor:
    """A seq2seq run's model with what its inputs and outputs look like."""

    model_id: str
    model: Any
    tokenizer: Any
    schema: dict[str, Any]
    spec: Any
    """The run's ``Seq2SeqSpec`` (input format, instruction, length limits, beams)."""
    max_input: int

    def extract(self, documents: list[str]) -> list[Extraction]:
        """The model's raw output for each document (one generation batch)."""
        from lmforge.train.seq2seq import generate, input_text

        inputs = [input_text(document, self.schema, self.spec) for document in documents]
        lengths = [len(self.tokenizer(text)["input_ids"]) for text in inputs]
        spec = self.spec.model_copy(update={"eval_batch_size": len(inputs), "max_input_length": self.max_input})
        outputs = generate(self.model, self.tokenizer, inputs, spec)
        return [
            Extraction(raw, min(length, self.max_input), len(self.tokenizer(raw)["input_ids"]), length > self.max_input)
            for raw, length in zip(outputs, lengths, strict=True)
        ]

    def check(self, raw: str) -> tuple[dict[str, Any] | None, list[str]]:
        """(the fields, []) for a valid output; (None or the object, what is wrong) otherwise."""
        from lmforge.evaluate.fields import reply_object

        fields, valid = reply_object(raw)
        if fields is None or not valid:
            return None, ["the output is not one JSON object"]
        return fields, schema_problems(fields, self.schema)


def schema_problems(value: Any, schema: dict[str, Any]) -> list[str]:
    """What makes ``value`` invalid against the JSON schema (``jsonschema``), each with its place; [] if valid."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(part) for part in error.absolute_path) or "(the object)"
        problems.append(f"{where}: {error.message}")
    return problems


def is_extraction_run(target: str | Path) -> bool:
    """True for a run directory whose result is a seq2seq model (served with :func:`build_extraction_app`)."""
    from lmforge.rundir import final_model, is_run_dir

    if not is_run_dir(target):
        return False
    found = final_model(target)
    return found is not None and found.kind == "seq2seq"


def load_extractor(run: str | Path, name: str | None = None, dtype: str = "auto") -> Extractor:
    """The seq2seq result of ``run`` (full weights, or an adapter merged into its base), in eval mode."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from lmforge.config import Seq2SeqSpec
    from lmforge.models import load_tokenizer
    from lmforge.rundir import final_model, read_json
    from lmforge.serve.loading import serving_device
    from lmforge.train.seq2seq import input_limit

    run = Path(run)
    found = final_model(run, kinds=("seq2seq",))
    schema_path = run / "seq2seq" / "schema.json"
    if found is None or not schema_path.is_file():
        raise ModelError(f"{run} has no finished seq2seq stage (with seq2seq/schema.json) to serve; run the recipe")
    recipe = read_json(run / "recipe.json")
    spec = Seq2SeqSpec.model_validate(recipe.get("seq2seq", {}))
    trust = bool(recipe.get("model", {}).get("trust_remote_code", False))
    tokenizer_dir = found.adapter_dir or found.model_dir
    tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code=trust)
    device, weights = serving_device(dtype)
    model = AutoModelForSeq2SeqLM.from_pretrained(
        str(found.model_dir), dtype=torch.float32, use_safetensors=True, trust_remote_code=trust
    )
    if found.adapter_dir is not None:
        from peft import PeftModel

        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # characters added in training
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, str(found.adapter_dir)).merge_and_unload()
    model = model.to(device, weights).eval()
    schema = read_json(schema_path)
    return Extractor(name or run.resolve().name, model, tokenizer, schema, spec, input_limit(model, spec))


class Batcher:
    """Collects the documents of requests that arrive together and extracts them in one batch, one batch at
    a time, off the event loop."""

    def __init__(self, extractor: Extractor, max_batch_size: int, wait_ms: float, max_queue: int = 256):
        self.extractor = extractor
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000
        self.max_queue = max_queue
        self.queue: asyncio.Queue[tuple[str, asyncio.Future[Extraction]]] | None = None
        self.task: asyncio.Task[None] | None = None
        self.batches = 0

    def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.max_queue)
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def submit(self, document: str) -> Extraction:
        assert self.queue is not None, "the batcher starts with the app"
        future: asyncio.Future[Extraction] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((document, future))
        except asyncio.QueueFull:
            raise busy(self.max_queue, "documents") from None
        return await future

    async def _loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch_size and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            try:
                results = await asyncio.to_thread(self.extractor.extract, [document for document, _ in batch])
            except Exception as exc:  # every waiting request gets the failure (each logs it with its id)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def extraction_router(
    extractor: Extractor,
    batcher: Batcher,
    auth: Callable,
    read_json_body: Callable,
    max_upload_bytes: int,
    limits: UploadLimits | None = None,
) -> APIRouter:
    """``GET /v1/models`` and ``POST /v1/extract`` (both behind ``auth``), ``GET /health``."""
    router = APIRouter()
    limits = limits or UploadLimits()

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": [extractor.model_id], "kind": "extraction", "batches": batcher.batches}

    @router.get("/v1/models", dependencies=[Depends(auth)])
    async def list_models() -> dict[str, Any]:
        entry = {"id": extractor.model_id, "object": "model", "owned_by": "lmforge", "kind": "extraction"}
        return {"object": "list", "data": [{**entry, "schema": extractor.schema}]}

    @router.post("/v1/extract", dependencies=[Depends(auth)])
    async def extract(request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in FORM_TYPES:
            document, model = await _uploaded_document(request, max_upload_bytes, limits)
        elif kind in TEXT_TYPES or not kind:
            document, model = _json_document(await read_json_body(request))
        else:
            raise APIError(
                415,
                f"Content-Type {kind!r}: send JSON {{\"text\": ...}} or a multipart form with a 'file' field",
                code="unsupported_media_type",
            )
        if model is not None and model != extractor.model_id:
            raise APIError(
                404, f"the model {model!r} does not exist on this server; available: {[extractor.model_id]}",
                param="model", code="model_not_found",
            )  # fmt: skip
        result = await batcher.submit(document)
        fields, problems = extractor.check(result.raw)
        reply: dict[str, Any] = {
            "id": f"extract-{uuid.uuid4().hex[:24]}",
            "object": "extraction",
            "created": int(time.time()),
            "model": extractor.model_id,
            "valid": not problems,
            "fields": fields if not problems else None,
            "raw": result.raw,
            "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
            "input_truncated": result.input_truncated,
        }
        if problems:
            reply["error"] = {
                "message": "the model's output is not valid against the run's schema: " + "; ".join(problems[:5]),
                "type": "invalid_output",
                "problems": problems,
            }
        return reply

    return router


def _json_document(body: Any) -> tuple[str, str | None]:
    if not isinstance(body, dict):
        raise APIError(400, f"expected a JSON object with 'text', got {type(body).__name__}", code="invalid_request")
    text, model = body.get("text"), body.get("model")
    unknown = sorted(set(body) - {"text", "model"})
    if unknown:
        raise APIError(400, f"unknown field(s) {unknown}; expected 'text' and optionally 'model'", param=unknown[0])
    if not isinstance(text, str) or not text.strip():
        raise APIError(400, "'text' must be the document's text, a non-empty string", param="text")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "'model' must be a string", param="model")
    return text, model


async def _uploaded_document(request: Request, limit: int, limits: UploadLimits) -> tuple[str, str | None]:
    """The text of the multipart form's ``file``, its type checked on the bytes, read by the data readers in a
    child process under ``limits`` (:mod:`lmforge.serve.uploads`)."""
    from starlette.datastructures import UploadFile

    from lmforge.data.documents import DOCUMENT_SUFFIXES

    await read_body(request, limit)
    try:
        form = await request.form()
    except Exception:  # a malformed multipart body (the parser's words stay out of the reply)
        raise APIError(400, "the multipart form could not be read", code="invalid_form") from None
    upload, model = form.get("file"), form.get("model")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "the form has no 'file' field holding a file", param="file")
    name = Path(upload.filename or "")
    suffix = name.suffix.lower()
    if suffix not in DOCUMENT_SUFFIXES:
        raise APIError(
            415,
            f"file {name.name or '(no name)'!r}: its type is read from the name's suffix, one of "
            f"{', '.join(sorted(DOCUMENT_SUFFIXES))}",
            param="file",
            code="unsupported_media_type",
        )
    data = await upload.read()
    text = await asyncio.to_thread(read_upload, data, suffix, name.name, limits)
    return text, model if isinstance(model, str) else None


def build_extraction_app(extractor: Extractor, settings: Any, api_key: str | None = None, policy: Any = None) -> Any:
    """The FastAPI app serving ``extractor``: the same middleware, limits and auth as the chat server."""
    batcher = Batcher(extractor, settings.max_batch_size, settings.batch_wait_ms, settings.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app, auth, read_json_body = base_app(settings, api_key, policy, lifespan)
    app.state.batcher = batcher
    limits = UploadLimits(
        max_uncompressed_bytes=settings.max_uncompressed_bytes,
        max_pages=settings.max_upload_pages,
        read_timeout_s=settings.read_timeout_s,
    )
    app.include_router(extraction_router(extractor, batcher, auth, read_json_body, settings.max_upload_bytes, limits))
    return app
