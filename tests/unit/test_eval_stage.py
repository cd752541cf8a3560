"""The eval stage on tiny in-process models: tasks, variants, statistics, the retrieval hand-off, the CLI."""

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.config import load_recipe
from lmforge.errors import ConfigError, StageError
from lmforge.evaluate import stage as compare
from lmforge.evaluate.stage import EvalSet, summarize
from lmforge.evaluate.table import render_table
from lmforge.evaluate.tasks import Item, task_for
from lmforge.evaluate.variants import Variant
from lmforge.pipeline import run_recipe
from lmforge.rundir import StageDir, atomic_write_jsonl


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def qa(question: str, answer: str, **meta) -> dict:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "meta": {"answer": answer, **meta}}


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A second tiny model (other random weights): a variant given by a local model reference."""
    from conftest import build_tiny_llama

    path = tmp_path_factory.mktemp("other-llama")
    model = build_tiny_llama(tiny_tokenizer, seed=7)
    model.generation_config.eos_token_id = tiny_tokenizer.eos_token_id
    model.generation_config.pad_token_id = tiny_tokenizer.pad_token_id
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A LoRA adapter with random (non-zero) weights on the tiny model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("adapter")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(path)
    return path


@pytest.fixture
def eval_recipe(tmp_path, tiny_model_dir) -> Path:
    """data -> eval on four sets, one per kind of task."""
    write_jsonl(
        tmp_path / "qa" / "test.jsonl", [qa(f"Tell me fact {i}.", f"Fact {i} is {i * 7} kestrels.") for i in range(5)]
    )
    choices = [qa(f"Pick {i}.", "kestrels", choices=["kestrels", "pension"], label=0) for i in range(3)]
    write_jsonl(tmp_path / "qa" / "mc.jsonl", choices)
    extraction = [qa(f"Extract fact {i}.", json.dumps({"fact": i, "unit": "kestrels"})) for i in range(3)]
    write_jsonl(tmp_path / "qa" / "extract.jsonl", extraction)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "art-1.md").write_text("# Article 1\n\nThe retirement age in Kestria is 64 years.\n", encoding="utf-8")
    (docs / "art-2.md").write_text("# Article 2\n\nThe appeal must be lodged within 45 days.\n", encoding="utf-8")
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(
        f"""
name: evaltiny
run_dir: {tmp_path / "runs"}
stages: [data, eval]
model: {{ref: {tiny_model_dir}}}
data:
  sources:
    - {{path: qa/test.jsonl, split: test}}
    - {{path: qa/mc.jsonl, split: mc}}
    - {{path: qa/extract.jsonl, split: extract}}
    - {{path: docs, split: docs}}
eval:
  sets: [test, mc, extract, docs]
  tasks: {{mc: choice, extract: extraction, docs: perplexity}}
  max_new_tokens: 6
  batch_size: 4
  bootstrap: 200
