"""The ``index`` stage: chunk the documents, embed them into the store, retrieve for the eval sets and RAFT.

setup (documents from the data stage, the embedding model) -> work (chunk, update the store for
new and changed documents only, retrieve, score retrieval) -> save. Outputs in ``runs/<run>/index/``:

* ``lancedb/``: the chunk table with vectors and its BM25 index (see :mod:`lmforge.rag.store`);
* ``chunks.jsonl``: every chunk with its source (path, line, heading), for inspection;
* ``retrieved/<split>.jsonl``: for every record of each retrieval set,
  ``{"id": <record id>, "passages": [{"id", "source", "text", "score"}, ...], "relevance": <cosine>}``
  (the eval stage's input; ``relevance`` decides routed variants, see :mod:`lmforge.rag.route`);
* ``retrieval_eval.json``: recall@k and MRR per set and mode (bm25, dense, hybrid);
* ``splits/<raft split>.jsonl``: RAFT training examples when ``index.raft.enabled``;
* the manifest's ``outputs.route``: the routing threshold calibrated on the training questions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import IndexSpec, Recipe
from lmforge.distributed import gather_shares, is_leader, leader_decides, share
from lmforge.errors import StageError
from lmforge.rag.chunk import Chunk, chunk_records, document_key
from lmforge.rag.embed import Embedder, load_embedder
from lmforge.rag.quality import gold_document, retrieval_scores
from lmforge.rag.raft import (
    build_generated_raft,
    build_raft_records,
    closed_book_copies,
    generated_questions,
    last_questions,
    main_domain,
    raft_cloze,
    raft_search_depth,
)
from lmforge.rag.retrieve import MODES, LanceRetriever, load_reranker
from lmforge.rag.route import GENERAL_SOURCE, calibrate, general_questions, relevance, split_questions
from lmforge.rag.store import LanceStore, SyncReport
from lmforge.rag.tune import question_splits, tune_embedder
from lmforge.records import Record, read_records, short_answer
from lmforge.rundir import StageDir, atomic_write_json, atomic_write_jsonl, fingerprint_data, split_path


@dataclass
class IndexResult:
    metrics: dict[str, Any]
    skipped: bool


def retrieval_sets(recipe: Recipe) -> list[str]:
    """Splits to write ``retrieved/<split>.jsonl`` for: ``index.sets``, else those of ``eval.sets`` that exist."""
    if recipe.index.sets is not None:
        return list(recipe.index.sets)
    written = StageDir.open(recipe.run_path(), "data").manifest.get("outputs", {}).get("splits", {})
    return [name for name in recipe.eval.sets if name in written]


def _generated_split(run_path: Path, recipe: Recipe) -> list[Record]:
    """The data stage's questions about the documents, when it wrote them (``data.questions``)."""
    written = StageDir.open(run_path, "data").manifest.get("outputs", {}).get("splits", {})
    path = written.get(recipe.data.questions.split)
    return list(read_records(path)) if path else []


