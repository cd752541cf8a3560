"""The lm-evaluation-harness adapter: lm-eval evaluates a run's model offline on the run's own sets,
and its multiple-choice accuracy agrees with lmforge's own eval on the same model and prompts."""

import json
from pathlib import Path

import pytest
import yaml

from lmforge.config import load_recipe
from lmforge.evaluate.harness import command_line, model_args, run_harness, task_name, write_tasks
from lmforge.pipeline import run_recipe

pytestmark = pytest.mark.integration

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def chat(question: str, answer: str, **meta) -> dict:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "meta": {"answer": answer, **meta}}


@pytest.fixture
def harness_run(tmp_path, tiny_model_dir):
    qa = [chat(f"Tell me fact {i}.", f"Fact {i} is {i * 7} kestrels.") for i in range(3)]
    mc = [
        chat(f"Which colour is number {i}?", COLOURS[i], choices=[COLOURS[i], COLOURS[(i + 1) % 6], "kestrels"])
        for i in range(6)
    ]
    write_jsonl(tmp_path / "qa.jsonl", qa)
    write_jsonl(tmp_path / "mc.jsonl", mc)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nThe retirement age in Kestria is 64 years.\n", encoding="utf-8")
    recipe = tmp_path / "h.yaml"
    recipe.write_text(
        f"""
name: h-run
run_dir: {tmp_path / "runs"}
stages: [data, eval]
model: {{ref: {tiny_model_dir}}}
data:
  sources:
    - {{path: qa.jsonl, split: test}}
    - {{path: mc.jsonl, split: mc}}
    - {{path: docs, split: docs}}
eval:
  sets: [test, mc, docs]
  tasks: {{mc: choice, docs: perplexity}}
  max_new_tokens: 4
  bootstrap: 0
""",
        encoding="utf-8",
    )
    loaded = load_recipe(recipe)
    run_recipe(loaded)
    return loaded.run_path()


def test_lm_eval_runs_offline_and_agrees_with_lmforge(harness_run, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = write_tasks(harness_run)
    assert (
        names
        == [task_name("h-run", s) for s in ("test", "mc", "docs")]
        == [
            "lmforge_h_run_test",
            "lmforge_h_run_mc",
            "lmforge_h_run_docs",
        ]
    )
    tasks_dir = harness_run / "eval" / "harness" / "tasks"
    mc_yaml = yaml.safe_load((tasks_dir / "lmforge_h_run_mc.yaml").read_text())
    assert mc_yaml["output_type"] == "multiple_choice" and mc_yaml["dataset_path"] == "json"
    docs = [json.loads(line) for line in (tasks_dir / "lmforge_h_run_mc.jsonl").read_text().splitlines()]
    assert docs[0]["prompt"].startswith("<|im_start|>user\nWhich colour") and docs[0]["label"] == 0

    metrics = run_harness(harness_run, variant="base", batch_size=4)
    assert set(metrics) == set(names)
    assert metrics["lmforge_h_run_test"]["n"] == 3 and "accuracy" in metrics["lmforge_h_run_test"]
    assert metrics["lmforge_h_run_docs"]["word_perplexity"] > 1
    summary = json.loads((harness_run / "eval" / "summary.json").read_text())
    # Same model, same rendered prompts, same log-likelihood argmax: the same accuracy.
    assert metrics["lmforge_h_run_mc"]["acc"] == pytest.approx(summary["sets"]["mc"]["base"]["accuracy"], abs=1e-3)
    assert metrics["lmforge_h_run_mc"]["acc_norm"] == pytest.approx(
        summary["sets"]["mc"]["base"]["accuracy_norm"], abs=1e-3
    )
    saved = json.loads((harness_run / "eval" / "harness" / "results-base.json").read_text())
    assert saved["variant"] == "base" and "lmforge_h_run_mc" in saved

    assert model_args(harness_run, "base")["dtype"] == "float32"
    line = command_line(harness_run, "base")
    assert "--include_path" in line and "lmforge_h_run_mc" in line and "peft=" not in line
