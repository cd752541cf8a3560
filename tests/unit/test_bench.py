"""``lmforge bench`` on a tiny model: every system trains the same batches and is measured the same way."""

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from lmforge.errors import ConfigError
from lmforge.perf import bench, bench_worker
from lmforge.perf.bench import BenchResult, BenchSettings


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory, tiny_model_dir):
    """Each system's worker, run in this process (the CLI runs each in a child process), 3 steps of batch 4."""
    from conftest import qa_rows, write_jsonl

    root = tmp_path_factory.mktemp("bench")
    train = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(10)]
    write_jsonl(root / "qa" / "train.jsonl", qa_rows(train))
    write_jsonl(
        root / "qa" / "test.jsonl", qa_rows([(f"Tell me fact {i}.", f"Fact {i} is {i * 7}.") for i in range(3)])
    )
    recipe = root / "tiny.yaml"
    recipe.write_text(
        f"name: tiny\nstages: [data, sft]\nmodel: {{ref: {tiny_model_dir}}}\n"
        "data: {sources: [{path: qa/train.jsonl, split: train}, {path: qa/test.jsonl, split: test}]}\n"
        "sft: {lr: 1.0e-3, lora: {r: 4, alpha: 8}}\n",
        encoding="utf-8",
    )
    settings = BenchSettings(recipe=str(recipe), seq_len=64, steps=3, warmup=1, batch_size=4, baseline_tokens=128)
    results = {}
    for system in bench.SYSTEMS:
        config = {"settings": asdict(settings), "system": system, "result": str(root / f"{system}.json")}
        results[system] = bench_worker.worker(config)
    return results


def test_every_system_trains_the_same_steps_on_the_same_tokens(tiny_results):
    results = list(tiny_results.values())
    assert all(r.steps == 3 and r.error is None for r in results)
    # Steps 2 and 3 are timed; every system counts the same real tokens (it trains the same examples) ...
    assert len({r.tokens for r in results}) == 1
    # ... and the baseline computes its padding too: micro-batches of 2 rows of 64 tokens, accumulated.
    baseline = tiny_results["baseline"]
    assert baseline.micro_batch == 2 and baseline.padded_tokens == 2 * 4 * 64 > baseline.tokens
    assert all(len(r.step_seconds) == 2 and r.seconds > 0 and r.tokens_per_s > 0 for r in results)
    assert all(r.peak_rss_mb > 100 and r.flops_per_token > 0 and 0 <= r.mfu < 1 for r in results)


def test_losses_agree_across_systems(tiny_results):
    """Same batches in the same order: the per-step losses differ only by arithmetic (fp32 vs bf16)."""
    reference = tiny_results["baseline"]
    for result in tiny_results.values():
        assert len(result.losses) == 3
        for got, want in zip(result.losses, reference.losses, strict=True):
            assert got == pytest.approx(want, rel=0.01)
        assert result.heldout_loss == pytest.approx(reference.heldout_loss, rel=0.01)
    # Training moved the adapter: the held-out loss is not the untrained one for every system alike by chance.
    assert reference.losses[-1] != reference.losses[0]


def test_lowmem_turns_on_activation_checkpointing(tiny_results):
    assert "activation checkpointing" in tiny_results["lmforge-lowmem"].notes
    assert "activation checkpointing" not in tiny_results["lmforge"].notes
    assert "TRL defaults" in tiny_results["trl"].notes


def test_bench_order_is_length_grouped_and_seeded():
    lengths = [5, 90, 40, 7, 66, 12, 80, 33]
    order = bench_worker.bench_order(lengths, 12, seed=1)
    assert len(order) == 12 and set(order) == set(range(8))  # cycles once all examples are used
    assert order == bench_worker.bench_order(lengths, 12, seed=1)
    assert [lengths[i] for i in order] == sorted((lengths[i] for i in order), reverse=True)  # one mega-batch