def run(recipe: Recipe) -> IndexResult:
    """Build or update the index of the recipe's documents; retrieve for its eval sets; write RAFT data."""
    spec = recipe.index
    run_path = recipe.run_path()
    stage = StageDir.open(run_path, "index")
    document_paths = [split_path(run_path, split, needed_by="index") for split in spec.documents]  # data is done
    sets = retrieval_sets(recipe)
    set_paths = {name: split_path(run_path, name, needed_by="index") for name in sets}
    raft_path = split_path(run_path, spec.raft.source_split, needed_by="index") if spec.raft.enabled else None
    config = {"index": spec.model_dump(mode="json"), "sets": sets, "seed": recipe.seed}
    if spec.raft.enabled:
        config["raft_closed_book"] = closed_book_copies(recipe)  # follows sft.splits when unset
    inputs = {"data": StageDir.open(run_path, "data").fingerprint}
    fingerprint = fingerprint_data([config, inputs])
    if stage.is_done(fingerprint):
        return IndexResult(metrics=stage.manifest["metrics"], skipped=True)

    stage.start(fingerprint, config, inputs)
    started = time.perf_counter()
    embedder = load_embedder(spec.embedding.model, _device())
    documents = [r for path in document_paths for r in read_records(path) if r["kind"] == "text"]
    if not documents:
        raise StageError(
            f"the index stage found no text records in the splits {spec.documents}; add documents to the recipe "
            "(a data source of .md/.txt/.pdf files with `split: documents`) or set index.documents"
        )
    budget = min(spec.chunk.max_tokens, embedder.max_tokens - 2)  # the [CLS]/[SEP] pair takes two
    chunks = chunk_records(documents, budget, spec.chunk.overlap, embedder.count_tokens)
    tuned = None
    if spec.embedding.tune.enabled:
        folder, tuned = tune_embedder(recipe, chunks, embedder, stage, sets)
        embedder = load_embedder(str(folder), _device())
    store = LanceStore(stage.path("lancedb")) if is_leader() else None
    fingerprints = _document_fingerprints(documents, spec, str(embedder.path.name) if tuned else None)
    report = _update_store(store, embedder, chunks, fingerprints, spec)
    if store is None or report is None:  # a follower: its share of the embedding is done
        return IndexResult(metrics={}, skipped=False)
    index_seconds = time.perf_counter() - started

    retriever = LanceRetriever(store, embedder, spec.candidates, spec.rrf_k, keyword_weight=spec.keyword_weight)
    reranked = None
    if spec.rerank.model:
        reranker = load_reranker(spec.rerank.model, _device())
        reranked = LanceRetriever(
            store, embedder, spec.candidates, spec.rrf_k, reranker, spec.rerank.candidates, spec.keyword_weight
        )
    served = reranked or retriever
    outputs: dict[str, Any] = {"store": str(stage.path("lancedb")), "retrieved": {}, "splits": {}}
    if tuned is not None:
        outputs["embedder"] = str(embedder.path)
    quality: dict[str, Any] = {}
    for name, path in set_paths.items():
        outputs["retrieved"][name] = _retrieve_set(name, path, stage, spec, retriever, reranked, quality)

    raft_stats = None
    if raft_path is not None:
        raft_records, raft_stats = _raft(recipe, raft_path, served, chunks, main_domain(documents))
        outputs["splits"][spec.raft.split] = str(stage.path("splits", f"{spec.raft.split}.jsonl"))
        atomic_write_jsonl(outputs["splits"][spec.raft.split], raft_records)

    outputs["route"] = _calibrate_route(recipe, retriever, sets)

    outputs["chunks"] = str(stage.path("chunks.jsonl"))
    atomic_write_jsonl(outputs["chunks"], ({"id": c.id, "source": c.source(), "text": c.text} for c in chunks))
    outputs["retrieval_eval"] = str(stage.path("retrieval_eval.json"))
    atomic_write_json(outputs["retrieval_eval"], quality)
    outputs["domain"] = main_domain(documents)
    metrics = _metrics(report, len(chunks), index_seconds, quality, raft_stats)
    metrics["route"] = outputs["route"]
    if tuned is not None:
        metrics["tune"] = tuned
    stage.finish(metrics, outputs=outputs)
    return IndexResult(metrics=metrics, skipped=False)


def _retrieve_set(
    name: str,
    path: Path,
    stage: StageDir,
    spec: IndexSpec,
    retriever: LanceRetriever,
    reranked: LanceRetriever | None,
    quality: dict[str, Any],
) -> str:
    """Retrieve for one evaluation set (its retrieval quality added to ``quality``); returns the file written."""
    records = list(read_records(path))
    depth = max([spec.top_k, *spec.eval_k])
    ranked = evaluate_retrieval(name, records, retriever, reranked, spec, depth, quality)
    if spec.mode not in ranked:
        ranked[spec.mode] = (reranked or retriever).search(last_questions(records), depth, spec.mode)
    scores = relevance(retriever, last_questions(records))
    rows = [
        {"id": r["id"], "passages": p[: spec.top_k], "relevance": score}
        for r, p, score in zip(records, ranked[spec.mode], scores, strict=True)
    ]
    written = str(stage.path("retrieved", f"{name}.jsonl"))
    atomic_write_jsonl(written, rows)
    return written


