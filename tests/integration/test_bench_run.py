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
    assert "unsloth" in message and "baseline, trl, trl-fp32, lmforge, lmforge-lowmem" in message


@pytest.mark.slow  # the sft workload's test keeps the bench CLI in the default tier
def test_bench_cpt_workload_trains_packed_document_rows(tmp_path, bench_recipe):
    """--workload cpt: every system trains on full rows of --seq-len tokens packed from the documents;
    trl-fp32 is TRL without its bf16 default; the TRL ratio is against the faster TRL set-up."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"doc{i}.md").write_text(f"# Rule {i}\n\n" + f"Berth {i} costs {i + 2} crowns a day. " * 12, "utf-8")
    text = bench_recipe.read_text(encoding="utf-8").replace(
        "split: test}]", "split: test}, {path: docs, split: documents}]"
    )
    bench_recipe.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    args = ["--recipe", str(bench_recipe), "--workload", "cpt", "--seq-len", "64", "--steps", "3", "--warmup", "1"]
    completed = bench_cli(*args, "--batch-size", "2", "--systems", "baseline,trl-fp32,lmforge", "--out", str(out))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = {r["system"]: r for r in json.loads((out / "bench.json").read_text())["results"]}
    assert all(r["error"] is None and r["tokens_per_s"] > 0 for r in results.values()), results
    assert results["baseline"]["tokens"] == results["lmforge"]["tokens"] == 2 * 2 * 64  # two timed steps, full rows
    assert "TRL defaults but fp32: fp32" in results["trl-fp32"]["notes"] and "packing" in results["trl-fp32"]["notes"]
    assert "packed documents (cpt rows)" in results["lmforge"]["notes"]
    assert "x |" in (out / "bench.md").read_text().splitlines()[-4]  # lmforge's row has a ratio to TRL


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
    from lmforge.config import load_recipe
    from lmforge.data.stage import prepare_records
    from lmforge.perf.bench_worker import sft_records
    from lmforge.pipeline import run_recipe

    recipe = load_recipe(rag_recipe, ["data.questions.enabled=true"])
    splits = prepare_records(recipe.data, recipe.seed).splits
    previewed = sft_records(recipe, splits)  # before the index stage: RAFT rows previewed as plan does
    index = run_recipe(recipe, only=["data", "index"])["index"]
    records = sft_records(recipe, splits)
    generated = index.metrics["raft"]["generated"]["examples"]  # one per fact of data.questions
    assert generated > 0
    assert len(records) == len(splits["train"]) + index.metrics["raft"]["examples"] + generated
    assert len(previewed) == len(records)
    with_gold = index.metrics["raft"]["with_gold"] + index.metrics["raft"]["generated"]["with_gold"]
    assert sum(r["meta"]["raft"]["gold"] for r in previewed[len(splits["train"]) :]) == with_gold

    synth = load_recipe(rag_recipe, ["sft.splits=[train, synth]", "index.raft.enabled=false"])
    with pytest.raises(ValueError, match=r"split 'synth', which a later stage writes"):
        sft_records(synth, splits)
