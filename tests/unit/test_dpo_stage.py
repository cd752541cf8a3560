"""The dpo stage on a tiny model: it starts from sft's result, trains on read or built pairs against the
starting model as reference, becomes the run's result, and its loss is a mean per pair over the step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import qa_rows, write_jsonl

from lmforge.config import DPOSpec, load_recipe
from lmforge.engine.tokenize import IGNORE, TokenizedExample
from lmforge.errors import StageError
from lmforge.pipeline import run_recipe
from lmforge.rundir import StageDir, final_model, split_path
from lmforge.train import dpo

FACTS = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(8)]


def preference_rows() -> list[dict]:
    wrong = "Fact {} is not known to anyone."
    return [{"prompt": q, "chosen": a, "rejected": wrong.format(i)} for i, (q, a) in enumerate(FACTS)]


def write_recipe(tmp_path: Path, model_dir: Path, stages: str, dpo_section: str, name: str = "pref") -> Path:
    write_jsonl(tmp_path / "qa" / "train.jsonl", qa_rows(FACTS))
    write_jsonl(tmp_path / "qa" / "pairs.jsonl", preference_rows())
    held_out = [(f"Tell me fact {i}.", answer) for i, (_, answer) in enumerate(FACTS[:3])]
    write_jsonl(tmp_path / "qa" / "test.jsonl", qa_rows(held_out))
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(
        f"""
name: {name}
run_dir: {tmp_path / "runs"}
stages: {stages}
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: qa/train.jsonl, split: train}}
    - {{path: qa/pairs.jsonl, split: train}}
    - {{path: qa/test.jsonl, split: test}}
