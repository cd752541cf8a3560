"""The retriever tuned to the documents: pairs point at the passage holding the answer, hard negatives come from
other documents, tuning pulls questions toward their passages (real all-MiniLM-L6-v2, offline), and the index
stage builds, records and serves the tuned model."""

from __future__ import annotations

import numpy as np
import pytest
from test_rag_index import HARBOUR, harbour_records
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.config import EmbedTuneSpec, shipped_recipe
from lmforge.rag import tune
from lmforge.rag.chunk import chunk_records
from lmforge.rag.embed import load_embedder
from lmforge.rag.retrieve import open_retriever
from lmforge.records import chat_record
from lmforge.rundir import StageDir

TRAINING = {
    "berth-fees": ["What is the daily fee for a berth?", "How is mooring at a public quay charged?"],
    "pilotage": ["When is a licensed pilot required?", "Do long ships need someone to guide them in?"],
    "speed": ["What is the speed limit behind the breakwater?", "Is there a knot limit in the harbour?"],
    "waste": ["What must be done with oily residues?", "Can bilge water be dumped at sea?"],
    "hours": ["What are the office hours of the harbour master?", "Until when is the harbour office open?"],
    "ferries": ["Who has priority at the northern terminal?", "Which ferries go first at the north terminal?"],
    "fishing": ["Where is a fishing permit sold?", "What do anglers on the piers need?"],
    "cargo": ["Where is flammable gas unloaded?", "When may explosives be landed?"],
    "fines": ["How large can a harbour fine be?", "What happens to those who break the rules?"],
    "anchoring": ["Where is anchoring forbidden?", "May a ship anchor in the approach channel?"],
}


def question(text: str, document: str, answer: str = "") -> dict:
    messages = [{"role": "user", "content": text}, {"role": "assistant", "content": answer or "It says so."}]
    meta = {"article": document, "answer": answer} if answer else {"article": document}
    return chat_record(messages, {"path": "qa.jsonl", "line": 1}, None, meta)


@pytest.fixture(scope="module")
def general():
    return load_embedder("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def chunks(general):
    return chunk_records(harbour_records(), max_tokens=128, overlap=16, count_tokens=general.count_tokens)


def test_pairs_point_at_the_passage_holding_the_answer(chunks):
    records = [
        question("How much per day?", "berth-fees", "3 crowns"),
        question("Who pays?", "harbour/berth-fees.md"),  # no short answer: the reply's words decide
        question("What about the moon?", "moon"),  # a document the index does not hold
        chat_record([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], {"path": "x"}),
    ]
    pairs, counts = tune.training_pairs(records, chunks, "article")
    assert [p.document for p in pairs] == ["berth-fees", "harbour/berth-fees.md"]
    assert "3 crowns per metre" in pairs[0].positive
    assert counts == {"records": 4, "document_not_indexed": 1, "no_document": 1, "pairs": 2}


def test_hard_negatives_come_from_other_documents(chunks, general):
    pairs, _ = tune.training_pairs([question("What is the speed limit?", "speed")], chunks, "article")
    [mined] = tune.with_hard_negatives(pairs, chunks, general, 16)
    assert mined.negative is not None and "knots" not in mined.negative


def test_tuning_pulls_questions_toward_their_own_passages(tmp_path, chunks, general):
    records = [question(text, name) for name, texts in TRAINING.items() for text in texts]
    pairs, _ = tune.training_pairs(records, chunks, "article")
    pairs = tune.with_hard_negatives(pairs, chunks, general, 16)
    spec = EmbedTuneSpec(enabled=True, epochs=4, lr=1e-4, batch_size=8)
    tune.train_sentence_model(general.path, pairs, spec, 0, tmp_path / "tuned")
    tuned = load_embedder(str(tmp_path / "tuned"))

    def margin(embedder) -> float:
        """Mean of (similarity to the right passage - the best wrong one) over the training questions."""
        passages = embedder.embed([c.search_text() for c in chunks])
        scores = embedder.embed([p.question for p in pairs]) @ passages.T
        right = [next(i for i, c in enumerate(chunks) if c.search_text() == p.positive) for p in pairs]
        wrong = np.where(np.eye(len(chunks))[right] > 0, -np.inf, scores).max(axis=1)
        return float(np.mean(scores[np.arange(len(pairs)), right] - wrong))

    assert margin(tuned) > margin(general) + 0.05
    assert set(HARBOUR) == set(TRAINING)


def test_the_index_stage_tunes_records_and_serves_the_tuned_model(tmp_path):
    args = ["run", str(shipped_recipe("demo-rag")), "--run-dir", str(tmp_path / "runs")]
    overrides = [
        "stages=[data, index]", "index.embedding.tune.enabled=true", "index.embedding.tune.max_pairs=48",
        "index.raft.enabled=false",
    ]  # fmt: skip
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    run = tmp_path / "runs" / "demo-rag"
    stage = StageDir.open(run, "index")
    metrics, outputs = stage.manifest["metrics"], stage.manifest["outputs"]
    assert metrics["tune"]["pairs"] == 48 and metrics["tune"]["hard_negatives"] is True
    assert outputs["embedder"].startswith(str(run / "index" / "embedder-"))
    assert "test" in metrics["retrieval"] and "dense" in metrics["retrieval"]["test"]
    retriever, _ = open_retriever(run)
    assert str(retriever.embedder.path) == outputs["embedder"]  # queries are embedded by the tuned model
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "unchanged" in again.output


def test_answer_recall_looks_for_the_answer_in_the_passages():
    from lmforge.rag.quality import holds_answer, retrieval_scores

    doc = {"source": {"path": "a.md"}}
    ranked = [
        [{**doc, "text": "Nothing here."}, {**doc, "text": "The fee is 3 crowns per metre."}],
        [{**doc, "text": "Ships over 80 metres take a pilot."}],
        [{**doc, "text": "No answer."}],
    ]
    scores = retrieval_scores(ranked, ["a", "a", "a"], [1, 2], ["3 crowns", "80 metres", None])
    assert scores["recall@1"] == 1.0  # every first passage is from the right document
    assert scores["answer_n"] == 2 and scores["answer_recall@1"] == 0.5 and scores["answer_recall@2"] == 1.0
    assert holds_answer("Fact 12 is here", "12") and not holds_answer("Fact 123 is here", "12")
