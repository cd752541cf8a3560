"""``lmforge bench`` through the CLI: every system in its own process, the output files, and (slow) SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import qa_rows, write_jsonl
from test_rag_pipeline import rag_recipe as rag_recipe  # a fixture

pytestmark = pytest.mark.integration


def bench_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "bench", *args], capture_output=True, text=True, timeout=900
    )


@pytest.fixture
def bench_recipe(tmp_path, tiny_model_dir):
    write_jsonl(
        tmp_path / "qa" / "train.jsonl", qa_rows([(f"What is fact {i}?", f"Fact {i} is {i * 7}.") for i in range(9)])
    )
    write_jsonl(tmp_path / "qa" / "test.jsonl", qa_rows([("Tell me fact 2.", "Fact 2 is 14.")]))
    recipe = tmp_path / "bench.yaml"
    recipe.write_text(
        f"name: bench\nstages: [data, sft]\nmodel: {{ref: {tiny_model_dir}}}\n"
        "data: {sources: [{path: qa/train.jsonl, split: train}, {path: qa/test.jsonl, split: test}]}\n",
        encoding="utf-8",
    )
    return recipe


def test_bench_cli_runs_every_system_and_writes_json_and_markdown(tmp_path, bench_recipe):
    out = tmp_path / "out"
    args = ["--recipe", str(bench_recipe), "--seq-len", "48", "--steps", "3", "--warmup", "1", "--batch-size", "4"]
    completed = bench_cli(*args, "--out", str(out), "--set", "sft.lora.r=4")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    systems = ["baseline", "trl", "lmforge", "lmforge-lowmem"]
    results = json.loads((out / "bench.json").read_text())["results"]
    assert [r["system"] for r in results] == systems
    assert all(r["error"] is None and r["steps"] == 3 and r["tokens_per_s"] > 0 for r in results), results
    # Same examples for every system: the same real tokens; the baseline pads to the sequence length.
    assert len({r["tokens"] for r in results}) == 1
    assert results[0]["padded_tokens"] == 2 * 4 * 48
    table = (out / "bench.md").read_text()
    assert table.count("| 48 |") == 4 and "MFU =" in table
    assert sorted(p.name for p in (out / "logs").glob("*.log")) == sorted(f"{s}-48.log" for s in systems)


def test_bench_cli_refuses_unknown_systems(tmp_path):
    completed = bench_cli("--systems", "lmforge,unsloth", "--out", str(tmp_path))
    assert completed.returncode == 2
    message = " ".join(completed.stderr.split())  # rich wraps long lines
    assert "unsloth" in message and "baseline, trl, lmforge, lmforge-lowmem" in message


@pytest.mark.slow
def test_smollm2_lmforge_beats_trl_with_the_same_losses(tmp_path):
    """A short real bench (SmolLM2-135M, demo data, sequence length 256): lmforge is faster than TRL,
    holds less memory, and both reach the same losses on the same batches."""
    out = tmp_path / "out"
    completed = bench_cli("--systems", "trl,lmforge", "--seq-len", "256", "--steps", "5", "--out", str(out))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    trl, ours = json.loads((out / "bench.json").read_text())["results"]
    assert ours["tokens_per_s"] > 1.2 * trl["tokens_per_s"]
    assert ours["peak_rss_mb"] < trl["peak_rss_mb"]
    assert ours["train_loss"] == pytest.approx(trl["train_loss"], rel=0.02)
    assert ours["heldout_loss"] == pytest.approx(trl["heldout_loss"], rel=0.02)


def test_bench_reads_every_split_the_recipes_sft_trains_on(rag_recipe):
    """A RAFT recipe trains on train + raft; raft is written by the index stage, not by data."""
    from lmforge.bench_worker import sft_records
    from lmforge.config import load_recipe
    from lmforge.data.prepare import prepare_records
    from lmforge.pipeline import run_recipe

    recipe = load_recipe(rag_recipe)
    splits = prepare_records(recipe.data, recipe.seed).splits
    with pytest.raises(ValueError, match=r"split 'raft', which a later stage writes .*stages=\[data,index\]"):
        sft_records(recipe, splits)
    index = run_recipe(recipe, only=["data", "index"])["index"]
    records = sft_records(recipe, splits)
    assert len(records) == len(splits["train"]) + index.metrics["raft"]["examples"] > len(splits["train"])
