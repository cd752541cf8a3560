"""Recipe models of the ``synth`` stage: the teacher, the generation task and its filters."""

# Mutable field defaults are safe here: pydantic copies them per instance; ruff only sees that
# when the BaseModel subclass is defined in the same file, and Strict lives in base.py.
# ruff: noqa: RUF012

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.config.base import Strict


class TeacherSpec(Strict):
    """The model that writes synthetic data: an OpenAI-compatible endpoint or a local transformers model."""

    kind: Literal["endpoint", "local"] = "endpoint"
    """``endpoint``: any OpenAI-compatible chat-completions server; ``local``: a model loaded here (greedy, batched)."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """Endpoint base URL (up to and including ``/v1``)."""
    model: str = "base"
    """Model name sent to the endpoint; for ``local``, a model reference (alias, folder, .gguf, hub id)."""
    api_key_env: str | None = None
    """Environment variable that holds the endpoint's API key (never put the key in the recipe)."""
    concurrency: int = Field(8, ge=1)
    """Requests in flight at once."""
    rpm: int | None = Field(None, ge=1)
    """Requests per minute at most (None: no limit)."""
    timeout_s: float = Field(120.0, gt=0)
    """Per-request timeout in seconds."""
    max_retries: int = Field(5, ge=0)
    """Retries of a request after 429, 5xx, timeouts and connection errors."""
    backoff_s: float = Field(1.0, ge=0)
    """First retry delay; doubles each retry (with jitter); a ``Retry-After`` header wins."""
    json_mode: Literal["auto", "on", "off"] = "auto"
    """Ask for ``response_format: json_object``; ``auto`` drops it if the endpoint refuses it."""
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    """Sampling temperature (the local teacher decodes greedily)."""
    max_tokens: int = Field(768, ge=1)
    """Longest reply in tokens."""
    batch_size: int = Field(8, ge=1)
    """Prompts generated together by the local teacher."""
    price_prompt_per_1m: float | None = Field(None, ge=0)
    """Price per million prompt tokens, to report the cost (None: not reported)."""
    price_completion_per_1m: float | None = Field(None, ge=0)
    """Price per million completion tokens."""


class SynthFilterSpec(Strict):
    """Filters on synthesized pairs (after parsing and judging)."""

    min_chars: int = Field(2, ge=0)
    """Shortest question or answer in characters."""
    max_chars: int = Field(4000, ge=1)
    """Longest question or answer in characters."""
    answer_in_chunk: bool = False
    """Keep a document pair only if its answer appears in its chunk (extractive questions)."""
    near_duplicate: float | None = Field(0.9, gt=0.0, le=1.0)
    """Drop a question whose word-trigram Jaccard similarity to a kept one reaches this (None: exact dedup only)."""


class SynthSpec(Strict):
    """The ``synth`` stage: a teacher writes training records from documents or prompts."""

    task: Literal["answer", "qa_from_docs", "instruction_triples", "facts_from_docs", "entigraph"] = "qa_from_docs"
    """``answer``: answer each prompt; ``qa_from_docs``: question/answer pairs per chunk;
    ``instruction_triples``: instruction/input/output triples per chunk; ``facts_from_docs``: every fact of
    each chunk listed, then ``questions_per_fact`` questions asked for each (answered by the fact);
    ``entigraph``: the chunk's entities listed, then passages on how pairs of them relate (EntiGraph)."""
    teacher: TeacherSpec = TeacherSpec()
    """Who writes the data."""
    input_split: str | None = None
    """Split of the data stage to read (default: ``documents``; ``prompts`` for ``answer``)."""
    output_split: str = "synth"
    """Name of the split the records are published as (list it in ``sft.splits``)."""
    pairs_per_chunk: int = Field(3, ge=1)
    """Pairs (or triples) asked per document chunk."""
    questions_per_fact: int = Field(3, ge=1, le=20)
    """``facts_from_docs``: questions asked for each fact, in different wordings."""
    max_facts: int = Field(20, ge=1)
    """``facts_from_docs``: most facts kept per chunk."""
    entities: int = Field(8, ge=2)
    """``entigraph``: most entities asked for per chunk."""
    entity_pairs: int = Field(6, ge=1)
    """``entigraph``: pairs of a chunk's entities (a seeded sample) a relating passage is written for."""
    paraphrases: int = Field(0, ge=0)
    """Extra wordings asked for each question (facts are learned from several wordings)."""
    judge: bool = False
    """Have the teacher grade each pair's faithfulness to its chunk (1-5) and drop weak ones."""
    judge_min_score: int = Field(4, ge=1, le=5)
    """Least judge score kept."""
    templates: dict[str, str] = {}
    """Prompt templates to override, by name: qa_from_docs, paraphrase, instruction_triples, facts, fact_questions,
    entities, relate, judge, answer_system."""
    system_prompt: str | None = None
    """System prompt of the records written (default: ``data.system_prompts`` of the chunk's domain)."""
    limit: int | None = Field(None, ge=1)
    """Use at most this many input records (quick runs)."""
    filters: SynthFilterSpec = SynthFilterSpec()
    """Length, grounding and duplicate filters."""

    @property
    def on_every_process(self) -> bool:
        """A local teacher generates on every process of a multi-process run (prompts shared out);
        an endpoint is asked by the leader alone."""
        return self.teacher.kind == "local"