def test_flops_per_token_counts_block_matmuls_and_trainable_ones(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    full = bench_worker.flops_per_token(model)
    hidden, inter, layers = 64, 128, 2
    q, kv = hidden, 2 * 16  # 4 heads of 16, 2 kv heads
    block = hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * inter
    assert full == 6 * layers * block  # every weight trains: 4 N + 2 N
    lora = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    adapter = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert bench_worker.flops_per_token(lora) == 4 * (layers * block + adapter) + 2 * adapter


def _result(system, seq_len, tokens_per_s, error=None):
    return BenchResult(
        system=system, seq_len=seq_len, tokens_per_s=tokens_per_s, peak_rss_mb=1000, mfu=0.1, error=error, notes="n"
    )


def test_run_bench_writes_json_and_a_markdown_table(tmp_path, monkeypatch):
    fake = {
        "baseline": _result("baseline", 256, 100.0),
        "trl": _result("trl", 256, 400.0),
        "trl-fp32": _result("trl-fp32", 256, 600.0),
        "lmforge": _result("lmforge", 256, 800.0),
        "lmforge-lowmem": _result("lmforge-lowmem", 256, 0.0, error="Traceback ...\nMemoryError"),
    }
    monkeypatch.setattr(bench, "_run_worker", lambda settings, system, n, out: replace(fake[system], seq_len=n))
    results = bench.run_bench(BenchSettings(systems=list(bench.SYSTEMS)), [256, 512], tmp_path)
    assert [(r.seq_len, r.system) for r in results] == [(n, s) for n in (256, 512) for s in bench.SYSTEMS]
    document = json.loads((tmp_path / "bench.json").read_text())
    assert set(document) == {"settings", "machine", "results"}
    assert document["machine"]["physical_cores"] >= 1 and document["settings"]["steps"] == 12
    assert [r["system"] for r in document["results"]] == 2 * list(bench.SYSTEMS)
    table = (tmp_path / "bench.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 256")]
    assert len(rows) == 5 and len([line for line in table.splitlines() if line.startswith("| 512")]) == 5
    # "vs TRL" is against the faster TRL set-up (here trl-fp32 at 600 tokens/s)
    assert "| 256 | lmforge | 800 | 8.00x | 1.33x |" in rows[3]
    assert "| 256 | baseline | 100 | 1.00x | 0.17x |" in rows[0]
    assert "| 256 | trl | 400 | 4.00x | 0.67x |" in rows[1]
    assert "failed" in rows[4] and "MemoryError" in rows[4]
    assert "MFU = tokens/s x (4N + 2T)" in table


def test_unknown_system_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="axolotl"):
        bench.run_bench(BenchSettings(systems=["lmforge", "axolotl"]), [256], tmp_path)
    assert not (tmp_path / "logs").exists()


def test_matmul_ceiling_lists_the_matmuls_the_bench_formula_counts(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import runpy
    import sys

    from lmforge.perf.plan import ModelShape

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "matmul_ceiling.py"
    ceiling = runpy.run_path(str(script))  # the functions, without running main
    smollm2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3}
    shape = ModelShape.from_config({**smollm2, "num_hidden_layers": 30, "vocab_size": 49152})
    rows, row_len, rank = 8, 70, 32
    ops = ceiling["step_matmuls"](shape, rows, row_len, 192, rank)
    flops: dict[str, float] = {}
    for group, (batch, m, k, n) in ops:
        flops[group] = flops.get(group, 0.0) + 2.0 * batch * m * k * n
    # weights and LoRA matmuls: exactly the bench's 4 N + 2 T per token (N with LoRA, T the LoRA weights)
    lora = shape.lora_params(rank)
    counted = sum(flops[g] for g in ("frozen forward", "frozen input grad", "lora forward", "lora backward"))
    assert counted / (rows * row_len) == 4 * (30 * shape.block_matmul_params() + lora) + 2 * lora
    assert sum(1 for g, _ in ops if g == "frozen forward") == 30 * 7
    assert {"attention", "output head"} <= set(flops)

    out = tmp_path / "ceiling.json"
    argv = ["matmul_ceiling.py", "--model", str(tiny_model_dir), "--rows", "2", "--row-len", "16", "--reps", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--trained", "8", "--rank", "4", "--json", str(out)])
    runpy.run_path(str(script), run_name="__main__")
    result = json.loads(out.read_text())
    assert result["ceiling_tokens_per_s"] > 0 and result["ceiling_mfu"] > 0
    assert "MFU ceiling" in capsys.readouterr().out