""",
        encoding="utf-8",
    )
    return recipe


def test_every_task_and_variant_kind(eval_recipe, other_model_dir, adapter_dir):
    overrides = [
        "eval.variants=[{name: other, model: " + str(other_model_dir) + "}, {name: lora, model: base, adapter: "
        + str(adapter_dir) + "}]"
    ]  # fmt: skip
    recipe = load_recipe(eval_recipe, overrides)
    result = run_recipe(recipe)["eval"]
    summary = result.summary
    assert summary["variants"] == ["base", "other", "lora"]  # base added, and first
    assert summary["tasks"]["docs"] == {"task": "perplexity", "metric": "perplexity", "higher_is_better": False}
    assert set(summary["sets"]) == {"test", "mc", "extract", "docs"}
    for set_name, n in {"test": 5, "mc": 3, "extract": 3, "docs": 2}.items():
        for name in ("base", "other", "lora"):
            entry = summary["sets"][set_name][name]
            assert entry["n"] == n
            low, high = entry["ci"]
            assert low <= entry["score"] <= high
        assert "delta" not in summary["sets"][set_name]["base"]
        assert "delta_ci" in summary["sets"][set_name]["lora"]
    docs = summary["sets"]["docs"]
    # A random 400-token model is about as surprised as a uniform guess: perplexity in the hundreds.
    assert 50 < docs["base"]["perplexity"] < 5000
    assert docs["lora"]["delta"] != 0 and docs["other"]["delta"] != 0  # different weights, different numbers
    assert summary["sets"]["mc"]["base"]["accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert summary["regressions"]["mc"]["lora"] is not None and "docs" not in summary["regressions"]

    rows = [json.loads(line) for line in (recipe.run_path() / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 13
    mc_row = next(row for row in rows if row["set"] == "mc")
    assert len(mc_row["answers"]["base"]["logprobs"]) == 2 and mc_row["answers"]["base"]["reply"] in (
        "kestrels",
        "pension",
    )
    doc_row = next(row for row in rows if row["set"] == "docs")
    assert doc_row["answers"]["base"]["tokens"] > 5 and math.isfinite(doc_row["answers"]["base"]["nll"])
    extract_row = next(row for row in rows if row["set"] == "extract")
    assert set(extract_row["answers"]["other"]["fields"]) == {"fact", "unit"}
    assert (recipe.run_path() / "eval" / "report.html").is_file() and result.report_path is not None
    manifest = StageDir.open(recipe.run_path(), "eval").manifest
    assert set(manifest["inputs"]["variants"]) == {"base", "other", "lora"}
    assert "adapter" in manifest["inputs"]["variants"]["lora"]


def fake_index(run_path: Path, split: str, rows: list[dict]) -> None:
    stage = StageDir.open(run_path, "index")
    stage.start("fp-index", {}, {})
    atomic_write_jsonl(stage.path("retrieved", f"{split}.jsonl"), rows)
    stage.finish({})


def test_rag_variant_reads_the_retrieved_passages(eval_recipe, monkeypatch):
    import lmforge.records

    calls = []
    real = lmforge.records.context_messages

    def context_messages(messages, passages):
        calls.append(passages)
        return real(messages, passages)

    monkeypatch.setattr(lmforge.records, "context_messages", context_messages)
    overrides = ["eval.sets=[test]", "eval.tasks={}", "eval.variants=[{name: base+rag, model: base, rag: true}]"]
    recipe = load_recipe(eval_recipe, overrides)
    run_recipe(recipe, only=["data"])
    with pytest.raises(StageError, match="index"):
        compare.run(recipe)  # the index stage has not run: a clear error, not a crash
    records = [
        json.loads(line) for line in (recipe.run_path() / "data" / "splits" / "test.jsonl").read_text().splitlines()
    ]
    passage = {
        "id": "art-1#0",
        "source": {"path": "art-1.md", "line": 3, "heading": "Article 1"},
        "text": "Age 64.",
        "score": 0.5,
    }
    fake_index(recipe.run_path(), "test", [{"id": r["id"], "passages": [passage]} for r in records])
    result = compare.run(recipe)
    assert result.summary["variants"] == ["base", "base+rag"]
    assert len(calls) == 5 and calls[0] == [passage]
    rows = [json.loads(line) for line in (recipe.run_path() / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert all(row["passages"] == [passage] for row in rows)
    assert all(row["answers"]["base+rag"]["cited"] == [] for row in rows)  # the tiny model cites nothing
    html = (recipe.run_path() / "eval" / "report.html").read_text()
    assert "1 retrieved passages" in html and "art-1.md:3 · Article 1" in html
    # A retrieved file that misses a question is refused.
    fake_index(recipe.run_path(), "test", [{"id": records[0]["id"], "passages": [passage]}])
    with pytest.raises(StageError, match="no retrieved passages for 4"):
        compare.run(load_recipe(eval_recipe, [*overrides, "eval.limit=5", "eval.bootstrap=100"]))


def test_summarize_counts_regressions_and_improvements():
    task = task_for("qa")
    items = [Item("s", f"q{i}", f"question {i}", [], "yes") for i in range(6)]
    base_right = [True, True, False, False, True, False]
    tuned_right = [True, False, True, True, True, False]
    rows = [
        {"set": "s", "id": item.id, "question": item.question, "gold": "yes",
         "answers": {"base": task.score(item, "yes" if b else "no"), "tuned": task.score(item, "yes" if t else "no")}}
        for item, b, t in zip(items, base_right, tuned_right, strict=True)
    ]  # fmt: skip
    variants = [Variant("base", Path("."), None), Variant("tuned", Path("."), None)]
    summary = summarize(rows, [EvalSet("s", task, items)], variants, resamples=500)
    tuned = summary["sets"]["s"]["tuned"]
    assert summary["regressions"] == {"s": {"tuned": ["q1"]}}
    assert tuned["regressions"] == 1 and tuned["improvements"] == 2
    assert tuned["delta"] == pytest.approx(1 / 6, abs=1e-4)
    assert summary["sets"]["s"]["base"]["accuracy"] == 0.5 and tuned["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    text = render_to_text(render_table(summary, rows, examples=2))
    assert "+16.7%" in text and "2 / 1" in text and "regressions: base right" in text and "question 1" in text


def test_compare_to_pairs_two_tuned_variants_question_by_question():
    """Scripted answers for base, tuned and tuned+rag (compared with tuned): the delta, its interval and which
    questions tuned+rag fixed and broke against tuned, from enough questions for the interval to mean something."""
    from lmforge.evaluate.stats import paired_difference

    task = task_for("qa")
    items = [Item("s", f"q{i}", f"question {i}", [], "yes") for i in range(40)]
    base_right = [i % 5 == 0 for i in range(40)]  # 8 right
    tuned_right = [i % 2 == 0 for i in range(40)]  # 20 right
    rag_right = [i % 2 == 0 or i % 3 == 0 for i in range(40)]  # 27 right: fixes the odd multiples of 3
    rag_right[0] = rag_right[2] = False  # and breaks two
    rows = [
        {"set": "s", "id": item.id, "question": item.question, "gold": "yes", "answers": {
            name: task.score(item, "yes" if right else "no")
            for name, right in (("base", b), ("tuned", t), ("tuned+rag", r))
        }}
        for item, b, t, r in zip(items, base_right, tuned_right, rag_right, strict=True)
    ]  # fmt: skip
    variants = [
        Variant("base", Path("."), None),
        Variant("tuned", Path("."), None),
        Variant("tuned+rag", Path("."), None, rag=True, compare_to="tuned"),
    ]
    summary = summarize(rows, [EvalSet("s", task, items)], variants, resamples=2000, seed=3)
    versus = summary["sets"]["s"]["tuned+rag"]["vs"]["tuned"]
    fixed = sorted(f"q{i}" for i in range(40) if rag_right[i] and not tuned_right[i])
    assert versus["improvements"] == len(fixed) == 7 and versus["regressions"] == 2
    assert versus["delta"] == pytest.approx((25 - 20) / 40, abs=1e-4)
    expected = paired_difference(
        task.sample([r["answers"]["tuned+rag"] for r in rows]), task.sample([r["answers"]["tuned"] for r in rows]),
        2000, 0.95, 3,
    )  # fmt: skip
    assert versus["delta_ci"] == pytest.approx(list(expected["ci"]), abs=1e-4)
    low, high = versus["delta_ci"]
    assert low < versus["delta"] < high and 0.0 < high - low < 0.4  # an interval, not a point or everything
    assert "vs" not in summary["sets"]["s"]["tuned"]  # only the variant that asked is compared
    text = render_to_text(render_table(summary, rows, examples=0))
    assert "tuned+rag - tuned" in text and "7 / 2" in text


def render_to_text(renderable) -> str:
    import io

    from rich.console import Console

    console = Console(record=True, width=160, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_eval_config_is_checked(eval_recipe, tmp_path):
    cases = {
        "eval.tasks={nope: qa}": "not in eval.sets",
        "eval.tasks={test: essay}": "eval.tasks.test",
        "eval.variants=[{name: a, model: base}, {name: a, model: base}]": "unique",
        "eval.variants=[{name: base, model: base, rag: true}]": "kept for the base model",
        f"eval.variants=[{{name: x, model: base, adapter: {tmp_path}}}]": "adapter_config.json",
        "eval.variants=[{name: x, model: base, run: other}]": "either 'run'",
        "eval.variants=[{name: x, adapter: somewhere}]": "on top of a model",
        "eval.judge={endpoint: 'http://x', model: m, sets: [nope]}": "judge.sets",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_recipe(eval_recipe, [override])


def test_cli_eval_runs_only_the_eval_stage(eval_recipe):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(eval_recipe), "--set", "eval.sets=[test]", "--set", "eval.tasks={}"])
    assert result.exit_code == 1 and "data" in result.output  # the data stage has not run yet
    assert "Traceback" not in result.output
    run_recipe(load_recipe(eval_recipe), only=["data"])
    data_manifest = (eval_recipe.parent / "runs" / "evaltiny" / "data" / "manifest.json").read_text()
    result = runner.invoke(app, ["eval", str(eval_recipe), "--set", "eval.sets=[test]", "--set", "eval.tasks={}"])
    assert result.exit_code == 0, result.output
    assert "stages: eval" in result.output and "✔ eval" in result.output and "report.html" in result.output
    assert (eval_recipe.parent / "runs" / "evaltiny" / "data" / "manifest.json").read_text() == data_manifest
    report = runner.invoke(app, ["report", str(eval_recipe.parent / "runs" / "evaltiny")])
    assert report.exit_code == 0 and "report.html" in report.output
    missing = runner.invoke(app, ["report", str(eval_recipe.parent / "runs" / "nothing")])
    assert missing.exit_code == 1 and "run the eval stage first" in missing.output


def test_rows_record_cited_passages_and_the_report_shows_them():
    from lmforge.evaluate.report import render_report
    from lmforge.evaluate.stage import score_rows

    task = task_for("qa")
    item = Item("test", "q1", "Retirement age?", [{"role": "user", "content": "Retirement age?"}], "64 years")
    passages = [
        {"id": "art-15#0", "source": {"path": "art-15.md", "line": 1, "heading": "Article 15"}, "text": "64 years."},
        {"id": "art-16#0", "source": {"path": "art-16.md", "line": 1}, "text": "Early retirement at 62."},
    ]
    eval_set = EvalSet("test", task, [item], {"q1": passages})
    outputs = {"base": {"test": ["65 years."]}, "base+rag": {"test": ["It is 64 years [1]."]}}
    variants = [Variant("base", Path("."), None), Variant("base+rag", Path("."), None, rag=True)]
    rows = score_rows([eval_set], variants, outputs)
    assert rows[0]["answers"]["base+rag"]["cited"] == ["art-15#0"] and "cited" not in rows[0]["answers"]["base"]
    summary = summarize(rows, [eval_set], variants, resamples=0)
    html = render_report(summary, rows, {}, {"model": {"ref": "m"}}, "r")
    assert html.count("cited by base+rag") == 1 and "art-15.md:1 · Article 15" in html
    assert "<script>" in html and "No training log" in html


def test_unchanged_variants_reuse_their_answers(eval_recipe, monkeypatch):
    overrides = ["eval.sets=[test, mc]", "eval.tasks={mc: choice}"]
    first = run_recipe(load_recipe(eval_recipe, overrides))["eval"]
    run_path = load_recipe(eval_recipe).run_path()
    assert (run_path / "eval" / "answers" / "base.json").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("the base model answered again although nothing it depends on changed")

    monkeypatch.setattr(compare, "generate_replies", refuse)
    monkeypatch.setattr("lmforge.evaluate.likelihood.continuation_logprobs", refuse)
    # A statistics setting changes: the stage runs again, the answers do not.
    again = run_recipe(load_recipe(eval_recipe, [*overrides, "eval.bootstrap=50"]))["eval"]
    assert not again.skipped
    assert again.summary["sets"]["test"]["base"]["score"] == first.summary["sets"]["test"]["base"]["score"]
    assert again.summary["sets"]["mc"]["base"]["accuracy"] == first.summary["sets"]["mc"]["base"]["accuracy"]
    # A decoding setting changes: the answers must be produced again.
    with pytest.raises(AssertionError, match="answered again"):
        run_recipe(load_recipe(eval_recipe, [*overrides, "eval.max_new_tokens=3"]))


def test_variant_lists_always_start_with_base(eval_recipe):
    from lmforge.evaluate.variants import variant_specs

    def names(*overrides):
        return [spec.name for spec in variant_specs(load_recipe(eval_recipe, list(overrides)))]

    assert names() == ["base"]  # no sft stage in the recipe, none in the run
    assert names("stages=[data, sft, eval]") == ["base", "tuned"]
    assert names("eval.variants=[{name: tuned+rag, rag: true}, {name: x, model: base}]") == ["base", "tuned+rag", "x"]
    assert names("eval.variants=[{name: x, model: base}, {name: base, model: base}]") == ["base", "x"]


def test_report_draws_train_and_eval_loss_of_every_training_stage(tmp_path):
    from lmforge.evaluate.report import render_report, training_logs

    log = [{"loss": 2.0 - step / 10, "step": step} for step in range(1, 11)]
    log += [{"eval_loss": 1.9, "step": 5}, {"eval_loss": 1.5, "step": 10}, {"train_runtime": 12.0, "step": 10}]
    for stage in ("cpt", "sft"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log) + "not json\n")
    logs = training_logs(tmp_path)
    assert list(logs) == ["cpt", "sft"] and len(logs["sft"]) == 13
    summary = {"sets": {}, "variants": ["base"], "tasks": {}}
    html = render_report(summary, [], logs, {}, "r")
    assert html.count('class="chart loss-chart"') == 2
    assert html.count('<polyline class="curve"') == 4  # train and eval loss, per stage
    assert "eval loss (last 1.500)" in html and "train loss (last 1.000)" in html


def test_invented_citations_and_routing_are_scored_per_variant():
    from lmforge.evaluate.stage import score_rows

    task = task_for("qa")
    items = [
        Item("test", f"q{i}", f"question {i}", [{"role": "user", "content": f"question {i}"}], "64 years")
        for i in range(3)
    ]
    passage = {"id": "art-15#0", "source": {"path": "art-15.md", "line": 1}, "text": "64 years."}
    # q0 and q1 are about the documents (relevance above the threshold), q2 is a general question.
    relevance = {"q0": 0.7, "q1": 0.5, "q2": 0.1}
    eval_set = EvalSet("test", task, items, {f"q{i}": [passage] for i in range(3)}, relevance, 0.4)
    variants = [
        Variant("base", Path("."), None),
        Variant("tuned+rag", Path("."), None, rag=True),
        Variant("tuned+routed", Path("."), None, rag=True, route=True),
    ]
    outputs = {
        "base": {"test": ["According to [1], 64 years.", "64 years.", "Rome."]},  # [1] with no passage: invented
        "tuned+rag": {"test": ["64 years [1].", "64 years [2].", "Rome [1]."]},  # one passage shown: [2] invented
        "tuned+routed": {"test": ["64 years [1].", "64 years.", "Rome [1]."]},  # q2 got no passage: [1] invented
    }
    rows = score_rows([eval_set], variants, outputs)
    invented = {v.name: [row["answers"][v.name]["invented_citation"] for row in rows] for v in variants}
    assert invented == {
        "base": [True, False, False],
        "tuned+rag": [False, True, False],
        "tuned+routed": [False, False, True],
    }
    assert [row["answers"]["tuned+routed"]["retrieved"] for row in rows] == [True, True, False]
    assert rows[2]["answers"]["tuned+routed"]["cited"] == []
    assert rows[2]["answers"]["tuned+rag"]["cited"] == ["art-15#0"]
    assert eval_set.shown(variants[2], "q2") == [] and eval_set.shown(variants[1], "q2") == [passage]
    summary = summarize(rows, [eval_set], variants, resamples=0)["sets"]["test"]
    assert summary["base"]["invented_citations"] == 1 and summary["tuned+routed"]["retrieved"] == 2
    assert "retrieved" not in summary["tuned+rag"]


def test_route_calibration_separates_domain_from_general_questions():
    from lmforge.rag.route import calibrate, routed, split_questions
    from lmforge.records import chat_record

    calibration = calibrate([0.62, 0.55, 0.48, 0.70], [0.12, 0.30, 0.51, 0.20])
    # Between 0.30 and 0.48 every in-domain question retrieves and one general one (0.51) does too; any
    # higher threshold loses an in-domain question for at most that one general question; ties go low.
    assert calibration["threshold"] == pytest.approx(0.39) and calibration["balanced_accuracy"] == 0.875
    assert calibration["in_domain_retrieving"] == 4 and calibration["general_retrieving"] == 1
    assert calibrate([0.5], []) is None
    assert routed([{"id": "a"}], 0.3, 0.5) == [] and routed([{"id": "a"}], 0.6, 0.5) == [{"id": "a"}]
    messages = [{"role": "user", "content": "Age?"}, {"role": "assistant", "content": "64."}]
    domain = chat_record(messages, {"path": "qa.jsonl", "line": 1}, None, {"source": "art-1"})
    general = chat_record(messages, {"path": "qa.jsonl", "line": 2}, None, {})
    assert split_questions([domain, general, domain], "article") == (["Age?", "Age?"], ["Age?"])
