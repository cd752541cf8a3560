"""The shipped training recipes, run through the CLI with tiny in-process models (``--set`` overrides)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_tiny_llama, build_tiny_tokenizer
from test_train_models import build_tiny_bert, build_tiny_t5, save_model
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.config import shipped_recipe
from lmforge.rundir import StageDir

pytestmark = pytest.mark.integration


def run_cli(recipe: str, tmp_path: Path, *overrides: str) -> Path:
    args = ["run", str(shipped_recipe(recipe)), "--run-dir", str(tmp_path / "runs")]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    return tmp_path / "runs" / recipe


def done(run: Path, *stages: str) -> None:
    for stage in stages:
        assert StageDir.open(run, stage).status == "done", stage


TINY_EVAL = ("eval.limit=3", "eval.max_new_tokens=4", "eval.bootstrap=0", "eval.report=false")


def test_cpt_then_sft_recipe(tmp_path, tiny_model_dir):
    run = run_cli(
        "cpt-then-sft",
        tmp_path,
        f"model.ref={tiny_model_dir}",
        "cpt.max_length=128",
        "cpt.max_steps=2",
        "cpt.precision=fp32",
        "sft.max_steps=2",
        "sft.max_length=512",
        "sft.precision=fp32",
        *TINY_EVAL,
    )
    done(run, "data", "cpt", "sft", "eval")
    cpt = StageDir.open(run, "cpt").manifest
    assert cpt["metrics"]["documents"] == 42 and cpt["metrics"]["steps"] == 2
    sft = StageDir.open(run, "sft").manifest
    assert sft["inputs"]["starts_from"]["how"] == "cpt-merge"
    assert (run / "sft" / "base" / "config.json").is_file()


def test_sft_then_dpo_recipe(tmp_path, tiny_model_dir):
    run = run_cli(
        "sft-then-dpo",
        tmp_path,
        f"model.ref={tiny_model_dir}",
        "sft.max_steps=2",
        "sft.precision=fp32",
        "dpo.max_steps=2",
        "dpo.precision=fp32",
        "dpo.build.limit=12",
        "dpo.build.max_new_tokens=6",
        *TINY_EVAL,
    )
    done(run, "data", "sft", "dpo", "eval")
    dpo = StageDir.open(run, "dpo").manifest
    assert dpo["outputs"]["starts_from"] == "sft" and dpo["metrics"]["built"]["asked"] == 12
    assert dpo["metrics"]["pairs"] == dpo["metrics"]["built"]["pairs"] > 0
    summary = json.loads((run / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert summary["variants"] == ["base", "sft", "tuned"]


def test_sft_then_grpo_recipe(tmp_path, tiny_model_dir):
    run = run_cli(
        "sft-then-grpo",
        tmp_path,
        f"model.ref={tiny_model_dir}",
        "sft.max_steps=2",
        "sft.precision=fp32",
        "sft.documents.enabled=false",
        "grpo.max_steps=2",
        "grpo.precision=fp32",
        "grpo.max_new_tokens=6",
        "grpo.limit=8",
        *TINY_EVAL,
    )
    done(run, "data", "sft", "grpo", "eval")
    grpo = StageDir.open(run, "grpo").manifest
    assert grpo["outputs"]["starts_from"] == "sft" and grpo["metrics"]["asked"] == 8
    summary = json.loads((run / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert summary["variants"] == ["base", "sft", "tuned"]


def test_extract_metadata_recipe(tmp_path):
    model_dir = save_model(*build_tiny_t5(), tmp_path / "t5")
    run = run_cli(
        "extract-metadata",
        tmp_path,
        f"model.ref={model_dir}",
        "seq2seq.max_steps=3",
        "seq2seq.max_input_length=128",
        "seq2seq.max_output_length=32",
        "seq2seq.precision=fp32",
    )
    done(run, "data", "seq2seq")
    summary = json.loads((run / "seq2seq" / "summary.json").read_text())
    assert summary["test"]["tuned"]["n"] == 12 and summary["test"]["base"]["n"] == 12
    fields = {"reference", "claimant", "office", "benefit", "decision", "monthly_amount", "start_date"}
    assert set(summary["test"]["tuned"]["fields"]) == fields


def test_distill_recipe(tmp_path, tiny_model_dir):
    tokenizer = build_tiny_tokenizer()
    teacher = save_model(build_tiny_llama(tokenizer, seed=3), tokenizer, tmp_path / "teacher")
    run = run_cli(
        "distill",
        tmp_path,
        f"model.ref={tiny_model_dir}",
        f"sft.distill.teacher={teacher}",
        "sft.max_steps=2",
        "sft.max_length=512",
        "sft.precision=fp32",
        *TINY_EVAL,
    )
    done(run, "data", "sft", "eval")
    meta = json.loads((run / "sft" / "teacher" / "meta.json").read_text())
    assert meta["top_k"] == 20 and meta["teacher"] == str(teacher)


def test_mlm_cpt_recipe(tmp_path):
    model_dir = save_model(*build_tiny_bert(), tmp_path / "bert")
    run = run_cli(
        "mlm-cpt",
        tmp_path,
        f"model.ref={model_dir}",
        "mlm.max_length=64",
        "mlm.max_steps=3",
        "mlm.precision=fp32",
    )
    done(run, "data", "mlm")
    assert (run / "mlm" / "model" / "model.safetensors").is_file()
    metrics = StageDir.open(run, "mlm").manifest["metrics"]
    assert metrics["steps"] == 3 and metrics["documents"] > 0


def test_demo_docs_only_recipe(tmp_path, tiny_model_dir):
    """Documents alone: questions written from the articles, a fifth of the sections held out and evaluated."""
    run = run_cli(
        "demo-docs-only",
        tmp_path,
        f"model.ref={tiny_model_dir}",
        # the tiny tokenizer spends a token per character or two: short passages, none besides the gold one
        "index.chunk.max_tokens=24",
        "index.chunk.overlap=4",
        "index.raft.min_distractors=0",
        "index.raft.max_distractors=0",
        "sft.max_steps=2",
        "sft.precision=fp32",
        *TINY_EVAL,
    )
    done(run, "data", "index", "sft", "eval")
    questions = json.loads((run / "data" / "stats.json").read_text())["generated"]["questions"]
    splits = {}
    for name in ("doc_qa", "doc_qa_test"):
        lines = (run / "data" / "splits" / f"{name}.jsonl").read_text().splitlines()
        splits[name] = [json.loads(line) for line in lines]
    assert questions["written"] == len(splits["doc_qa"]) > 0
    assert questions["held_out"]["questions"] == len(splits["doc_qa_test"]) > 0
    sections = {name: {r["meta"]["section"] for r in records} for name, records in splits.items()}
    assert not sections["doc_qa"] & sections["doc_qa_test"]  # never the same section on both sides
    raft = StageDir.open(run, "index").manifest["metrics"]["raft"]
    assert raft["questions"] == len(splits["doc_qa"]) and raft["closed_book"] == 0  # sft trains doc_qa itself
    sft = StageDir.open(run, "sft").manifest
    assert [Path(p).stem for p in sft["inputs"]["train"]] == ["doc_qa", "raft"]
    assert "replay_records" in sft["metrics"]  # on by default: the recipe brings no general records
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert {"base", "base+rag", "tuned", "tuned+rag"} <= set(summary["sets"]["doc_qa_test"])
