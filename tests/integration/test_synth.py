"""The synth stage against a real `lmforge serve` process (no mocked HTTP client).

The teacher is a tiny random Llama: its replies are real generations (garbage as JSON, which is
what the malformed-reply test wants). Where a test needs valid JSON, test-only faults around the
server (serve_with_faults.py, "replies") script the reply text; everything else (HTTP, retries,
cache, parsing, filters, records) is the real path.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from server_process import free_port, start_server, stop_server

from lmforge.config import load_recipe, shipped_recipe
from lmforge.errors import StageError
from lmforge.pipeline import run_recipe

pytestmark = pytest.mark.integration

QA_REPLY = '```json\n{"pairs": [{"question": "What does rule {n} say?", "answer": "Rule {n} sets 64 years.",}]}\n```'
FAULTS_FOR_JSON = {
    "replies": [
        ["Rewrite this question", '{"paraphrases": ["Tell me about rule {n}.", "Explain rule number {n} please."]}'],
        ["Grade how faithful", '{"score": 5, "reason": "stated in the passage"}'],
        ["question-and-answer pairs", QA_REPLY],
    ]
}


def serve(model_dir: Path, tmp: Path, faults: dict | None = None, port: int | None = None):
    env = {**os.environ}
    env.pop("LMFORGE_API_KEY", None)
    args = [str(model_dir), "--name", "tiny", "--threads", "1", "--batch-wait-ms", "20"]
    return start_server(args, env, tmp / f"server-{time.monotonic_ns()}.log", port=port, faults=faults)


def write_recipe(tmp: Path, model_dir: Path, url: str, task: str, extra: str = "") -> Path:
    prompts = tmp / "prompts.txt"
    prompts.write_text("".join(f"Question number {i}: what is the retirement age?\n" for i in range(12)))
    docs = tmp / "docs"
    docs.mkdir(exist_ok=True)
    for i in range(3):
        (docs / f"rule-{i}.md").write_text(f"# Rule {i}\n\nThe retirement age under rule {i} is 64 years.\n")
    recipe = tmp / f"{task}.yaml"
    recipe.write_text(
        f"""
name: synth-{task}
run_dir: {tmp / "runs"}
stages: [data, synth]
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: prompts.txt, split: prompts, unit: line}}
    - {{path: docs, split: documents}}