def _raft(
    recipe: Recipe, raft_path: Path, served: LanceRetriever, chunks: list[Chunk], domain: Any
) -> tuple[list[Record], dict[str, Any]]:
    """RAFT examples of the source split's questions (and cloze and generated ones), with their statistics."""
    spec = recipe.index
    records = [r for r in read_records(raft_path) if r["kind"] == "chat"]
    records += raft_cloze(chunks, spec, recipe, domain)
    retrieved = served.search(last_questions(records), raft_search_depth(spec), spec.mode)
    raft_records, raft_stats = build_raft_records(
        records, retrieved, chunks, spec.raft, spec.gold_key, recipe.seed, closed_book_copies(recipe)
    )
    generated = generated_questions(recipe, {recipe.data.questions.split: _generated_split(recipe.run_path(), recipe)})
    if generated:
        search = partial(served.search, mode=spec.mode)
        more, raft_stats["generated"] = build_generated_raft(recipe, generated, search, chunks)
        raft_records += more
    if raft_stats["examples"] == raft_stats["closed_book"] and not generated:  # no example with passages
        raise StageError(
            f"RAFT built no example from the split {spec.raft.source_split!r} ({raft_stats['skipped']}); its chat "
            f"records need meta.{spec.gold_key} (or a source / document / doc column) naming a document of "
            "the index, and an answer found in that document"
        )
    return raft_records, raft_stats


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _document_fingerprints(documents: list[Record], spec: IndexSpec, tuned: str | None = None) -> dict[str, str]:
    """Per document key: a fingerprint of its text, its source and the chunking and embedding settings (and the
    tuned embedder's folder name, which names what it was trained on)."""
    settings = [spec.chunk.model_dump(), spec.embedding.model] + ([tuned] if tuned else [])
    fingerprints: dict[str, str] = {}
    for record in documents:
        key = document_key(record)
        if key in fingerprints:
            raise StageError(
                f"two document records come from the same place {key!r}; the index needs one record per "
                "document (or section): remove the duplicate source or give each record its own source line"
            )
        fingerprints[key] = fingerprint_data([record["text"], record["source"], record.get("meta"), settings])
    return fingerprints


