"""Retrieval through the whole pipeline on a tiny model: data -> index (+ RAFT) -> sft -> eval with
the four variants, `lmforge ask`, skipping, and re-embedding of one changed document."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.config import load_recipe
from lmforge.pipeline import run_recipe
from lmforge.rundir import StageDir

pytestmark = pytest.mark.integration

FACTS = {
    # name: (document body, answer, training question, held-out question)
    "berth-fees": ("A moored vessel pays 3 crowns per metre per day.", "3 crowns", "What is the berth fee?",
                   "How much does mooring cost per metre?"),
    "pilotage": ("Ships longer than 80 metres need a pilot.", "80 metres", "Which ships need a pilot?",
                 "From what length is a pilot compulsory?"),
    "speed": ("Inside the breakwater the limit is 6 knots.", "6 knots", "What is the harbour speed limit?",
              "How fast may boats go inside the breakwater?"),
    "waste": ("Oily residues go to the reception barge.", "reception barge", "Where do oily residues go?",
              "Who takes bilge oil?"),
    "fines": ("Breaking the rules costs up to 2,000 crowns.", "2,000 crowns", "What is the highest fine?",
              "How much can a rule breaker be fined?"),
}  # fmt: skip


def qa_line(question: str, name: str) -> dict:
    body, answer, _, _ = FACTS[name]
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": body}],
        "meta": {"answer": answer, "article": name},
    }


@pytest.fixture
def rag_recipe(tmp_path: Path, tiny_model_dir: Path) -> Path:
    for name, (body, *_) in FACTS.items():
        (tmp_path / "docs").mkdir(exist_ok=True)
        (tmp_path / "docs" / f"{name}.md").write_text(f"# {name.title()}\n\n{body}\n", encoding="utf-8")
    (tmp_path / "qa").mkdir()
    for split, column in (("train", 2), ("test", 3)):
        rows = [qa_line(facts[column], name) for name, facts in FACTS.items()]
        (tmp_path / "qa" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = tmp_path / "rag.yaml"
    recipe.write_text(
        f"""
name: tiny-rag
run_dir: {tmp_path / "runs"}
stages: [data, index, sft, eval]
model: {{ref: {tiny_model_dir}}}
data:
  sources:
    - {{path: qa/train.jsonl, split: train}}
    - {{path: qa/test.jsonl, split: test}}
    - {{path: docs, split: documents}}
  questions: {{enabled: false}}  # RAFT from the question file alone here; the generated ones: test_bench_run
index:
  top_k: 2
  raft: {{enabled: true, min_distractors: 1, max_distractors: 1, examples_per_question: 2}}
sft:
  splits: [train, raft]
  epochs: 1
  lr: 5.0e-3
  batch_size: 4
  max_length: 512
  precision: fp32
eval:
  sets: [test]
  max_new_tokens: 4
  batch_size: 8
  variants:
    - {{name: base, model: base}}
    - {{name: base+rag, model: base, rag: true}}
    - {{name: tuned, model: tuned}}
    - {{name: tuned+rag, model: tuned, rag: true}}