synth:
  task: {task}
  teacher: {{base_url: "{url}/v1", model: tiny, concurrency: 2, max_tokens: 12, backoff_s: 0.05, timeout_s: 30}}
{extra}
""",
        encoding="utf-8",
    )
    return recipe


def engine_requests(url: str) -> int:
    return httpx.get(f"{url}/health").json()["engine"]["requests"]


def test_429_then_success_and_cached_rerun(tiny_model_dir, tmp_path):
    process, url = serve(tiny_model_dir, tmp_path, faults={"fail_first": 3})
    try:
        path = write_recipe(tmp_path, tiny_model_dir, url, "answer")
        result = run_recipe(load_recipe(path))["synth"]
        requests = result.metrics["requests"]
        assert requests["retries"] >= 3 and requests["retry_reasons"].get("HTTP 429", 0) >= 3
        assert requests["sent"] == 12 and requests["failed"] == 0
        assert result.metrics["records"] + result.metrics["rejected"] + sum(result.metrics["filtered"].values()) == 12
        records = [json.loads(line) for line in result.records_path.read_text().splitlines()]
        assert records and all(r["kind"] == "chat" and r["messages"][-1]["role"] == "assistant" for r in records)
        assert records[0]["meta"]["synth"]["task"] == "answer"
        # a changed setting re-runs the stage, but every reply comes from the cache
        before = engine_requests(url)
        again = run_recipe(load_recipe(path, ["synth.filters.min_chars=1"]))["synth"]
        assert again.metrics["requests"]["cached"] == 12 and again.metrics["requests"]["sent"] == 0
        assert engine_requests(url) == before
    finally:
        stop_server(process)


def test_server_dies_mid_run_and_the_rerun_sends_only_what_is_missing(tiny_model_dir, tmp_path):
    port = free_port()
    process, url = serve(tiny_model_dir, tmp_path, faults={"delay_ms": 400}, port=port)
    extra = "  limit: 12\n"
    path = write_recipe(tmp_path, tiny_model_dir, url, "answer", extra)
    overrides = ["synth.teacher.max_retries=1", "synth.teacher.timeout_s=3"]
    outcome: dict = {}

    def first_run() -> None:
        try:
            run_recipe(load_recipe(path, overrides))
        except StageError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=first_run)
    worker.start()
    cache = tmp_path / "runs" / "synth-answer" / "synth" / "cache.sqlite"
    deadline = time.monotonic() + 60
    done_before_kill = 0
    while time.monotonic() < deadline and done_before_kill < 4:
        time.sleep(0.1)
        if cache.is_file():
            with sqlite3.connect(cache) as db:
                done_before_kill = db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
    process.send_signal(signal.SIGKILL)
    process.wait()
    worker.join(timeout=120)
    assert "rerun" in outcome.get("error", ""), outcome
    with sqlite3.connect(cache) as db:
        finished = db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
    assert 4 <= finished < 12

    process, url = serve(tiny_model_dir, tmp_path, port=port)
    try:
        result = run_recipe(load_recipe(path, overrides))["synth"]
        assert result.metrics["requests"]["cached"] == finished
        assert result.metrics["requests"]["sent"] == 12 - finished
        assert engine_requests(url) == 12 - finished  # the new server saw only the missing requests
    finally:
        stop_server(process)


def test_malformed_json_replies_are_rejected_with_the_raw_reply(tiny_model_dir, tmp_path):
    process, url = serve(tiny_model_dir, tmp_path)
    try:
        recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, url, "qa_from_docs"))
        result = run_recipe(recipe)["synth"]
    finally:
        stop_server(process)
    assert result.metrics["records"] == 0 and result.metrics["json_mode"] is False  # lmforge serve has no JSON mode
    rejects = [json.loads(line) for line in (result.records_path.parent / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 3
    assert all(r["reason"].startswith("unusable reply") and r["raw"] is not None for r in rejects)
    assert {r["source"]["path"] for r in rejects} == {f"docs/rule-{i}.md" for i in range(3)}


def test_local_teacher_answers_in_batches(tiny_model_dir, tmp_path):
    path = write_recipe(tmp_path, tiny_model_dir, "http://unused", "answer")
    overrides = ["synth.teacher.kind=local", "synth.teacher.model=base", "synth.teacher.batch_size=5"]
    overrides.append("synth.teacher.max_tokens=6")
    result = run_recipe(load_recipe(path, overrides))["synth"]
    assert result.metrics["requests"]["sent"] == 12 and result.metrics["requests"]["failed"] == 0
    metrics = result.metrics
    # the tiny random model often answers greedy whitespace: those replies are rejected as empty, and counted
    assert metrics["records"] + metrics["rejected"] + sum(metrics["filtered"].values()) == 12
    assert set(metrics["rejected_by_reason"]) <= {"answer: empty reply"}
    records = [json.loads(line) for line in result.records_path.read_text().splitlines()]
    assert all(r["messages"][0]["content"].startswith("Question number") for r in records)


def test_synth_then_sft_recipe_with_tiny_settings(tiny_model_dir, tmp_path):
    process, url = serve(tiny_model_dir, tmp_path, faults=FAULTS_FOR_JSON)
    overrides = [
        f"model.ref={tiny_model_dir}",
        "stages=[data,synth,sft]",
        f"run_dir={tmp_path / 'runs'}",
        f"synth.teacher.base_url={url}/v1",
        "synth.teacher.model=tiny",
        "synth.teacher.max_tokens=16",
        "synth.limit=4",
        "synth.judge=true",
        "data.chunk_chars=200",
        "sft.max_steps=2",
        "sft.batch_size=4",
        "sft.max_length=128",
        "sft.precision=fp32",
    ]
    command = [sys.executable, "-m", "lmforge.cli", "run", str(shipped_recipe("synth-then-sft"))]
    for item in overrides:
        command += ["--set", item]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    finally:
        stop_server(process)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "runs" / "synth-then-sft"
    stats = json.loads((run / "synth" / "stats.json").read_text())
    # 4 chunks -> 4 pairs (repaired: fence + trailing comma) -> judged 5 -> + 2 paraphrases each
    assert stats["replies_repaired"] == 4 and stats["records"] == 12
    records = [json.loads(line) for line in (run / "synth" / "records.jsonl").read_text().splitlines()]
    assert records[0]["messages"][0]["role"] == "system" and "Kestria" in records[0]["messages"][0]["content"]
    assert {r["meta"]["synth"]["kind"] for r in records} == {"original", "paraphrase"}
    assert all(r["meta"]["synth"]["judge_score"] == 5 for r in records)
    assert records[0]["source"]["path"].startswith("articles/")
    sft = json.loads((run / "sft" / "manifest.json").read_text())
    assert sft["status"] == "done" and sft["metrics"]["steps"] == 2


FACT_REPLIES = {
    "replies": [
        [
            "List every fact the passage states",
            '{"facts": ["The retirement age is 64 years.", "Pilots serve 99 years."]}',
        ],
        [
            "different questions that each ask for this fact",
            '{"questions": ["How old must one be to retire?", "At what age does retirement begin under rule {n}?", '
            '"Which age is set for retiring by rule {n}?"]}',
        ],
        ["most important entities", '{"entities": ["the retirement age", "rule {n}", "the pension office"]}'],
        ["write one paragraph on how", "The pension office applies the retirement age the rule sets."],
    ]
}


def test_facts_from_docs_asks_every_fact_in_several_wordings(tiny_model_dir, tmp_path):
    """Two phases through the real server: facts per chunk, then questions per fact, each answered by its fact;
    a fact with a number its chunk does not hold is dropped, and so is a question an evaluation split asks."""
    test_split = tmp_path / "test.jsonl"
    test_split.write_text(json.dumps({"question": "How old must one be to retire?", "answer": "64"}) + "\n")
    process, url = serve(tiny_model_dir, tmp_path, faults=FACT_REPLIES)
    try:
        extra = "  questions_per_fact: 3\n"
        path = write_recipe(tmp_path, tiny_model_dir, url, "facts_from_docs", extra)
        text = path.read_text().replace("split: documents}", "split: documents}\n    - {path: test.jsonl, split: test}")
        path.write_text(text)
        result = run_recipe(load_recipe(path, ["data.questions.enabled=false"]))["synth"]
    finally:
        stop_server(process)
    metrics = result.metrics
    assert metrics["requests"]["sent"] == 3 + 6  # 3 chunks' fact lists, then 2 facts x 3 chunks
    assert metrics["filtered"]["number not in chunk"] == 9  # "99 years" is in no chunk: its 3 x 3 questions
    assert metrics["filtered"]["repeats an evaluation question"] == 1
    records = [json.loads(line) for line in result.records_path.read_text().splitlines()]
    assert len(records) == 6 and {r["meta"]["synth"]["kind"] for r in records} == {"fact"}
    assert all(r["messages"][-1]["content"] == "The retirement age is 64 years." for r in records)
    assert "How old must one be to retire?" not in {r["messages"][-2]["content"] for r in records}
    assert all(r["source"]["path"].startswith("docs/rule-") for r in records)


def test_entigraph_writes_passages_relating_pairs_of_entities(tiny_model_dir, tmp_path):
    process, url = serve(tiny_model_dir, tmp_path, faults=FACT_REPLIES)
    try:
        path = write_recipe(tmp_path, tiny_model_dir, url, "entigraph", "  entities: 3\n  entity_pairs: 2\n")
        result = run_recipe(load_recipe(path, ["data.questions.enabled=false"]))["synth"]
    finally:
        stop_server(process)
    assert result.metrics["requests"]["sent"] == 3 + 3 * 2  # entities per chunk, then 2 pairs per chunk
    records = [json.loads(line) for line in result.records_path.read_text().splitlines()]
    assert records and {r["meta"]["synth"]["kind"] for r in records} == {"relation"}
    for record in records:
        a, b = record["meta"]["synth"]["entities"]
        assert record["messages"][-2]["content"] == f"How do {a} and {b} relate to each other?"
        assert a in {"the retirement age", "the pension office"} or a.startswith("rule ")
