"""The shipped recipes/demo-rag.yaml: its index over the real demo corpus (integration tier) and the
whole run with RAFT training and the four eval variants (slow tier)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.config import shipped_recipe
from lmforge.rundir import StageDir


@pytest.mark.integration
def test_demo_rag_index_meets_the_recall_target(tmp_path: Path):
    recipe = shipped_recipe("demo-rag")
    result = CliRunner().invoke(app, ["run", str(recipe), "--run-dir", str(tmp_path), "--set", "stages=[data, index]"])
    assert result.exit_code == 0, result.output
    index = StageDir.open(tmp_path / "demo-rag", "index")
    metrics = index.manifest["metrics"]
    assert metrics["documents"] == 42 and metrics["chunks"] >= 42
    assert metrics["embedded_chunks"] == metrics["chunks"] and metrics["chunks_per_s"] > 0
    for name in ("test", "docs_only"):
        scores = metrics["retrieval"][name]
        assert set(scores) == {"bm25", "dense", "hybrid"}
        assert scores["hybrid"]["recall@5"] >= 0.95, scores
        assert scores["hybrid"]["mrr"] >= scores["bm25"]["mrr"], scores
    assert "known" not in metrics["retrieval"]  # general questions name no article: nothing to score
    raft = metrics["raft"]
    # Each of the 310 domain questions (split `qa`) becomes two RAFT examples (examples_per_question: 2)
    # and, since sft does not train on `qa` itself, one closed-book copy.
    qa_split = tmp_path / "demo-rag" / "data" / "splits" / "qa.jsonl"
    assert len(qa_split.read_text().splitlines()) == raft["questions"] == 310
    assert raft["examples"] == 930 and raft["closed_book"] == 310 and raft["skipped"] == {}
    assert 0.1 < raft["without_gold"] / 620 < 0.3
    # One more example (passages, cited quote) for a wording of every fact the data stage asked about.
    facts = {json.loads(line)["meta"]["fact"] for line in (qa_split.parent / "doc_qa.jsonl").read_text().splitlines()}
    generated = raft["generated"]
    assert generated["questions"] == generated["examples"] == len(facts) >= 90 and generated["closed_book"] == 0
    assert generated["with_gold"] >= 0.7 * generated["examples"] and generated["skipped"] == {}
    # Routing: calibrated on the domain questions (qa and the generated doc_qa) against the replay prompts
    # (train, no article).
    route = metrics["route"]
    generated_questions = len((qa_split.parent / "doc_qa.jsonl").read_text().splitlines())
    assert route["in_domain"] == 310 + generated_questions and route["general"] > 100, route
    assert route["balanced_accuracy"] >= 0.9, route
    rows = {}
    for name in ("test", "docs_only", "known"):
        lines = (tmp_path / "demo-rag" / "index" / "retrieved" / f"{name}.jsonl").read_text().splitlines()
        rows[name] = [json.loads(line) for line in lines]
    assert len(rows["test"]) == 124 and all(len(row["passages"]) == 3 for row in rows["test"])
    share = {
        name: sum(r["relevance"] >= route["threshold"] for r in found) / len(found) for name, found in rows.items()
    }
    assert share["test"] >= 0.9 and share["docs_only"] >= 0.9 and share["known"] <= 0.1, share

    again = CliRunner().invoke(app, ["run", str(recipe), "--run-dir", str(tmp_path), "--set", "stages=[data, index]"])
    assert again.exit_code == 0 and "skipped" in again.output


@pytest.mark.slow
def test_demo_rag_tuned_with_retrieval_beats_base_with_retrieval(tmp_path: Path):
    recipe = shipped_recipe("demo-rag")
    result = CliRunner().invoke(app, ["run", str(recipe), "--run-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo-rag" / "eval" / "summary.json").read_text())
    for name in ("test", "docs_only"):
        scores = summary["sets"][name]
        assert scores["tuned+rag"]["accuracy"] > scores["base+rag"]["accuracy"], scores
    # The closed-book copies: the tuned model knows trained facts without passages and never cites
    # a passage it was not given; routing keeps general questions out of retrieval.
    assert summary["sets"]["test"]["tuned"]["accuracy"] >= 0.2, summary["sets"]["test"]
    for name, scores in summary["sets"].items():
        assert scores["tuned"]["invented_citations"] == 0, (name, scores["tuned"])
    assert summary["sets"]["known"]["tuned+routed"]["accuracy"] >= 0.95, summary["sets"]["known"]
    asked = CliRunner().invoke(
        app, ["ask", str(tmp_path / "demo-rag"), "How many years of contributions give a right to a pension?", "--json"]
    )
    assert asked.exit_code == 0, asked.output
    answer = json.loads(asked.stdout[asked.stdout.index("{") :])
    assert answer["model"] == "tuned" and answer["cited"]
