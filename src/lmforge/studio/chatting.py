"""Base and tuned model answering the same message side by side, on ``lmforge serve``'s engine.

The models load as the server loads them (:func:`lmforge.serve.loading.load_models`): a LoRA run is
one base model with the run's adapter, and both answers are rows of the same batch (the engine runs
the base rows with the adapter switched off); a fully fine-tuned run is its own model next to the
recipe's base model, each on its own engine. Retrieval is the server's (:func:`lmforge.serve.server.augment`):
the passages go into the message and come back numbered, as citations.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import StageError

SIDES = ("base", "tuned")


@dataclass
class Reply:
    """What both sides have said so far."""

    text: dict[str, str] = field(default_factory=lambda: dict.fromkeys(SIDES, ""))
    done: set[str] = field(default_factory=set)
    citations: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class ChatPair:
    """The base and the tuned model of one run, ready to answer."""

    def __init__(self, run: str | Path, dtype: str = "auto"):
        from lmforge.models import resolve_model
        from lmforge.rundir import final_model, read_json
        from lmforge.serve.engine import Engine
        from lmforge.serve.loading import load_models
        from lmforge.serve.server import ServeSettings

        self.run = Path(run)
        final = final_model(self.run)
        if final is None:
            raise StageError(f"{self.run} has no trained model yet; run a training stage first")
        if final.kind != "causal":
            raise StageError(f"{self.run} is a {final.kind} run; chat needs a causal language model")
        self.settings = ServeSettings(dtype=dtype, batch_wait_ms=20.0)
        tuned = load_models(str(self.run), dtype=dtype)
        self.engines: list[Any] = []

        def engine_for(models: Any) -> Any:
            engine = Engine(models.model, models.eos_ids, models.pad_id, use_adapter_names=models.has_adapters)
            engine.start()
            self.engines.append(engine)
            return engine

        model = read_json(self.run / "recipe.json")["model"]
        base_dir = resolve_model(model["ref"], model.get("revision"), model.get("trust_remote_code", False))
        if tuned.has_adapters and final.model_dir.resolve() == base_dir.resolve():
            # base = the adapter switched off, in the same batches
            engine = engine_for(tuned)
            base_id, tuned_id = next(iter(tuned.served)), list(tuned.served)[1]
            self.sides = {"base": (engine, tuned, base_id), "tuned": (engine, tuned, tuned_id)}
        else:  # full weights, or an adapter on an earlier stage's model (dpo after sft): the recipe's base apart
            base = load_models(str(base_dir), dtype=dtype, name="base")
            self.sides = {
                "base": (engine_for(base), base, "base"),
                "tuned": (engine_for(tuned), tuned, list(tuned.served)[-1]),  # the adapter, when there is one
            }
        self.retriever = None
        if (self.run / "index" / "manifest.json").is_file():
            from lmforge.rag.retrieve import open_retriever
            from lmforge.serve.server import index_settings

            self.retriever, _ = open_retriever(self.run, needed_by="studio chat with retrieval")
            index_settings(str(self.run), self.settings)

    @property
    def labels(self) -> dict[str, str]:
        return {side: models.served[model_id].description for side, (_, models, model_id) in self.sides.items()}

    def stream(
        self, history: dict[str, list[dict[str, str]]], message: str, rag: bool, max_tokens: int = 128
    ) -> Iterator[Reply]:
        """Both models' replies to ``message`` after their own ``history``, as they grow (greedy)."""
        from lmforge.serve.engine import GenerationRequest
        from lmforge.serve.server import augment, chat_prompt_ids

        reply = Reply()
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        jobs = []
        for side, (engine, models, model_id) in self.sides.items():
            messages = [*history.get(side, []), {"role": "user", "content": message}]
            if rag:
                if self.retriever is None:
                    raise StageError(f"{self.run} has no retrieval index: run its index stage, or chat without it")
                messages, reply.citations = augment(messages, self.retriever, self.settings)
            served = models.served[model_id]
            prompt_ids = chat_prompt_ids(served, messages)
            room = models.context_length - len(prompt_ids)
            if room < 1:
                raise StageError(
                    f"the conversation has {len(prompt_ids)} tokens; the context is {models.context_length}"
                )
            job = GenerationRequest(
                prompt_ids=prompt_ids,
                tokenizer=served.tokenizer,
                emit=lambda event, side=side: events.put((side, event)),
                adapter=served.adapter,
                max_tokens=min(max_tokens, room),
            )
            jobs.append(job)
            engine.submit(job)
        try:
            while len(reply.done) < len(SIDES):
                side, event = events.get(timeout=600)
                if event.kind == "delta":
                    reply.text[side] += event.text
                elif event.kind == "error":
                    reply.error = f"{side}: generation failed ({event.text or 'see the studio log'})"
                    reply.done.add(side)
                else:
                    reply.done.add(side)
                yield reply
        finally:
            for job in jobs:  # a closed page stops its generation
                job.cancelled.set()

    def close(self) -> None:
        for engine in self.engines:
            engine.stop()


class ChatPairs:
    """One loaded :class:`ChatPair` at a time (the last run asked for), loaded on first use."""

    def __init__(self) -> None:
        self._pair: ChatPair | None = None
        self._lock = threading.Lock()

    def get(self, run: Path) -> ChatPair:
        with self._lock:
            if self._pair is None or self._pair.run != run:
                if self._pair is not None:
                    self._pair.close()
                    self._pair = None
                self._pair = ChatPair(run)
            return self._pair