sft: {{epochs: 1, lr: 5.0e-3, batch_size: 4, max_length: 128, precision: fp32}}
dpo: {dpo_section}
eval: {{sets: [test], max_new_tokens: 8, batch_size: 4, bootstrap: 0}}
""",
        encoding="utf-8",
    )
    return recipe


def log_entries(run: Path, key: str) -> list[float]:
    lines = (run / "dpo" / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)[key] for line in lines if key in json.loads(line)]


def test_dpo_after_sft_widens_the_margin_and_becomes_the_runs_result(tmp_path, tiny_model_dir):
    section = "{epochs: 4, lr: 2.0e-2, beta: 0.5, batch_size: 4, max_length: 128, precision: fp32, logging_steps: 1}"
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, "[data, sft, dpo, eval]", section))
    run_recipe(recipe)
    run = recipe.run_path()
    stage = StageDir.open(run, "dpo")
    metrics, outputs = stage.manifest["metrics"], stage.manifest["outputs"]
    assert metrics["pairs"] == len(FACTS) and metrics["loss"] == "dpo"
    assert outputs["starts_from"] == "sft" and Path(outputs["base_model"]) == run / "dpo" / "base"
    reference = json.loads((run / "dpo" / "prepared" / "reference.json").read_text(encoding="utf-8"))
    assert len(reference) == len(FACTS) and all(c < 0 and r < 0 for c, r in reference)
    margins, losses = log_entries(run, "reward_margin"), log_entries(run, "loss")
    assert margins[0] == pytest.approx(0.0, abs=0.05)  # step 1: the policy is the reference (fresh adapter)
    assert margins[-1] > margins[0] + 0.1 and losses[-1] < losses[0]
    assert metrics["reward_accuracy"] > 0.5
    assert final_model(run).stage == "dpo"  # eval's tuned, serve, export and ask now use dpo's model
    summary = json.loads((run / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert {"base", "sft", "tuned"} <= set(summary["variants"])  # sft vs sft+dpo, measured by default
    versus = summary["sets"]["test"]["tuned"]["vs"]["sft"]  # the paired difference dpo made, with its interval
    assert versus["delta_ci"][0] <= versus["delta"] <= versus["delta_ci"][1]
    assert versus["improvements"] + versus["regressions"] <= 3
    # sft trained on the pairs' chosen answers too (they are chat records); dpo read only the pairs
    assert StageDir.open(run, "sft").manifest["metrics"]["examples"] == 2 * len(FACTS)


def test_a_step_is_the_same_with_accumulation_as_in_one_batch(tmp_path, tiny_model_dir):
    runs = {}
    for name, batch, accum in (("whole", 4, 1), ("accum", 2, 2)):
        section = (
            f"{{max_steps: 2, lr: 1.0e-2, batch_size: {batch}, grad_accum: {accum}, max_length: 128, "
            "precision: fp32, logging_steps: 1, warmup_ratio: 0.0}"
        )
        recipe = load_recipe(write_recipe(tmp_path / name, tiny_model_dir, "[data, dpo]", section, name=name))
        run_recipe(recipe)
        runs[name] = (log_entries(recipe.run_path(), "loss"), log_entries(recipe.run_path(), "grad_norm"))
    (whole_loss, whole_grad), (accum_loss, accum_grad) = runs["whole"], runs["accum"]
    assert len(whole_loss) == 2 and whole_loss == pytest.approx(accum_loss, abs=1e-5)
    assert whole_grad == pytest.approx(accum_grad, rel=1e-4)


@pytest.mark.parametrize("loss", ["ipo", "orpo", "simpo", "kto"])
def test_every_loss_trains_from_the_base_model(tmp_path, tiny_model_dir, loss):
    section = f"{{loss: {loss}, max_steps: 3, lr: 1.0e-2, batch_size: 4, max_length: 128, precision: fp32, "
    section += "logging_steps: 1}"
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, "[data, dpo]", section))
    run_recipe(recipe)
    stage = StageDir.open(recipe.run_path(), "dpo")
    metrics = stage.manifest["metrics"]
    assert stage.manifest["outputs"]["starts_from"] == "base" and metrics["steps"] == 3
    assert torch.isfinite(torch.tensor(log_entries(recipe.run_path(), "loss"))).all()
    if loss == "kto":  # a pair is a desirable and an undesirable completion
        assert metrics["completions"] == 2 * len(FACTS) and "kl" in metrics
    else:
        assert metrics["pairs"] == len(FACTS)
    has_reference = (recipe.run_path() / "dpo" / "prepared" / "reference.json").is_file()
    assert has_reference == (loss not in ("orpo", "simpo"))


def test_pairs_built_from_the_models_answers_are_a_counted_split(tmp_path, tiny_model_dir):
    section = (
        "{build: {samples: 2, max_new_tokens: 6, batch_size: 8}, max_steps: 1, batch_size: 4, max_length: 128, "
        "precision: fp32}"
    )
    path = write_recipe(tmp_path, tiny_model_dir, "[data, dpo]", section)
    write_jsonl(tmp_path / "qa" / "pairs.jsonl", [])  # only built pairs
    recipe = load_recipe(path)
    run_recipe(recipe)
    run = recipe.run_path()
    built = StageDir.open(run, "dpo").manifest["metrics"]["built"]
    assert built["questions"] == len(FACTS) and built["asked"] == len(FACTS) and built["no_short_answer"] == 0
    assert built["pairs"] + built["always_right"] == built["asked"] and built["pairs"] > 0  # a random model is wrong
    pairs = [json.loads(line) for line in split_path(run, "pairs", "test").read_text(encoding="utf-8").splitlines()]
    assert len(pairs) == built["pairs"]
    gold = dict(FACTS)
    for pair in pairs:
        question, answer = pair["messages"][0]["content"], pair["messages"][-1]["content"]
        assert answer == gold[question] and pair["meta"]["rejected"] != answer and pair["meta"]["pair_from"]


def test_without_pairs_or_before_sft_finished_it_says_what_to_do(tmp_path, tiny_model_dir):
    section = "{max_steps: 1, max_length: 128, precision: fp32}"
    path = write_recipe(tmp_path, tiny_model_dir, "[data, sft, dpo]", section)
    recipe = load_recipe(path)
    run_recipe(recipe, only=["data"])
    with pytest.raises(StageError, match="dpo starts from the result of sft, which has not finished"):
        run_recipe(recipe, only=["dpo"])
    write_jsonl(tmp_path / "qa" / "pairs.jsonl", [])
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, "[data, dpo]", section, name="nopairs"))
    write_jsonl(tmp_path / "qa" / "pairs.jsonl", [])
    with pytest.raises(StageError, match=r"no preference records.*dpo\.build"):
        run_recipe(recipe)


def test_a_filler_batch_adds_nothing_and_counts_no_pair(tiny_tokenizer):
    from conftest import build_tiny_llama

    model = build_tiny_llama(tiny_tokenizer)
    ids = tiny_tokenizer("Fact 1 is 7 kestrels.")["input_ids"]
    row = TokenizedExample(ids, [IGNORE, IGNORE, *ids[2:]], False)
    example = dpo.PreferenceExample(row, row, reference=(-3.0, -4.0))
    batch = dpo.collate_pairs([dpo.PreferenceDataset([example])[0]] * 2, pad_id=0)
    objective = dpo.PreferenceObjective(DPOSpec())
    loss, count = objective(model, batch)
    assert count == 2 and loss.item() > 0
    batch["labels"][:] = IGNORE  # what blank_fillers does to a filler micro-batch
    loss, count = objective(model, batch)
    assert count == 0 and loss.item() == 0.0
    loss.backward()  # still part of the graph (every process runs the same collectives)


def test_full_training_keeps_the_reference_without_a_second_model(tmp_path, tiny_model_dir):
    section = "{method: full, max_steps: 3, lr: 1.0e-3, warmup_ratio: 0.0, batch_size: 4, max_length: 128, "
    section += "precision: fp32, logging_steps: 1}"
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, "[data, dpo]", section))
    run_recipe(recipe)
    run = recipe.run_path()
    result = final_model(run)
    assert result.stage == "dpo" and result.adapter_dir is None and result.model_dir == run / "dpo" / "model"
    assert (run / "dpo" / "model" / "model.safetensors").is_file()
    reference = json.loads((run / "dpo" / "prepared" / "reference.json").read_text(encoding="utf-8"))
    assert len(reference) == len(FACTS)  # the weights before training, computed once
    margins = log_entries(run, "reward_margin")
    assert margins[0] == pytest.approx(0.0, abs=1e-4) and margins[-1] != margins[0]


def test_with_retrieval_a_right_answer_must_cite_its_source_document(monkeypatch):
    from lmforge.config import PairsSpec
    from lmforge.train import pairs

    def passage(path: str) -> dict:
        return {"id": path, "source": {"path": path, "heading": path}, "text": f"The text of {path}."}

    def record(i: int, answer: str, article: str) -> dict:
        messages = [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"It is {answer}."}]
        return {"id": f"q{i}", "kind": "chat", "source": {"path": "qa.jsonl", "line": i}, "messages": messages,
                "meta": {"answer": answer, "article": article}}  # fmt: skip

    records = [record(0, "16 years", "art-07"), record(1, "three days", "art-02"), record(2, "Ministry", "art-09")]
    contexts = {
        "q0": [passage("articles/art-01.md"), passage("articles/art-07.md")],  # the source is passage [2]
        "q1": [passage("articles/art-02.md")],
        "q2": [passage("articles/art-05.md")],  # the source document was not retrieved
    }
    replies = {  # greedy reply, then the samples, per question
        "Question 0?": ["It is 16 years [1].", "It is 16 years [2].", "It is 16 years [2]."],
        "Question 1?": ["Three days [1].", "Three days [1].", "three days, see [1]"],
    }
    monkeypatch.setattr(pairs, "generate_replies", lambda m, t, prompts, **kw: [replies[q(p)][0] for p in prompts])
    monkeypatch.setattr(
        pairs, "sample_replies", lambda m, t, prompts, n, *a, **kw: [replies[q(p)][1 : 1 + n] for p in prompts]
    )

    def q(prompt: list[dict]) -> str:  # the question at the end of the passages prompt
        return next(line for line in prompt[-1]["content"].splitlines() if line.startswith("Question: ")).split(": ")[1]

    built = pairs.build_pairs(None, None, records, PairsSpec(samples=2), seed=0, contexts=contexts)
    assert built.counts["gold_not_retrieved"] == 1 and built.counts["asked"] == 2
    assert built.counts["always_right"] == 1 and built.counts["pairs"] == 1  # q1 always cites its source
    (pair,) = built.records
    assert pair["meta"]["rejected"] == "It is 16 years [1]."  # right fact, wrong passage cited: rejected
    assert pair["messages"][-1]["content"] == "It is 16 years. [2]"  # the gold answer citing the source passage
    assert "[2] articles/art-07.md" in pair["messages"][-2]["content"]  # asked with the retrieved passages


def test_a_judge_ranks_the_candidates_and_demotes_a_right_fact_graded_low(monkeypatch):
    from lmforge.config import PairsSpec
    from lmforge.train import pairs

    def record(i: int, answer: str) -> dict:
        messages = [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"It is {answer}."}]
        return {"id": f"q{i}", "kind": "chat", "source": {"path": "qa.jsonl", "line": i}, "messages": messages,
                "meta": {"answer": answer}}  # fmt: skip

    replies = {  # greedy reply, then the samples
        "Question 0?": ["It is 16 years, or so they say.", "16 years exactly.", "It is 20 years."],
        "Question 1?": ["Three days.", "it is three  days.", "Three days."],
        "Question 2?": ["It is 5 days.", "It is 9 days.", "Maybe 7 days."],
    }
    grades = {
        "It is 16 years, or so they say.": 2,  # contains the gold answer, graded too low: wrong
        "16 years exactly.": 5,
        "It is 20 years.": 3,
        "Three days.": 5,
        "it is three  days.": 1,  # the gold answer itself, graded low: still right
        "It is 5 days.": None,  # no usable grade: the rule without a judge holds (wrong), ranked after graded ones
        "It is 9 days.": 1,
        "Maybe 7 days.": 2,
    }

    def said(prompts: list[list[dict]], first: int, n: int) -> list[list[str]]:
        return [replies[prompt[-1]["content"]][first : first + n] for prompt in prompts]

    monkeypatch.setattr(pairs, "generate_replies", lambda m, t, prompts, **kw: [r[0] for r in said(prompts, 0, 1)])
    monkeypatch.setattr(pairs, "sample_replies", lambda m, t, prompts, n, *a, **kw: said(prompts, 1, n))
    asked: list[tuple[str, str, str]] = []

    def judge(cases: list[tuple[str, str, str]]) -> list[tuple[int | None, str]]:
        asked.extend(cases)
        return [(grades[answer], "scripted") for _, _, answer in cases]

    records = [record(0, "16 years"), record(1, "three days"), record(2, "12 days")]
    spec = PairsSpec(samples=2, chosen="sample", judge={"teacher": {"kind": "local"}, "min_score": 4})
    built = pairs.build_pairs(None, None, records, spec, seed=0, judge=judge)
    assert len(asked) == 8  # each distinct candidate once ("Three days." twice for question 1)
    assert ("Gold answer: It is 16 years.", "Question 0?", "It is 20 years.") in asked
    assert built.counts["judged"] == 7 and built.counts["judge_unusable"] == 1 and built.counts["graded_wrong"] == 1
    assert built.counts["always_right"] == 1 and built.counts["pairs"] == 2 and built.counts["chosen_sampled"] == 1
    first, third = built.records
    assert first["meta"]["rejected"] == "It is 16 years, or so they say."  # the lowest-graded wrong answer
    assert first["messages"][-1]["content"] == "16 years exactly." and first["meta"]["judge"] == {
        "chosen": 5,
        "rejected": 2,
    }
    assert third["meta"]["rejected"] == "It is 9 days." and third["messages"][-1]["content"] == "It is 12 days."

    plain = pairs.build_pairs(None, None, records, PairsSpec(samples=2, chosen="sample"), seed=0)
    assert "judged" not in plain.counts and plain.counts["pairs"] == 2  # without a judge: q0 only has a wrong sample
    assert plain.records[0]["meta"]["rejected"] == "It is 20 years." and "judge" not in plain.records[0]["meta"]


def test_kto_kl_baseline_pairs_each_prompt_with_another_prompts_completion(tiny_tokenizer):
    """A pair gives KTO two items with one prompt; the KL baseline must pair each with a completion written for
    another prompt (the next item's, as before, would be the same question's other answer)."""
    from lmforge.records import chat_record

    records = []
    for n in range(3):
        messages = [{"role": "user", "content": f"Question {n}?"}, {"role": "assistant", "content": f"Right {n}."}]
        records.append(chat_record(messages, {"path": "p.jsonl", "line": n + 1}, None, {"rejected": f"Wrong {n}."}))
    examples, counts = dpo.preference_examples(tiny_tokenizer, records, DPOSpec(loss="kto"), "chat")
    assert counts["completions"] == 6 and [e.desirable for e in examples] == [True, False] * 3
    for index, example in enumerate(examples):
        asked = f"Question {index // 2}?"
        first, second = (tiny_tokenizer.decode(row.input_ids) for row in (example.first, example.second))
        assert asked in first and asked in second  # the same prompt ...
        completion = second.split(asked)[-1]
        assert f"Right {index // 2}." not in completion and f"Wrong {index // 2}." not in completion  # ... another's
    assert dpo.kl_partners(["a", "a", "b", "b", "c"]) == [2, 2, 4, 4, 0]
    assert dpo.kl_partners(["same", "same"]) == [1, 0]  # no other prompt: the next item
