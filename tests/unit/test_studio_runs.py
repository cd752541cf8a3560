"""Runs started from the studio: real `lmforge run` processes whose state lives in the run folder, so a
reloaded page, a second tab or a restarted studio see the same run; one process per run folder; stop is
Ctrl-C (the stage stays resumable) and resume carries on from the last checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import qa_rows, write_jsonl

from lmforge.errors import StageError
from lmforge.studio.runs import Runs

FACTS = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(12)]


def recipe(tmp_path: Path, stages: str, extra: str = "", model: Path | None = None) -> Path:
    write_jsonl(tmp_path / "qa.jsonl", qa_rows(FACTS))
    path = tmp_path / "r.yaml"
    model_line = f"model: {{ref: {model}}}\n" if model else ""
    data = "data: {sources: [{path: qa.jsonl, split: train}]}\n"
    path.write_text(f"name: studio-run\nstages: {stages}\n{model_line}{data}{extra}", encoding="utf-8")
    return path


def wait_for(check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_run_started_here_is_seen_by_every_reader_and_runs_once_at_a_time(tmp_path: Path):
    runs = Runs(tmp_path / "runs")
    name = runs.start(recipe(tmp_path, "[data]"))
    assert name == "studio-run" and runs.state(name) == "running"
    with pytest.raises(StageError, match="already running"):
        runs.start(recipe(tmp_path, "[data]"))
    wait_for(lambda: runs.state(name) == "finished")
    other = Runs(tmp_path / "runs")  # another tab's view, or the studio started again
    assert other.names() == ["studio-run"] and other.state(name) == "finished"
    assert other.stages(name) == [
        {"stage": "data", "status": "done", "attempts": 1, "seconds": other.stages(name)[0]["seconds"],
         "summary": other.stages(name)[0]["summary"], "error": ""}
    ]  # fmt: skip
    assert "✔ data" in other.log_tail(name)
    assert other.overview() == [{"run": "studio-run", "process": "finished", "stages": "data: done"}]
    with pytest.raises(StageError, match="is not a run under"):
        other.path("../elsewhere")


def test_a_bad_recipe_is_refused_before_any_process_starts(tmp_path: Path):
    bad = recipe(tmp_path, "[data]", "sft: {lr: -1}\n")
    runs = Runs(tmp_path / "runs")
    with pytest.raises(Exception, match=r"sft\.lr: got -1"):
        runs.start(bad)
    assert runs.names() == []


def test_stop_leaves_the_stage_resumable_and_resume_carries_on(tmp_path: Path, tiny_model_dir: Path):
    # Far more steps than the test waits for: every stop lands mid-training, on any machine.
    sft = (
        "sft: {max_steps: 100000, lr: 1.0e-3, batch_size: 1, max_length: 64, precision: fp32, logging_steps: 1, "
        "save_steps: 3, report_to: []}\n"
    )
    runs = Runs(tmp_path / "runs")
    name = runs.start(recipe(tmp_path, "[data, sft]", sft, tiny_model_dir))
    checkpoints = runs.path(name) / "sft" / "checkpoints"
    wait_for(lambda: len(runs.curves(name)) >= 8 and any(checkpoints.glob("checkpoint-*")), timeout=180)
    assert runs.stop(name)
    assert runs.state(name) == "stopped", runs.log_tail(name)
    stages = {row["stage"]: row for row in runs.stages(name)}
    assert stages["sft"]["status"] == "interrupted", runs.log_tail(name)  # running in its manifest, no process
    stopped_at = max(point["step"] for point in runs.curves(name))
    saved = max(int(path.name.split("-")[1]) for path in checkpoints.glob("checkpoint-*"))

    runs.resume(name)
    assert runs.state(name) == "running"
    manifest = runs.path(name) / "sft" / "manifest.json"
    wait_for(lambda: json.loads(manifest.read_text()).get("attempts") == 2, timeout=120)
    wait_for(lambda: max(point["step"] for point in runs.curves(name)) > stopped_at, timeout=180)
    steps = [point["step"] for point in runs.curves(name) if point["series"] == "sft train"]
    assert steps == sorted(steps) and saved <= stopped_at  # from the checkpoint on, no step twice
    assert "resum" in runs.log_tail(name, 200).lower(), runs.log_tail(name, 200)
    assert runs.stop(name) and runs.state(name) == "stopped"
