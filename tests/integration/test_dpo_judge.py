"""dpo.build with a judge: synth's judge, asked through a real `lmforge serve` endpoint or as a local model.

The endpoint's grades are scripted (serve_with_faults.py's ``replies``: a tiny random model writes no
JSON); the HTTP requests, the cache, the parsing and the ranking are the production path.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import qa_rows, write_jsonl
from server_process import start_server, stop_server

from lmforge.config import load_recipe
from lmforge.pipeline import run_recipe
from lmforge.rundir import StageDir, split_path

pytestmark = pytest.mark.integration

FACTS = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(6)]


def write_recipe(tmp_path: Path, model_dir: Path, judge: str, name: str) -> Path:
    write_jsonl(tmp_path / "qa.jsonl", qa_rows(FACTS))
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(
        f"""
name: {name}
run_dir: {tmp_path / "runs"}
stages: [data, dpo]
model: {{ref: {model_dir}}}
data:
  sources: [{{path: qa.jsonl, split: train}}]
dpo:
  build: {{samples: 2, max_new_tokens: 6, batch_size: 8, judge: {judge}}}
  max_steps: 1
  batch_size: 4
  max_length: 128
  precision: fp32
""",
        encoding="utf-8",
    )
    return recipe


def built_pairs(recipe) -> tuple[dict, list[dict]]:
    run = recipe.run_path()
    built = StageDir.open(run, "dpo").manifest["metrics"]["built"]
    lines = split_path(run, "pairs", "test").read_text(encoding="utf-8").splitlines()
    return built, [json.loads(line) for line in lines]


def test_an_endpoint_judge_grades_every_candidate_and_its_grades_rank_them(tmp_path, tiny_model_dir):
    env = {**os.environ}
    env.pop("LMFORGE_API_KEY", None)
    faults = {"replies": [["Grade how faithful", '{"score": 2, "reason": "scripted grade"}']]}
    args = [str(tiny_model_dir), "--name", "judge", "--threads", "1", "--batch-wait-ms", "20"]
    process, url = start_server(args, env, tmp_path / f"server-{time.monotonic_ns()}.log", faults=faults)
    try:
        teacher = f'{{base_url: "{url}/v1", model: judge, concurrency: 4, max_tokens: 32, temperature: 0}}'
        recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, f"{{teacher: {teacher}, min_score: 3}}", "ep"))
        run_recipe(recipe)
    finally:
        stop_server(process)
    built, pairs = built_pairs(recipe)
    with sqlite3.connect(recipe.run_path() / "dpo" / "prepared" / "judge.sqlite") as db:
        cached = db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
    assert built["judged"] == cached > 0 and built["judge_unusable"] == 0  # every distinct candidate, once
    assert built["always_right"] == 0 and built["pairs"] == built["asked"] == len(FACTS)  # all graded 2 < 3
    assert all(pair["meta"]["judge"] == {"chosen": None, "rejected": 2} for pair in pairs)  # gold chosen, ungraded


def test_a_local_judge_without_usable_grades_leaves_the_rule_of_the_gold_answer(tmp_path, tiny_model_dir):
    judge = "{teacher: {kind: local, max_tokens: 8, batch_size: 16}}"  # a random model: no JSON grade
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, judge, "local"))
    run_recipe(recipe)
    built, pairs = built_pairs(recipe)
    assert built["judged"] == 0 and built["judge_unusable"] > 0 and built["graded_wrong"] == 0
    assert built["pairs"] + built["always_right"] == built["asked"] and built["pairs"] == len(pairs) > 0
    assert all(pair["meta"]["judge"]["rejected"] is None for pair in pairs)
