"""Teachers (an OpenAI-compatible endpoint, a local model) and the on-disk request cache.

Every request is keyed by (teacher, messages, sampling parameters). A reply is written to the
SQLite cache the moment it arrives, so a run that is killed, or whose endpoint dies, restarts
where it stopped and never pays twice for the same request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lmforge.config import TeacherSpec
from lmforge.errors import ConfigError, Problem
from lmforge.redact import redact_url, redact_urls

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class Reply:
    """A teacher's answer to one request, or why there is none."""

    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    retryable: bool = False
    """The failure may pass on a later run (rate limit, server down): the stage must not finish."""
    cached: bool = False


@dataclass
class Counters:
    """Live counts for the progress bar and the stats."""

    sent: int = 0
    cached: int = 0
    retries: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    json_mode: bool | None = None
    errors: dict[str, int] = field(default_factory=dict)


class Teacher(Protocol):
    """Anything that answers chat requests."""

    identity: str
    """What the cache key records about the teacher (endpoint + model, or local model)."""

    async def complete(self, messages: list[dict[str, str]], want_json: bool, counters: Counters) -> Reply:
        """One reply; never raises for a failed request (the Reply carries the error)."""
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- cache


class RequestCache:
    """SQLite table ``replies(key, text, prompt_tokens, completion_tokens, created)``; safe across threads."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
            "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)"
        )

    @staticmethod
    def key(identity: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        payload = json.dumps([identity, messages, params], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Reply | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, prompt_tokens, completion_tokens FROM replies WHERE key = ?", (key,)
            ).fetchone()
        return Reply(row[0], row[1] or 0, row[2] or 0, cached=True) if row else None

    def put(self, key: str, reply: Reply) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)",
                (key, reply.text, reply.prompt_tokens, reply.completion_tokens, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------- endpoint


class EndpointTeacher:
    """An OpenAI-compatible ``/chat/completions`` endpoint over async httpx.

    Concurrency is bounded by a semaphore, the request rate by spacing request starts
    ``60 / rpm`` seconds apart; 429, 5xx, timeouts and connection errors are retried with
    exponential backoff and jitter (a ``Retry-After`` header wins).
    """

    def __init__(self, spec: TeacherSpec):
        import httpx

        self.spec = spec
        # Credentials in the URL are not part of the teacher: the identity is printed, and a rotated
        # password must not make every cached reply a miss.
        self.identity = f"endpoint:{redact_url(spec.base_url.rstrip('/'))}:{spec.model}"
        headers = {}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise ConfigError(
                    "synth.teacher.api_key_env",
                    [Problem("api_key_env", f"${spec.api_key_env} is not set; export the endpoint's API key in it")],
                )
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.AsyncClient(
            base_url=spec.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(spec.timeout_s),
            limits=httpx.Limits(max_connections=spec.concurrency),
        )
        self.slots = asyncio.Semaphore(spec.concurrency)
        self.json_mode = spec.json_mode != "off"
        self._next_start = 0.0
        self._rate_lock = asyncio.Lock()

    async def _wait_for_rate(self) -> None:
        if not self.spec.rpm:
            return
        async with self._rate_lock:
            now = time.monotonic()
            wait = self._next_start - now
            self._next_start = max(now, self._next_start) + 60.0 / self.spec.rpm
        if wait > 0:
            await asyncio.sleep(wait)

    async def complete(self, messages: list[dict[str, str]], want_json: bool, counters: Counters) -> Reply:
        import httpx

        async with self.slots:
            attempt = 0
            while True:
                body: dict[str, Any] = {
                    "model": self.spec.model,
                    "messages": messages,
                    "temperature": self.spec.temperature,
                    "max_tokens": self.spec.max_tokens,
                }
                use_json = want_json and self.json_mode
                if use_json:
                    body["response_format"] = {"type": "json_object"}
                await self._wait_for_rate()
                delay = None
                try:
                    response = await self.client.post("/chat/completions", json=body)
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    error, delay = redact_urls(f"{type(exc).__name__}: {exc}".strip()), None
                    status = None
                else:
                    status = response.status_code
                    if status == 200:
                        return _parse_completion(response)
                    error = redact_urls(f"HTTP {status}: {_error_message(response)}")
                    if status == 400 and use_json and self.spec.json_mode == "auto" and "response_format" in error:
                        self.json_mode = False  # the endpoint has no JSON mode: ask in the prompt only
                        counters.json_mode = False
                        continue
                    if status not in RETRYABLE_STATUS:
                        return Reply(None, error=error, retryable=False)
                    delay = _retry_after(response)
                if attempt >= self.spec.max_retries:
                    return Reply(None, error=f"{error} (after {attempt} retries)", retryable=True)
                attempt += 1
                counters.retries += 1
                key = f"HTTP {status}" if status else error.split(":")[0]
                counters.errors[key] = counters.errors.get(key, 0) + 1
                backoff = self.spec.backoff_s * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                await asyncio.sleep(min(delay if delay is not None else backoff, 60.0))

    async def close(self) -> None:
        await self.client.aclose()


def _parse_completion(response: Any) -> Reply:
    try:
        payload = response.json()
        text = payload["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return Reply(None, error=f"the endpoint's reply is not a chat completion: {exc}", retryable=False)
    usage = payload.get("usage") or {}
    return Reply(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def _error_message(response: Any) -> str:
    try:
        return str(response.json()["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------- local model


class LocalTeacher:
    """A transformers model loaded in this process; requests are gathered into greedy batches."""

    def __init__(self, spec: TeacherSpec, model_ref: str):
        self.spec = spec
        self.model_ref = model_ref
        self.identity = f"local:{model_ref}"
        self._model: Any = None
        self._tokenizer: Any = None
        self._queue: list[tuple[list[dict[str, str]], asyncio.Future]] = []
        self._flush_task: asyncio.Task | None = None
        self._busy = asyncio.Lock()

    def _load(self) -> None:
        from lmforge.models import load_for_inference, resolve_model

        self._model, self._tokenizer = load_for_inference(resolve_model(self.model_ref))

    async def complete(self, messages: list[dict[str, str]], want_json: bool, counters: Counters) -> Reply:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((messages, future))
        if len(self._queue) >= self.spec.batch_size:
            await self._flush()
        elif self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_soon())
        return await future

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0.05)  # let the other requests of this wave join the batch
        await self._flush()

    async def _flush(self) -> None:
        from lmforge.models import generate_replies

        async with self._busy:
            batch, self._queue = self._queue[: self.spec.batch_size], self._queue[self.spec.batch_size :]
            if not batch:
                return
            if self._model is None:
                await asyncio.to_thread(self._load)
            conversations = [messages for messages, _ in batch]
            try:
                texts = await asyncio.to_thread(
                    generate_replies, self._model, self._tokenizer, conversations, self.spec.max_tokens, len(batch)
                )
            except Exception as exc:  # one failed batch is reported per request, the run goes on
                for _, future in batch:
                    future.set_result(Reply(None, error=f"local generation failed: {exc}", retryable=True))
                return
            for (_, future), text in zip(batch, texts, strict=True):
                future.set_result(Reply(text))
        if self._queue:
            await self._flush()

    def answer_all(self, conversations: list[list[dict[str, str]]], on_batch: Any = None) -> list[Reply]:
        """Greedy replies to a whole phase at once, batched by prompt length (the same batches in a
        single process and under a launcher, where every process answers a share of them);
        ``on_batch(n)`` after each of this process's batches."""
        from lmforge.distributed import world
        from lmforge.models import generate_replies

        if not conversations:
            return []
        if self._model is None:
            self._load()
        try:
            texts = generate_replies(
                self._model, self._tokenizer, conversations, self.spec.max_tokens, self.spec.batch_size,
                on_batch=on_batch, data_parallel=True,
            )  # fmt: skip
        except Exception as exc:  # one failed phase is reported per request; the rerun starts from the cache
            if world().distributed:
                raise  # the other processes would wait for this one's answers: stop the job instead
            return [Reply(None, error=f"local generation failed: {exc}", retryable=True) for _ in conversations]
        return [Reply(text) for text in texts]

    async def close(self) -> None:
        self._model = None
