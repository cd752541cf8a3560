"""Retrieval: BM25, dense and hybrid (reciprocal rank fusion) search, optional cross-encoder reranking.

Everything that retrieves (the index stage, ``lmforge ask``) goes through the small
:class:`Retriever` protocol, so a server-backed engine (Elasticsearch/OpenSearch, Qdrant, a
LanceDB server, ...) can replace the embedded LanceDB store: implement ``search`` and return
passages in the shape of :class:`Passage`. See docs/RAG.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict

from lmforge.rag.embed import Embedder
from lmforge.rag.store import LanceStore
from lmforge.rundir import require_done

Mode = Literal["bm25", "dense", "hybrid"]
MODES: tuple[Mode, ...] = ("bm25", "dense", "hybrid")


class Passage(TypedDict):
    """One retrieved chunk, as written to ``retrieved/<split>.jsonl`` and given to ``context_messages``."""

    id: str
    source: dict[str, Any]
    text: str
    score: float


class Retriever(Protocol):
    """Anything that returns the best passages for a batch of questions."""

    def search(self, queries: list[str], k: int, mode: Mode = "hybrid") -> list[list[Passage]]:
        """The ``k`` best passages for each query, best first."""
        ...


def rrf_fuse(rankings: list[list[str]], k_rrf: int = 60, weights: list[float] | None = None) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: ``score(d) = sum over rankings of weight / (k_rrf + rank(d))`` (rank from 1).

    A document high in several rankings beats one at the top of a single ranking; ``k_rrf`` damps
    the weight of the first places (60 is the value of Cormack et al., 2009); ``weights`` (default: 1
    each) let one ranking count more. Ties keep the order in which the documents were first seen, so the
    result is deterministic.

    Returns:
        (document id, fused score) pairs, best first.
    """
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (k_rrf + rank)
    first_seen = {doc_id: i for i, doc_id in enumerate(scores)}
    return sorted(scores.items(), key=lambda item: (-item[1], first_seen[item[0]]))


QUERY_CACHE_SIZE = 4096


@dataclass
class LanceRetriever:
    """The embedded engine: a :class:`LanceStore` searched with an :class:`Embedder`.

    Hybrid search takes the ``candidates`` best of each of BM25 and dense search and fuses them
    with RRF; with a ``reranker`` the ``rerank_candidates`` best fused passages are re-scored by a
    cross-encoder and the best ``k`` kept.
    """

    store: LanceStore
    embedder: Embedder
    candidates: int = 20
    k_rrf: int = 60
    reranker: Any = None
    rerank_candidates: int = 20
    keyword_weight: float = 1.0
    """Weight of the BM25 ranking in the fusion (the dense one counts 1)."""
    _query_vectors: dict[str, Any] = field(default_factory=dict, repr=False)
    """Embeddings of recent queries (at most ``QUERY_CACHE_SIZE``), oldest first."""

    def search(self, queries: list[str], k: int, mode: Mode = "hybrid") -> list[list[Passage]]:
        depth = max(k, self.candidates, self.rerank_candidates if self.reranker is not None else 0)
        results: list[list[dict[str, Any]]] = []
        vectors = self._vectors(queries) if mode != "bm25" else None
        for i, query in enumerate(queries):
            if mode == "bm25":
                rows = self.store.keyword(query, depth)
            elif mode == "dense":
                rows = self.store.dense(vectors[i], depth)
            else:
                rows = self._hybrid(query, vectors[i], depth)
            results.append(rows)
        if self.reranker is not None:
            results = [
                _rerank(self.reranker, q, rows[: self.rerank_candidates])
                for q, rows in zip(queries, results, strict=True)
            ]
        return [[to_passage(row) for row in rows[:k]] for rows in results]

    def _vectors(self, queries: list[str]) -> list[Any]:
        """Query embeddings, computed once per distinct query (evaluation asks the same ones per mode)."""
        missing = list(dict.fromkeys(q for q in queries if q not in self._query_vectors))
        for query, vector in zip(missing, self.embedder.embed(missing), strict=True):
            self._query_vectors[query] = vector
        found = [self._query_vectors[q] for q in queries]
        # Bounded: a long-running server sees endless distinct queries; drop the oldest first.
        while len(self._query_vectors) > QUERY_CACHE_SIZE:
            self._query_vectors.pop(next(iter(self._query_vectors)))
        return found

    def _hybrid(self, query: str, vector: Any, depth: int) -> list[dict[str, Any]]:
        dense = self.store.dense(vector, self.candidates)
        keyword = self.store.keyword(query, self.candidates)
        rows = {row["id"]: row for row in keyword + dense}
        rankings = [[r["id"] for r in dense], [r["id"] for r in keyword]]
        fused = rrf_fuse(rankings, self.k_rrf, [1.0, self.keyword_weight])
        return [{**rows[doc_id], "score": score} for doc_id, score in fused[:depth]]


def _rerank(reranker: Any, query: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Re-score ``rows`` with a cross-encoder on (query, heading + text); best first."""
    if not rows:
        return rows
    pairs = [(query, f"{row['heading']}\n{row['text']}" if row["heading"] else row["text"]) for row in rows]
    scores = reranker.predict(pairs, show_progress_bar=False)
    order = sorted(range(len(rows)), key=lambda i: -float(scores[i]))
    return [{**rows[i], "score": float(scores[i])} for i in order]


def to_passage(row: dict[str, Any]) -> Passage:
    """A store row as a passage of the hand-off format."""
    source: dict[str, Any] = {"path": row["path"], "line": int(row["line"]), "heading": row["heading"]}
    if row.get("page") not in (None, -1):
        source["page"] = int(row["page"])
    return Passage(id=row["id"], source=source, text=row["text"], score=round(float(row["score"]), 6))


def load_reranker(path: str | Path, device: str = "cpu") -> Any:
    """A sentence-transformers CrossEncoder from a local folder (offline)."""
    from lmforge.errors import ModelError
    from lmforge.models import hub_offline

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelError(f"reranker {str(path)!r} is not a local cross-encoder folder (no config.json)")
    with hub_offline():
        from sentence_transformers import CrossEncoder

        return CrossEncoder(str(folder), device=device, local_files_only=True)


def open_retriever(run_path: str | Path, needed_by: str = "ask") -> tuple[LanceRetriever, dict[str, Any]]:
    """The retriever of a run's finished index stage, and that stage's manifest."""
    from lmforge.rag.embed import load_embedder

    stage = require_done(run_path, "index", needed_by)
    outputs = stage.manifest["outputs"]
    spec = stage.manifest["config"]["index"]
    device = _device()
    reranker = load_reranker(spec["rerank"]["model"], device) if spec["rerank"]["model"] else None
    retriever = LanceRetriever(
        store=LanceStore.open_existing(outputs["store"]),
        embedder=load_embedder(outputs.get("embedder") or spec["embedding"]["model"], device),  # tuned, if it was
        candidates=spec["candidates"],
        k_rrf=spec["rrf_k"],
        reranker=reranker,
        rerank_candidates=spec["rerank"]["candidates"],
        keyword_weight=spec.get("keyword_weight", 1.0),  # indexes built before the setting fused 1:1
    )
    return retriever, stage.manifest


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
