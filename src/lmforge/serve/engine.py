"""The generation engine behind ``lmforge serve``: one model, several LoRA adapters, batched decoding.

Requests that arrive together (within ``batch_wait_ms``) are decoded as one left-padded batch
with a shared KV cache. Every row keeps its own sampling settings (temperature, top_p, seed),
its own token budget and stop strings, and its own LoRA adapter: peft's mixed-adapter forward
(``adapter_names=[...]``, ``"__base__"`` for the plain base model) runs rows of different
adapters in the same forward pass.

Why a hand-written decode loop rather than ``model.generate``: ``generate`` applies one
generation config to the whole batch and streams only batch-size-1 outputs, while a server needs
per-request settings, per-request streaming and per-request cancellation in one batch.

The engine runs in one background thread (torch work stays off the asyncio event loop); results
reach the caller through the ``emit`` callback of each request, which must be thread-safe.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("lmforge.serve")

BASE_ADAPTER = "__base__"
"""peft's name for "no adapter" in a mixed-adapter batch."""


@dataclass
class Event:
    """What the engine reports about one request: a text ``delta``, ``done`` or an ``error``."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class GenerationRequest:
    """One prompt to continue, with its own settings."""

    prompt_ids: list[int]
    tokenizer: Any
    """Decodes this request's tokens (the tokenizer of the adapter it asked for)."""
    emit: Callable[[Event], None]
    """Receives events from the engine thread; must be thread-safe."""
    adapter: str | None = None
    """peft adapter name, or None for the base model."""
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set by the caller (client went away): the engine drops the row at its next step."""
    request_id: str = ""
    """The HTTP request's id, named in the log when its batch fails."""


@dataclass
class _Row:
    """Decoding state of one request inside a batch."""

    request: GenerationRequest
    generator: Any
    tokens: list[int] = field(default_factory=list)
    sent: int = 0
    """Characters of the decoded text already emitted."""
    done: bool = False


class Engine:
    """Collects requests from any thread and decodes them in batches on one worker thread."""

    def __init__(
        self,
        model: Any,
        eos_ids: list[int],
        pad_id: int,
        use_adapter_names: bool,
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
    ):
        self.model = model
        self.eos_ids = set(eos_ids)
        self.pad_id = pad_id
        self.use_adapter_names = use_adapter_names
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.pending: queue.Queue[GenerationRequest | None] = queue.Queue()
        self.stats = {"batches": 0, "requests": 0, "max_batch": 0, "generated_tokens": 0}
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="lmforge-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.pending.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; its events arrive through ``request.emit``."""
        self.pending.put(request)

    def _work(self) -> None:
        while True:
            first = self.pending.get()
            if first is None:
                return
            batch = [first]
            # Wait briefly for requests that arrive together, so they share one batch.
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    item = self.pending.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self.pending.put(None)  # stop after this batch
                    break
                batch.append(item)
            batch = [r for r in batch if not r.cancelled.is_set()]
            if not batch:
                continue
            try:
                self.generate_batch(batch)
            except Exception:  # report to every waiting client instead of killing the worker
                ids = ", ".join(request.request_id or "?" for request in batch)
                log.exception("generation failed for a batch of %d request(s): %s", len(batch), ids)
                for request in batch:
                    # the traceback is in the log; clients get an opaque 500 with their request id
                    request.emit(Event("error", text="generation failed"))

    # ---------------------------------------------------------------- decoding

    def generate_batch(self, requests: list[GenerationRequest]) -> None:
        """Decode a batch to completion, emitting deltas and a ``done`` event per request."""
        import torch
        from transformers import DynamicCache

        self.stats["batches"] += 1
        self.stats["requests"] += len(requests)
        self.stats["max_batch"] = max(self.stats["max_batch"], len(requests))
        device = self.model.device
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, request in enumerate(requests):
            ids[i, width - len(request.prompt_ids) :] = torch.tensor(request.prompt_ids)
            mask[i, width - len(request.prompt_ids) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = [_Row(request=r, generator=_generator(r.seed)) for r in requests]
        extra: dict[str, Any] = {}
        if self.use_adapter_names:
            extra["adapter_names"] = [r.adapter or BASE_ADAPTER for r in requests]
        cache = DynamicCache()
        budget = max(r.max_tokens for r in requests)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                **extra,
            )
            for _ in range(budget):
                next_ids = self._pick(out.logits[:, -1, :].float(), rows)
                for row, token in zip(rows, next_ids, strict=True):
                    if not row.done:
                        self._advance(row, token)
                if all(row.done for row in rows):
                    break
                mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
                positions = positions[:, -1:] + 1
                step_ids = torch.tensor([[t] for t in next_ids], dtype=torch.long, device=device)
                out = self.model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    **extra,
                )
        for row in rows:  # safety net: every row has finished by now (the budget is the largest max_tokens)
            if not row.done:
                self._finish(row, "length")

    def _pick(self, logits: Any, rows: list[_Row]) -> list[int]:
        """Next token per row: greedy at temperature 0, else nucleus sampling with the row's generator.

        logits: (batch, vocab) float32.
        """
        import torch

        picked = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            request = row.request
            if row.done or request.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / request.temperature, dim=-1)
            if request.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                # keep the smallest prefix whose mass reaches top_p (always at least the top token)
                keep = (sorted_probs.cumsum(-1) - sorted_probs) < request.top_p
                sorted_probs = sorted_probs * keep
                choice = torch.multinomial(sorted_probs.cpu(), 1, generator=row.generator)
                picked[i] = int(order[choice.to(order.device)].item())
            else:
                picked[i] = int(torch.multinomial(probs.cpu(), 1, generator=row.generator).item())
        return picked

    def _advance(self, row: _Row, token: int) -> None:
        request = row.request
        if request.cancelled.is_set():
            self._finish(row, "cancelled")
            return
        if token in self.eos_ids:
            self._finish(row, "stop")
            return
        row.tokens.append(token)
        self.stats["generated_tokens"] += 1
        text = request.tokenizer.decode(row.tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in request.stop if s in text]
        if cuts:
            self._send(row, text[: min(cuts)])
            self._finish(row, "stop")
            return
        if len(row.tokens) >= request.max_tokens:
            self._send(row, text)
            self._finish(row, "length")
            return
        # Hold back what could be the start of a stop string, and an unfinished UTF-8 character.
        hold = max((len(s) for s in request.stop), default=1) - 1
        safe = len(text) - hold
        while safe > row.sent and text[safe - 1] == "\ufffd":
            safe -= 1
        self._send(row, text[:safe])

    def _send(self, row: _Row, text: str) -> None:
        if len(text) > row.sent:
            row.request.emit(Event("delta", text=text[row.sent :]))
            row.sent = len(text)

    def _finish(self, row: _Row, reason: str) -> None:
        if reason == "stop" and row.tokens and not row.request.cancelled.is_set():
            # End of turn: flush what was held back (no stop string is in the text, or _advance cut it).
            text = row.request.tokenizer.decode(row.tokens, skip_special_tokens=True)
            cuts = [text.find(s) for s in row.request.stop if s in text]
            self._send(row, text[: min(cuts)] if cuts else text)
        row.done = True
        row.request.emit(
            Event(
                "done",
                finish_reason=reason,
                prompt_tokens=len(row.request.prompt_ids),
                completion_tokens=len(row.tokens),
            )
        )


def _generator(seed: int | None) -> Any:
    import torch

    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator
