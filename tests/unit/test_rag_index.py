"""The store and the retriever: retrieval quality on a small fixture (real all-MiniLM-L6-v2, offline),
persistence across processes, and per-document re-embedding."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from lmforge.rag.chunk import chunk_records
from lmforge.rag.embed import load_embedder, resolve_embedding_model
from lmforge.rag.quality import retrieval_scores
from lmforge.rag.retrieve import LanceRetriever
from lmforge.rag.store import LanceStore
from lmforge.records import text_record

HARBOUR = {
    "berth-fees": "# Berth fees\n\nA vessel moored at a public quay pays 3 crowns per metre of length per day.",
    "pilotage": "# Pilotage\n\nShips longer than 80 metres must take a licensed pilot aboard before entering the inner "
    "channel.",
    "speed": "# Speed limit\n\nInside the breakwater no boat may exceed 6 knots, to protect moored craft from wash.",
    "waste": "# Waste\n\nBilge water and oily residues must be handed to the reception barge; dumping them at sea is "
    "forbidden.",
    "hours": "# Opening hours\n\nThe harbour master's office is open from 7 in the morning until 19 in the evening.",
    "ferries": "# Passenger ferries\n\nFerries carrying more than 50 passengers have priority at the northern "
    "terminal.",
    "fishing": "# Fishing permits\n\nAngling from the piers requires a yearly permit sold at the tourist office.",
    "cargo": "# Hazardous cargo\n\nExplosives and flammable gas may only be unloaded at the isolated east jetty, at "
    "night.",
    "fines": "# Penalties\n\nBreaking these rules is punished with a fine of up to 2,000 crowns.",
    "anchoring": "# Anchoring\n\nDropping anchor in the approach fairway is prohibited except in an emergency.",
}
QUESTIONS = [
    ("How much does it cost per day to tie up a boat at a public quay?", "berth-fees"),
    ("Which ships need a pilot?", "pilotage"),
    ("How fast may I sail inside the breakwater?", "speed"),
    ("Where do I get rid of oily bilge water?", "waste"),
    ("When is the harbour master's office open?", "hours"),
    ("Which vessels get priority at the northern terminal?", "ferries"),
    ("Do I need a licence to fish from the pier?", "fishing"),
    ("Where can explosives be unloaded?", "cargo"),
    ("What is the maximum penalty for breaking the harbour rules?", "fines"),
    ("Can I anchor in the fairway?", "anchoring"),
    ("What is the velocity cap for boats near the moorings?", "speed"),
    ("Who must have a navigation expert on board to enter the channel?", "pilotage"),
]


def harbour_records(texts: dict[str, str] = HARBOUR) -> list[dict]:
    return [text_record(text, {"path": f"harbour/{name}.md", "line": 1}) for name, text in texts.items()]


def fingerprints(records: list[dict]) -> dict[str, str]:
    return {r["source"]["path"]: hashlib.sha1(r["text"].encode()).hexdigest() for r in records}


@pytest.fixture(scope="module")
def embedder():
    return load_embedder("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def harbour_store(tmp_path_factory, embedder):
    records = harbour_records()
    chunks = chunk_records(records, max_tokens=128, overlap=16, count_tokens=embedder.count_tokens)
    store = LanceStore(tmp_path_factory.mktemp("harbour") / "lancedb")
    report = store.sync(chunks, fingerprints(records), embedder.embed)
    assert report.embedded_chunks == len(chunks) == 10
    return store


def test_packaged_embedding_model_resolves_offline(embedder):
    assert (resolve_embedding_model("all-minilm-l6-v2") / "config.json").is_file()
    assert embedder.dimension == 384
    vectors = embedder.embed(["a harbour", "a port"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_retrieval_quality_on_a_small_fixture(harbour_store, embedder):
    retriever = LanceRetriever(harbour_store, embedder, candidates=10)
    targets = [target for _, target in QUESTIONS]
    scores = {}
    for mode in ("bm25", "dense", "hybrid"):
        ranked = retriever.search([q for q, _ in QUESTIONS], k=3, mode=mode)
        assert all(len(passages) <= 3 for passages in ranked)
        scores[mode] = retrieval_scores(ranked, targets, ks=[1, 3])
    # Chance is 0.1 at rank 1; several questions share no word with their document but a stem.
    assert scores["dense"]["recall@1"] >= 0.9, scores
    assert scores["bm25"]["recall@3"] >= 0.75, scores
    assert scores["hybrid"]["recall@1"] >= 0.9 and scores["hybrid"]["recall@3"] == 1.0, scores
    passage = retriever.search(["Where can explosives be unloaded?"], k=1)[0][0]
    assert passage["id"] == "harbour/cargo.md#0"
    assert passage["source"] == {"path": "harbour/cargo.md", "line": 3, "heading": "Hazardous cargo"}
    assert passage["text"].startswith("Explosives") and passage["score"] > 0


def test_bm25_finds_exact_terms_and_nothing_for_unknown_words(harbour_store):
    hits = harbour_store.keyword("reception barge", 5)
    assert hits[0]["id"] == "harbour/waste.md#0"
    assert harbour_store.keyword("zyzzyva", 5) == []
    assert harbour_store.keyword("   ", 5) == []


def test_store_persists_across_processes(harbour_store, embedder, tmp_path):
    vector = embedder.embed(["Which ships need a pilot?"])[0]
    expected_dense = [row["id"] for row in harbour_store.dense(vector, 3)]
    expected_bm25 = [row["id"] for row in harbour_store.keyword("pilot channel", 3)]
    (tmp_path / "vector.json").write_text(json.dumps(vector.tolist()))
    script = (
        "import json, sys\n"
        "from lmforge.rag.store import LanceStore\n"
        "store = LanceStore.open_existing(sys.argv[1])\n"
        "vector = json.load(open(sys.argv[2]))\n"
        "print(json.dumps({'count': store.count(), 'dense': [r['id'] for r in store.dense(vector, 3)],"
        " 'bm25': [r['id'] for r in store.keyword('pilot channel', 3)]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(harbour_store.path), str(tmp_path / "vector.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"count": 10, "dense": expected_dense, "bm25": expected_bm25}
    assert expected_dense[0] == "harbour/pilotage.md#0"


def fake_embed(calls: list[str]):
    """Deterministic unit vectors from a hash of the text; records what it was asked to embed."""

    def embed(texts: list[str]) -> np.ndarray:
        calls.extend(texts)
        digests = [hashlib.sha256(t.encode()).digest()[:8] for t in texts]
        rows = [np.frombuffer(d, dtype=np.uint8).astype(np.float32) for d in digests]
        matrix = np.stack(rows) + 1.0
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)

    return embed


def test_unchanged_documents_are_kept_and_a_changed_one_is_re_embedded_alone(tmp_path):
    texts = {name: HARBOUR[name] for name in ("berth-fees", "pilotage", "speed", "waste")}
    records = harbour_records(texts)
    store = LanceStore(tmp_path / "lancedb")
    calls: list[str] = []
    first = store.sync(chunk_records(records, 64, 8), fingerprints(records), fake_embed(calls))
    assert (first.embedded_documents, first.reused_documents, len(calls)) == (4, 0, 4)

    calls.clear()
    again = store.sync(chunk_records(records, 64, 8), fingerprints(records), fake_embed(calls))
    assert (again.embedded_documents, again.reused_documents, again.embedded_chunks, calls) == (0, 4, 0, [])

    texts["speed"] = "# Speed limit\n\nInside the breakwater the limit is now 4 knots."
    del texts["waste"]
    texts["hours"] = HARBOUR["hours"]
    records = harbour_records(texts)
    calls.clear()
    changed = store.sync(chunk_records(records, 64, 8), fingerprints(records), fake_embed(calls))
    assert (changed.embedded_documents, changed.reused_documents, changed.removed_documents) == (2, 2, 1)
    assert len(calls) == 2 and any("4 knots" in c for c in calls) and any("harbour master" in c for c in calls)
    rows = {row["id"]: row["text"] for row in LanceStore.open_existing(tmp_path / "lancedb").all_chunks()}
    assert sorted(rows) == sorted(f"harbour/{name}.md#0" for name in texts)
    assert "4 knots" in rows["harbour/speed.md#0"]
    assert store.keyword("reception barge", 3) == []  # the removed document left the BM25 index too
    assert store.keyword("knots", 3)[0]["id"] == "harbour/speed.md#0"


def test_reranking_reorders_fused_candidates_by_the_cross_encoder(harbour_store, embedder, tmp_path):
    """A tiny random cross-encoder (built here, offline): the final order is exactly its scores' order."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from lmforge.rag.retrieve import load_reranker

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=1
    )
    folder = tmp_path / "tiny-cross-encoder"
    BertForSequenceClassification(config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(resolve_embedding_model("all-minilm-l6-v2") / name, folder / name)
    reranker = load_reranker(folder)
    plain = LanceRetriever(harbour_store, embedder, candidates=10)
    reranked = LanceRetriever(harbour_store, embedder, candidates=10, reranker=reranker, rerank_candidates=6)
    query = "Which ships need a pilot?"
    fused = plain.search([query], k=6)[0]
    [result] = reranked.search([query], k=4)
    texts = [f"{p['source']['heading']}\n{p['text']}" for p in fused]
    scores = reranker.predict([(query, text) for text in texts])
    expected = [fused[i]["id"] for i in sorted(range(6), key=lambda i: -float(scores[i]))][:4]
    assert [p["id"] for p in result] == expected
    assert [p["score"] for p in result] == sorted((p["score"] for p in result), reverse=True)
    with pytest.raises(Exception, match="cross-encoder"):
        load_reranker(tmp_path / "missing")
