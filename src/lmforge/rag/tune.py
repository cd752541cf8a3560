"""A retriever tuned to the documents: the embedding model fine-tuned on the domain's own questions
(``index.embedding.tune``).

* **Pairs.** Every chat record of the tuning splits that names its source document (``meta.<gold_key>``, or
  ``meta.source`` as the data stage's generated questions carry) gives one pair: its last question and the
  chunk of that document that holds its answer — the chunk containing the short answer (``meta.answer``),
  else the one sharing the most words with the record's reply. Records whose document is not among the
  chunks, or that name none, are counted and left out.
* **Hard negatives.** For each pair, the chunk the general embedder ranks highest for the question among the
  chunks of *other* documents: the passage a general model confuses with the right one.
* **Training.** sentence-transformers' multiple-negatives ranking loss (each question against its positive,
  its hard negative and every other chunk of the batch), batches without duplicate texts, seeded. The model
  is saved in ``index/embedder-<digest of the pairs and settings>``, so a changed question set never reuses
  vectors of an earlier model.

Questions of the evaluation sets are never pairs (the splits are the recipe's training ones), so the
index stage's recall@k on them measures the tuned retriever on questions it has not seen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Recipe
from lmforge.log import stage_log
from lmforge.rag.chunk import Chunk
from lmforge.rag.quality import WORD, from_document, gold_document, holds_answer
from lmforge.rag.raft import last_questions
from lmforge.records import Record, read_records, short_answer
from lmforge.rundir import StageDir, fingerprint_data, remove_tree, split_path, stage_folder


@dataclass(frozen=True)
class Pair:
    question: str
    positive: str
    document: str
    negative: str | None = None


def question_splits(recipe: Recipe, retrieval_sets: list[str]) -> dict[str, str]:
    """The splits the data stage wrote that are neither evaluated (``eval.sets``, the index's retrieval sets) nor
    indexed, by name: the recipe's own questions (``train``, ``qa``, the generated ones, ...). The embedder is
    tuned on them and the routing threshold calibrated on them, so neither ever sees an evaluation question."""
    written = StageDir.open(recipe.run_path(), "data").manifest.get("outputs", {}).get("splits", {})
    left_out = {*recipe.eval.sets, *recipe.index.documents, *retrieval_sets}
    return {name: path for name, path in written.items() if name not in left_out}


def training_records(recipe: Recipe, retrieval_sets: list[str]) -> list[Record]:
    """The chat records of ``index.embedding.tune.splits``, by default of :func:`question_splits`."""
    spec = recipe.index.embedding.tune
    names = spec.splits or list(question_splits(recipe, retrieval_sets))
    paths = [split_path(recipe.run_path(), name, needed_by="index.embedding.tune") for name in names]
    return [r for path in paths for r in read_records(path) if r["kind"] == "chat"]


def training_pairs(records: list[Record], chunks: list[Chunk], gold_key: str) -> tuple[list[Pair], dict[str, int]]:
    """One (question, answer chunk) pair per record that names a document among ``chunks``; counts."""
    counts: Counter[str] = Counter(records=len(records))
    by_document: dict[str, list[Chunk]] = {}
    pairs = []
    for record, question in zip(records, last_questions(records), strict=True):
        meta = record.get("meta") or {}
        target = gold_document(meta, gold_key)
        if not target or not question.strip():
            counts["no_document"] += 1
            continue
        if target not in by_document:
            by_document[target] = [c for c in chunks if from_document(c.path, target)]
        candidates = by_document[target]
        if not candidates:
            counts["document_not_indexed"] += 1
            continue
        reply = next((m["content"] for m in reversed(record["messages"]) if m["role"] == "assistant"), "")
        chunk = answer_chunk(candidates, short_answer(record) or "", reply)
        pairs.append(Pair(question.strip(), chunk.search_text(), target))
    counts["pairs"] = len(pairs)
    return pairs, dict(counts)


def answer_chunk(candidates: list[Chunk], answer: str, reply: str) -> Chunk:
    """The chunk holding ``answer`` (normalised), else the one sharing the most words with ``reply``."""
    holding = [c for c in candidates if holds_answer(c.text, answer)]
    if holding:
        return holding[0]
    words = set(WORD.findall(reply.lower()))
    return max(candidates, key=lambda c: len(words & set(WORD.findall(c.text.lower()))))


def with_hard_negatives(pairs: list[Pair], chunks: list[Chunk], embedder: Any, batch_size: int) -> list[Pair]:
    """Each pair with the chunk of another document that ``embedder`` ranks highest for its question."""
    import numpy as np

    texts = [c.search_text() for c in chunks]
    vectors = embedder.embed(texts, batch_size)
    questions = embedder.embed([p.question for p in pairs], batch_size)
    scores = np.asarray(questions) @ np.asarray(vectors).T
    found = []
    for pair, row in zip(pairs, scores, strict=True):
        negative = next((texts[i] for i in np.argsort(-row) if not from_document(chunks[i].path, pair.document)), None)
        found.append(Pair(pair.question, pair.positive, pair.document, negative))
    return found


def tune_embedder(
    recipe: Recipe, chunks: list[Chunk], general: Any, stage: StageDir, retrieval_sets: list[str]
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune the index's embedding model on the recipe's questions; its folder and what it trained on
    (``pairs``, ``no_document``, ``document_not_indexed``, ``seconds``, ...). Under a launcher the leader
    trains and every process gets the folder.

    Raises:
        StageError: no record names a document that the index holds.
    """
    import time

    from lmforge.errors import StageError

    spec = recipe.index.embedding.tune
    pairs, counts = training_pairs(training_records(recipe, retrieval_sets), chunks, recipe.index.gold_key)
    if spec.max_pairs is not None:
        pairs = pairs[: spec.max_pairs]
    if not pairs:
        raise StageError(
            f"index.embedding.tune found no question naming an indexed document ({counts}); it needs chat records "
            f"with meta.{recipe.index.gold_key} (or meta.source) pointing to a document of the index"
        )
    digest = fingerprint_data([[p.__dict__ for p in pairs], spec.model_dump(), str(general.path), recipe.seed])
    folder = stage.path(f"embedder-{digest[:12]}")
    counts.update(pairs=len(pairs), hard_negatives=spec.hard_negatives)
    if (folder / "config.json").is_file():
        return folder, counts

    def train(staging: Path) -> None:
        for old in folder.parent.glob("embedder-*"):
            remove_tree(old)
        batch = recipe.index.embedding.batch_size
        chosen = with_hard_negatives(pairs, chunks, general, batch) if spec.hard_negatives else pairs
        train_sentence_model(general.path, chosen, spec, recipe.seed, staging)

    started = time.perf_counter()
    stage_folder(folder, train)
    counts["seconds"] = round(time.perf_counter() - started, 1)
    stage_log("index").info(
        f"tuned the embedder on {len(pairs)} question/passage pairs"
        + (" with hard negatives" if spec.hard_negatives else "")
        + f" ({counts['seconds']:.0f}s)"
    )
    return folder, counts


def train_sentence_model(base: Path, pairs: list[Pair], spec: Any, seed: int, out: Path) -> None:
    """Train a fresh copy of the sentence-transformers model in ``base`` on ``pairs``; save it to ``out``."""
    import tempfile

    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.training_args import BatchSamplers
    from transformers import PrinterCallback

    from lmforge.models import hub_offline

    columns: dict[str, list[str]] = {"anchor": [p.question for p in pairs], "positive": [p.positive for p in pairs]}
    if all(p.negative is not None for p in pairs):
        columns["negative"] = [p.negative for p in pairs]  # type: ignore[misc]
    with hub_offline(), tempfile.TemporaryDirectory() as work:
        model = SentenceTransformer(str(base), device="cpu", local_files_only=True)
        args = SentenceTransformerTrainingArguments(
            output_dir=work,
            num_train_epochs=spec.epochs,
            per_device_train_batch_size=spec.batch_size,
            learning_rate=spec.lr,
            warmup_steps=0.1,  # a share of the steps (transformers 5)
            seed=seed,
            data_seed=seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            save_strategy="no",
            report_to=[],
            logging_steps=10,
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict(columns),
            loss=losses.MultipleNegativesRankingLoss(model),
        )
        trainer.remove_callback(PrinterCallback)  # the index stage says what it did in one line
        trainer.train()
    model.save(str(out), create_model_card=False)


__all__ = ["Pair", "answer_chunk", "training_pairs", "tune_embedder", "with_hard_negatives"]