""",
        encoding="utf-8",
    )
    return recipe


def test_index_raft_sft_and_four_eval_variants(rag_recipe: Path):
    recipe = load_recipe(rag_recipe)
    results = run_recipe(recipe)
    run = recipe.run_path()
    index = StageDir.open(run, "index")
    assert index.status == "done"
    metrics = index.manifest["metrics"]
    assert metrics["documents"] == 5 and metrics["chunks"] == 5 and metrics["embedded_chunks"] == 5
    assert set(metrics["retrieval"]["test"]) == {"bm25", "dense", "hybrid"}
    assert metrics["retrieval"]["test"]["hybrid"]["recall@3"] == 1.0

    retrieved = [json.loads(line) for line in (run / "index" / "retrieved" / "test.jsonl").read_text().splitlines()]
    test_ids = [json.loads(line)["id"] for line in (run / "data" / "splits" / "test.jsonl").read_text().splitlines()]
    assert [row["id"] for row in retrieved] == test_ids
    for row in retrieved:
        assert len(row["passages"]) == 2
        for passage in row["passages"]:
            assert set(passage) == {"id", "source", "text", "score"}
            assert set(passage["source"]) >= {"path", "line", "heading"}

    raft = [json.loads(line) for line in (run / "index" / "splits" / "raft.jsonl").read_text().splitlines()]
    assert len(raft) == metrics["raft"]["examples"] == 10  # 5 questions x 2 draws
    assert all(len(r["meta"]["raft"]["passages"]) in (1, 2) for r in raft)
    # sft trained on the train split and the RAFT split together.
    assert results["sft"].metrics["examples"] == 5 + 10

    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert set(summary["sets"]["test"]) == {"base", "base+rag", "tuned", "tuned+rag"}

    again = run_recipe(recipe)
    assert all(result.skipped for result in again.values())


def test_changed_document_is_re_embedded_alone_and_ask_cites(rag_recipe: Path):
    recipe = load_recipe(rag_recipe, ["stages=[data, index, sft]"])
    run_recipe(recipe)
    run = recipe.run_path()
    docs = rag_recipe.parent / "docs"
    (docs / "speed.md").write_text("# Speed\n\nInside the breakwater the limit is now 4 knots.\n", encoding="utf-8")
    changed = run_recipe(recipe)
    assert not changed["index"].skipped
    metrics = StageDir.open(run, "index").manifest["metrics"]
    assert (metrics["embedded_documents"], metrics["reused_documents"], metrics["embedded_chunks"]) == (1, 4, 1)
    from lmforge.rag.retrieve import open_retriever

    assert open_retriever(run)[0].keyword_weight == recipe.index.keyword_weight == 2.0  # ask and serve fuse alike

    result = CliRunner().invoke(app, ["ask", str(run), "How fast may boats go inside the breakwater?", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout[result.stdout.index("{") :])
    assert answer["model"] == "tuned" and len(answer["passages"]) == 2
    assert answer["passages"][0]["source"]["path"] == "docs/speed.md"
    assert "4 knots" in answer["passages"][0]["text"]
    assert set(answer["cited"]) <= {p["id"] for p in answer["passages"]}
    assert answer["relevance"] >= answer["threshold"]

    # A question the documents do not cover is answered without passages, unless --no-route.
    general = "How many strings does a violin have?"  # not among the calibration prompts
    routed = CliRunner().invoke(app, ["ask", str(run), general, "--json"])
    off = json.loads(routed.stdout[routed.stdout.index("{") :])
    assert off["passages"] == [] and off["cited"] == [] and off["relevance"] < off["threshold"]
    forced = CliRunner().invoke(app, ["ask", str(run), general, "--json", "--no-route"])
    assert len(json.loads(forced.stdout[forced.stdout.index("{") :])["passages"]) == 2

    missing = CliRunner().invoke(app, ["ask", str(rag_recipe.parent / "nope"), "q"])
    assert missing.exit_code != 0 and "not a run directory" in missing.output


def test_default_eval_variants_add_retrieval_when_the_recipe_indexes(rag_recipe: Path):
    from lmforge.evaluate.variants import variant_specs

    with_index = load_recipe(rag_recipe, ["eval.variants=[]"])
    assert [v.name for v in variant_specs(with_index)] == ["base", "base+rag", "tuned", "tuned+rag", "tuned+routed"]
    assert [v.rag for v in variant_specs(with_index)] == [False, True, False, True, True]
    assert [v.route for v in variant_specs(with_index)] == [False, False, False, False, True]
    without = load_recipe(rag_recipe, ["eval.variants=[]", "stages=[data, sft, eval]", "sft.splits=[train]"])
    assert [v.name for v in variant_specs(without)] == ["base", "tuned"]


def test_a_plain_qa_file_with_a_source_column_makes_raft_examples(tmp_path: Path, tiny_model_dir: Path):
    """No meta mapping: the `source` column names the document, the answer column is the answer."""
    (tmp_path / "docs").mkdir()
    rows = []
    for name, (body, answer, question, _) in FACTS.items():
        (tmp_path / "docs" / f"{name}.md").write_text(f"# {name.title()}\n\n{body}\n", encoding="utf-8")
        rows.append({"question": question, "answer": answer, "source": f"{name}.md"})
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = tmp_path / "plain.yaml"
    recipe.write_text(
        f"name: plain\nrun_dir: {tmp_path / 'runs'}\nstages: [data, index]\nmodel: {{ref: {tiny_model_dir}}}\n"
        "data: {sources: [{path: qa.jsonl, split: train}, {path: docs, split: documents}], "
        "questions: {enabled: false}}\n"
        "index: {top_k: 2, raft: {enabled: true, min_distractors: 1, max_distractors: 1}}\n",
        encoding="utf-8",
    )
    # validate says what RAFT will build before anything runs (the data read in memory).
    checked = CliRunner().invoke(app, ["validate", str(recipe)])
    assert checked.exit_code == 0, checked.output
    assert f"{len(FACTS)} examples from {len(FACTS)} questions of 'train'" in " ".join(checked.output.split())
    assert not (tmp_path / "runs").exists()
    metrics = run_recipe(load_recipe(recipe))["index"].metrics
    # One RAFT example per question; no closed-book copies, as sft.splits (default [train]) holds the questions.
    assert metrics["raft"]["examples"] == len(FACTS) and metrics["raft"]["closed_book"] == 0
    assert metrics["raft"]["skipped"] == {}
    raft = [json.loads(line) for line in (tmp_path / "runs" / "plain" / "index" / "splits" / "raft.jsonl").open()]
    cited = [r for r in raft if r["meta"]["raft"]["gold"]]
    assert cited and all(r["messages"][-1]["content"].startswith("According to [") for r in cited)
    assert all(r["meta"]["source"].endswith(".md") for r in raft)


def test_the_gold_document_falls_back_on_source_document_doc():
    from lmforge.rag.quality import gold_document

    assert gold_document({"article": "a12", "source": "x.md"}, "article") == "a12"
    assert gold_document({"source": "x.md"}, "article") == "x.md"
    assert gold_document({"doc": " y.md "}, "article") == "y.md"
    assert gold_document({"source": {"path": "z"}}, "article") is None and gold_document(None, "article") is None


def test_plan_previews_the_raft_split_before_the_index_exists(rag_recipe: Path):
    """plan builds the RAFT examples the index stage will write (BM25 distractors): same count, close lengths."""
    from lmforge.perf.plan import plan_recipe

    recipe = load_recipe(rag_recipe, ["stages=[data, index, sft]"])
    _, before = plan_recipe(recipe)
    sft = before[0]
    assert not sft.warnings, sft.warnings
    note = next(n for n in sft.notes if n.startswith("raft (written later by the index stage"))
    assert "10 examples from 5 questions of 'train'" in note
    assert sft.batches.trained_examples == 5 + 10

    run_recipe(load_recipe(rag_recipe, ["stages=[data, index]"]))
    _, after = plan_recipe(recipe)
    assert not any(n.startswith("raft (written later") for n in after[0].notes)
    assert after[0].batches.trained_examples == sft.batches.trained_examples
    predicted, real = sft.batches.computed_tokens, after[0].batches.computed_tokens
    assert abs(predicted - real) <= 0.1 * real, (predicted, real)


def test_dpo_builds_pairs_with_retrieved_passages_and_cited_gold_answers(rag_recipe: Path):
    from lmforge.config import load_recipe
    from lmforge.pipeline import run_recipe
    from lmforge.rundir import StageDir

    overrides = ["stages=[data, index, dpo]", "dpo.build={rag: true, samples: 1, max_new_tokens: 6}"]
    overrides += ["dpo.max_steps=1", "dpo.precision=fp32", "dpo.max_length=512", "dpo.batch_size=2"]
    recipe = load_recipe(rag_recipe, overrides)
    run_recipe(recipe)
    built = StageDir.open(recipe.run_path(), "dpo").manifest["metrics"]["built"]
    assert built["questions"] == len(FACTS) and built["asked"] + built["gold_not_retrieved"] == len(FACTS)
    assert built["asked"] > 0 and built["pairs"] + built["always_right"] == built["asked"]
    pairs = [json.loads(line) for line in (recipe.run_path() / "dpo/prepared/pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == built["pairs"] > 0  # a random model neither answers right nor cites
    for pair in pairs:
        prompt, chosen = pair["messages"][-2]["content"], pair["messages"][-1]["content"]
        number = int(chosen.rsplit("[", 1)[1].rstrip("]"))  # the gold answer cites its source passage
        block = prompt.split(f"[{number}] ", 1)[1].split("\n", 1)[0]
        assert prompt.startswith("Passages:") and block.lower().startswith(pair["meta"]["article"])
