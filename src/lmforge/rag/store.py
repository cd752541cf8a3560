"""The embedded chunk store: one LanceDB table (chunks, metadata and vectors) plus its BM25 index.

LanceDB keeps the table as Lance files in a folder inside the run directory, so the index
survives the process, is read by ``lmforge ask`` later and needs no server. Updates are per
document: rows carry their document's key and content fingerprint, so a changed document is
deleted and re-embedded alone and an unchanged one is kept as it is.

Vector search is exact (a flat scan with cosine distance), which is fast up to a few hundred
thousand chunks on a CPU; beyond that, use a server-backed engine (see docs/RAG.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import ModelError, StageError
from lmforge.rag.chunk import Chunk

if TYPE_CHECKING:
    import numpy as np

TABLE = "chunks"
COLUMNS = ["id", "doc_key", "path", "line", "page", "heading", "text"]
"""Columns returned by searches (everything but the vector and the indexed text)."""


@dataclass
class SyncReport:
    """What an update of the store did."""

    documents: int
    reused_documents: int
    embedded_documents: int
    removed_documents: int
    embedded_chunks: int
    embed_seconds: float


def _lancedb() -> Any:
    # LanceDB logs a warning on stderr for every new dataset; keep the terminal for our own messages.
    os.environ.setdefault("LANCE_LOG", "error")
    try:
        import lancedb
    except ImportError as exc:
        raise ModelError("the index needs lancedb, which is not installed: pip install lancedb") from exc
    return lancedb


class LanceStore:
    """Chunks with their embeddings in a LanceDB table at ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = _lancedb().connect(str(self.path))
        self.table: Any = self.db.open_table(TABLE) if TABLE in self.db.list_tables().tables else None

    @classmethod
    def open_existing(cls, path: str | Path) -> LanceStore:
        """Open a store that must already hold chunks (for ``ask`` and retrieval)."""
        store = cls(path)
        if store.table is None:
            raise StageError(f"no chunk index in {path}; run the recipe's index stage first")
        return store

    def count(self) -> int:
        return 0 if self.table is None else int(self.table.count_rows())

    def document_fingerprints(self) -> dict[str, str]:
        """Fingerprint of every document in the store, by document key."""
        if self.table is None:
            return {}
        rows = self.table.search().select(["doc_key", "doc_fingerprint"]).limit(None).to_arrow().to_pylist()
        return {row["doc_key"]: row["doc_fingerprint"] for row in rows}

    def pending(
        self, chunks: list[Chunk], fingerprints: dict[str, str], stored: dict[str, str] | None = None
    ) -> list[Chunk]:
        """The chunks :meth:`sync` would embed: those of documents that are new or changed."""
        stored = self.document_fingerprints() if stored is None else stored
        return [c for c in chunks if stored.get(c.doc_key) != fingerprints[c.doc_key]]

    def sync(
        self,
        chunks: list[Chunk],
        fingerprints: dict[str, str],
        embed: Callable[[list[str]], np.ndarray],
        on_embedded: Callable[[int], Any] | None = None,
    ) -> SyncReport:
        """Make the store hold exactly ``chunks``, embedding only documents that are new or changed.

        Args:
            chunks: every chunk of the corpus, each with its ``doc_key``.
            fingerprints: content fingerprint per document key (covers the text and the chunk and
                embedding settings, so changing those re-embeds everything).
            embed: texts -> unit-length vectors (n, dim).
            on_embedded: called with the number of chunks embedded after each batch.
        """
        import time

        stored = self.document_fingerprints()
        stale = sorted(key for key, fp in stored.items() if fingerprints.get(key) != fp)
        todo = self.pending(chunks, fingerprints, stored)
        started = time.perf_counter()
        rows: list[dict[str, Any]] = []
        batch = 256
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            vectors = embed([c.search_text() for c in part])
            rows += [_row(c, fingerprints[c.doc_key], v) for c, v in zip(part, vectors, strict=True)]
            if on_embedded is not None:
                on_embedded(len(part))
        seconds = time.perf_counter() - started
        if self.table is not None and stale:
            self.table.delete(_in_list("doc_key", stale))
        if rows:
            if self.table is None:
                self.table = self.db.create_table(TABLE, data=rows)
            else:
                self.table.add(rows)
        if self.table is not None and (rows or stale):
            self._index_text()
        changed = {c.doc_key for c in todo}
        return SyncReport(
            documents=len(fingerprints),
            reused_documents=len(fingerprints) - len(changed),
            embedded_documents=len(changed),
            removed_documents=len(set(stale) - changed),
            embedded_chunks=len(todo),
            embed_seconds=round(seconds, 3),
        )

    def _index_text(self) -> None:
        """(Re)build the BM25 index: lower-cased, stemmed English words, stop words removed."""
        from lancedb.index import FTS

        config = FTS(language="English", stem=True, remove_stop_words=True, lower_case=True, ascii_folding=True)
        self.table.create_index("search_text", config=config, replace=True)

    def dense(self, vector: Any, k: int) -> list[dict[str, Any]]:
        """The ``k`` chunks nearest to ``vector`` by cosine similarity (``score`` = similarity)."""
        hits = self.table.search(vector, vector_column_name="vector").distance_type("cosine")
        rows = hits.select([*COLUMNS, "_distance"]).limit(k).to_list()
        for row in rows:
            row["score"] = 1.0 - float(row.pop("_distance"))
        return rows

    def keyword(self, query: str, k: int) -> list[dict[str, Any]]:
        """The ``k`` best BM25 matches of ``query`` (``score`` = BM25 score); none when no word matches."""
        if not query.strip():
            return []
        hits = self.table.search(query, query_type="fts", fts_columns="search_text")
        rows = hits.select([*COLUMNS, "_score"]).limit(k).to_list()
        for row in rows:
            row["score"] = float(row.pop("_score"))
        return rows

    def all_chunks(self) -> list[dict[str, Any]]:
        """Every stored chunk (without vectors), in storage order."""
        return self.table.search().select(COLUMNS).limit(None).to_arrow().to_pylist()


def _row(chunk: Chunk, fingerprint: str, vector: Any) -> dict[str, Any]:
    return {
        "id": chunk.id,
        "doc_key": chunk.doc_key,
        "doc_fingerprint": fingerprint,
        "path": chunk.path,
        "line": chunk.line,
        "page": chunk.page if chunk.page is not None else -1,
        "heading": chunk.heading,
        "text": chunk.text,
        "search_text": chunk.search_text(),
        "vector": vector.tolist(),
    }


def _in_list(column: str, values: list[str]) -> str:
    """A SQL ``IN`` filter with the values quoted (single quotes doubled)."""
    quoted = ", ".join("'" + value.replace("'", "''") + "'" for value in values)
    return f"{column} IN ({quoted})"