def _update_store(
    store: LanceStore | None, embedder: Embedder, chunks: list[Chunk], fingerprints: dict[str, str], spec: IndexSpec
) -> SyncReport | None:
    """Embed the new or changed documents' chunks and update the store (the leader's; None elsewhere).

    Under a launcher every process embeds a share of the batches and the leader, which alone holds
    the store, gathers the vectors and writes them; the others return None.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    pending = leader_decides([c.id for c in store.pending(chunks, fingerprints)] if store is not None else None)
    by_id = {c.id: c for c in chunks}
    texts = [by_id[chunk_id].search_text() for chunk_id in pending]
    started = time.perf_counter()
    with Progress(
        TextColumn("index: embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    ) as progress:
        task = progress.add_task("embed", total=len(texts))
        batches = share([texts[start : start + EMBED_BATCH] for start in range(0, len(texts), EMBED_BATCH)])
        vectors = []
        for batch in batches:
            vectors.append(embedder.embed(batch, spec.embedding.batch_size))
            progress.advance(task, len(batch))
        vectors = gather_shares(vectors)
    seconds = time.perf_counter() - started
    if store is None:
        return None
    by_text = {text: vector for text, vector in zip(texts, (v for part in vectors for v in part), strict=True)}
    report = store.sync(chunks, fingerprints, lambda batch: np.stack([by_text[text] for text in batch]))
    report.embed_seconds = round(seconds, 3)
    return report


EMBED_BATCH = 256
"""Texts per unit of embedding work (what one process embeds at a time under a launcher)."""


def evaluate_retrieval(
    name: str,
    records: list[Record],
    retriever: LanceRetriever,
    reranked: LanceRetriever | None,
    spec: IndexSpec,
    depth: int,
    quality: dict[str, Any],
) -> dict[str, list[list[dict[str, Any]]]]:
    """Retrieve for every record in every mode; score the records that name their gold document.

    Returns the passages per mode (``hybrid+rerank`` keyed as the configured mode when reranking).
    """
    questions = last_questions(records)
    targets = [gold_document(record.get("meta"), spec.gold_key) for record in records]
    scored = [i for i, target in enumerate(targets) if target and questions[i]]
    ranked: dict[str, list[list[dict[str, Any]]]] = {}
    modes: list[str] = list(MODES) if scored else [spec.mode]
    for mode in modes:
        ranked[mode] = retriever.search(questions, depth, mode)  # type: ignore[arg-type]
    if reranked is not None:
        ranked["rerank"] = reranked.search(questions, depth, spec.mode)
    if scored:
        answers = [short_answer(records[i]) for i in scored]
        quality[name] = {
            mode: retrieval_scores(
                [ranked[mode][i] for i in scored], [targets[i] for i in scored], spec.eval_k, answers
            )
            for mode in ranked
        }
    if reranked is not None:
        ranked[spec.mode] = ranked.pop("rerank")
    return ranked


def _calibrate_route(recipe: Recipe, retriever: LanceRetriever, retrieval_sets: list[str]) -> dict[str, Any] | None:
    """The routing threshold (:mod:`lmforge.rag.route`), calibrated on the questions of the data stage's
    splits that are neither evaluated nor indexed; None when none of them names a source document."""
    records = [r for path in question_splits(recipe, retrieval_sets).values() for r in read_records(path)]
    in_domain, general = split_questions(records, recipe.index.gold_key)
    source = "the recipe's questions without a source document"
    if in_domain and not general:
        general, source = general_questions(), f"lmforge's general prompts ({GENERAL_SOURCE})"
    calibration = calibrate(relevance(retriever, in_domain), relevance(retriever, general))
    return None if calibration is None else {**calibration, "general_from": source}


def _metrics(
    report: SyncReport, chunks: int, seconds: float, quality: dict[str, Any], raft: dict[str, Any] | None
) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "documents": report.documents,
        "chunks": chunks,
        "embedded_documents": report.embedded_documents,
        "reused_documents": report.reused_documents,
        "removed_documents": report.removed_documents,
        "embedded_chunks": report.embedded_chunks,
        "embed_seconds": report.embed_seconds,
        "chunks_per_s": round(report.embedded_chunks / report.embed_seconds, 1) if report.embed_seconds else None,
        "index_seconds": round(seconds, 2),
        "retrieval": quality,
    }
    if raft is not None:
        metrics["raft"] = raft
    return metrics


def summary(result: IndexResult, seconds: float) -> str:
    """The line the pipeline prints after the stage."""
    m = result.metrics
    hybrid = {name: scores["hybrid"] for name, scores in m["retrieval"].items() if "hybrid" in scores}
    recall = [f"{name} {s['recall@5']:.0%}" for name, s in hybrid.items() if "recall@5" in s]
    shown = f"; hybrid recall@5: {', '.join(recall)}" if recall else ""
    raft = f"; raft {m['raft']['examples']} examples" if "raft" in m else ""
    return (
        f"[green]✔ index[/green] {m['chunks']} chunks of {m['documents']} documents, "
        f"{m['embedded_chunks']} embedded ({seconds:.0f}s){shown}{raft}"
    )
