"""A run folder works wherever it is copied, from any working directory: chat, serve, eval, export, resume."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import qa_rows, write_jsonl
from server_process import start_server, stop_server

from lmforge.rundir import StageDir

pytestmark = pytest.mark.integration

FACTS = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(12)]


def lmforge(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_a_copied_run_folder_chats_serves_evaluates_exports_and_resumes_elsewhere(tmp_path, tiny_model_dir):
    work = tmp_path / "work"
    write_jsonl(work / "qa" / "train.jsonl", qa_rows(FACTS))
    write_jsonl(work / "qa" / "test.jsonl", qa_rows([(f"Tell me fact {i}.", a) for i, (_, a) in enumerate(FACTS[:4])]))
    recipe = work / "tiny.yaml"
    recipe.write_text(
        f"""
name: tiny
run_dir: runs
stages: [data, sft, eval]
model: {{ref: {tiny_model_dir}}}
data:
  sources:
    - {{path: qa/train.jsonl, split: train}}
    - {{path: qa/test.jsonl, split: test}}
sft: {{epochs: 1, lr: 5.0e-3, batch_size: 4, max_length: 128, precision: fp32, replay: {{enabled: false}}}}
eval: {{sets: [test], max_new_tokens: 4, batch_size: 4, bootstrap: 0, report: false}}
""",
        encoding="utf-8",
    )
    lmforge(work, "run", "tiny.yaml")  # made with a relative run_dir, from its own folder
    moved = tmp_path / "moved" / "tiny"
    shutil.copytree(work / "runs" / "tiny", moved)
    shutil.rmtree(work / "runs")  # nothing may resolve back to where it was made
    other = tmp_path / "other"
    other.mkdir()

    # resume: every stage is found done where the run now is
    resumed = lmforge(other, "run", str(recipe), "--run-dir", str(moved.parent))
    assert "skipped" in resumed.stdout.lower() or "unchanged" in resumed.stdout.lower(), resumed.stdout
    assert StageDir.open(moved, "sft").manifest["outputs"]["adapter"].startswith(str(moved))

    # eval again (a changed setting), from another working directory
    lmforge(other, "eval", str(recipe), "--run-dir", str(moved.parent), "--set", "eval.max_new_tokens=3")
    assert StageDir.open(moved, "eval").status == "done"

    # chat, with the relative path of the copy
    chatted = subprocess.run(
        [sys.executable, "-m", "lmforge", "chat", os.path.relpath(moved, other), "--max-new-tokens", "3"],
        cwd=other, input="What is fact number 3?\n/exit\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert chatted.returncode == 0 and "Chatting with" in chatted.stdout, chatted.stdout + chatted.stderr

    # serve
    old = Path.cwd()
    os.chdir(other)
    try:
        process, url = start_server(
            [os.path.relpath(moved, other), "--threads", "1"], dict(os.environ), other / "s.log"
        )
    finally:
        os.chdir(old)
    try:
        models = httpx.get(f"{url}/v1/models").json()["data"]
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": models[-1]["id"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
    finally:
        stop_server(process)

    # export (merge only)
    lmforge(other, "export", str(moved), "--gguf", "", "--no-parity")
    assert (moved / "export" / "hf" / "config.json").is_file()
