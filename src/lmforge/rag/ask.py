"""``lmforge ask RUN "question"``: retrieve passages from the run's index, answer with them, cite them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import StageError
from lmforge.models import generate_replies, load_for_inference, resolve_model
from lmforge.rag.retrieve import Mode, Passage, open_retriever
from lmforge.rag.route import relevance, routed
from lmforge.records import Message, cited_passages, context_messages
from lmforge.rundir import final_model, read_json


@dataclass
class Answer:
    """A reply with the passages it was given and those it cites."""

    question: str
    reply: str
    model: str
    """Which model answered: ``tuned`` (the run's sft stage) or ``base``."""
    passages: list[Passage]
    cited: list[Passage] = field(default_factory=list)
    relevance: float | None = None
    """The question's similarity to the nearest chunk (routing), when the index calibrated a threshold."""
    threshold: float | None = None
    """The index's routing threshold; below it the question was answered without passages."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "reply": self.reply,
            "model": self.model,
            "passages": self.passages,
            "cited": [p["id"] for p in self.cited],
            "relevance": self.relevance,
            "threshold": self.threshold,
        }


def ask(
    run_path: str | Path,
    question: str,
    k: int | None = None,
    mode: Mode | None = None,
    max_new_tokens: int = 128,
    use_base: bool = False,
    system: str | None = None,
    route: bool = True,
) -> Answer:
    """Answer ``question`` with passages retrieved from the run's index.

    The prompt is built by :func:`lmforge.records.context_messages` (as in evaluation and RAFT
    training), under the system prompt of the indexed documents' domain from the run's recipe
    unless ``system`` is given. The run's tuned model answers when its sft stage has finished
    (``use_base`` forces the base model). With ``route`` (and a threshold calibrated by the index
    stage, :mod:`lmforge.rag.route`) a question the documents do not cover is answered without passages.
    """
    run_path = Path(run_path)
    if not (run_path / "recipe.json").is_file():
        raise StageError(f"{run_path} is not a run directory (no recipe.json); pass runs/<name> of a run with an index")
    recipe = read_json(run_path / "recipe.json")
    retriever, manifest = open_retriever(run_path, needed_by="ask")
    spec = manifest["config"]["index"]
    passages = retriever.search([question], k or spec["top_k"], mode or spec["mode"])[0]
    calibrated = (manifest["outputs"].get("route") or {}).get("threshold")
    threshold = calibrated if route else None
    score = relevance(retriever, [question])[0] if threshold is not None else None
    passages = routed(passages, score, threshold)
    if system is None:
        system = recipe["data"].get("system_prompts", {}).get(manifest["outputs"].get("domain") or "")
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    tuned = None if use_base else final_model(run_path, kinds=("causal",))
    if tuned is not None:
        model_dir, adapter_dir = tuned.pair
    else:
        model_dir, adapter_dir = resolve_model(recipe["model"]["ref"], recipe["model"].get("revision")), None
    model, tokenizer = load_for_inference(model_dir, adapter_dir, recipe["model"].get("trust_remote_code", False))
    reply = generate_replies(
        model, tokenizer, [context_messages(messages, passages)], max_new_tokens=max_new_tokens, batch_size=1
    )[0]
    return Answer(
        question=question,
        reply=reply,
        model="tuned" if tuned is not None else "base",
        passages=passages,
        cited=cited_passages(reply, passages),
        relevance=score,
        threshold=threshold,
    )


def format_source(passage: Passage) -> str:
    """``path:line (heading)`` of a passage, with the page when there is one."""
    source = passage["source"]
    where = f"{source['path']}:{source.get('line', 1)}"
    if source.get("page") is not None:
        where += f" p.{source['page']}"
    return f"{where} ({source['heading']})" if source.get("heading") else where
