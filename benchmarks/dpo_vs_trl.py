"""lmforge's dpo stage against TRL's DPOTrainer on the same preference pairs: tokens/s and peak RSS.

    python benchmarks/dpo_vs_trl.py --pairs 64 --epochs 1

The pairs come from the demo domain: each training question with its gold answer chosen and another
question's answer rejected (fixed, so both systems see the same text). Both train a LoRA adapter
(r 16, alpha 32, every linear layer, no dropout) on SmolLM2-135M-Instruct with the same learning
rate, pairs per step and precision (bf16 autocast where the CPU has native bf16, else fp32), each
in its own process. lmforge computes the reference log-probabilities once before training; TRL
(its default) runs the reference forward pass in every step: both are in the time. Tokens are the
rows' tokens (prompt + completion, chosen and rejected) as lmforge's tokenizer counts them, times
the epochs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEMS = ("lmforge", "trl")


def pairs(count: int) -> list[dict[str, str]]:
    from lmforge.config import package_dir

    path = package_dir() / "demo" / "qa" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()][:count]
    answers = [row["messages"][-1]["content"] for row in rows]
    return [
        {"prompt": row["messages"][0]["content"], "chosen": answers[i], "rejected": answers[(i + 7) % len(rows)]}
        for i, row in enumerate(rows)
    ]


def run_lmforge(work: Path, settings: dict) -> dict:
    from lmforge.config import load_recipe
    from lmforge.pipeline import run_recipe
    from lmforge.rundir import StageDir

    recipe_path = work / "bench-dpo.yaml"
    recipe_path.write_text(
        f"""
name: bench-dpo
run_dir: {work / "runs"}
stages: [data, dpo]
model: {{ref: {settings["model"]}}}
data: {{sources: [{{path: {work / "pairs.jsonl"}, split: train}}]}}
dpo:
  lora: {{r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}}
  epochs: {settings["epochs"]}
  lr: {settings["lr"]}
  beta: 0.1
  batch_size: {settings["batch_size"]}
  max_length: 512
  warmup_ratio: 0.0
  logging_steps: 1
  report_to: []
""",
        encoding="utf-8",
    )
    recipe = load_recipe(recipe_path)
    run_recipe(recipe)
    metrics = StageDir.open(recipe.run_path(), "dpo").manifest["metrics"]
    seconds = metrics["seconds"] + metrics["reference_seconds"]
    return {
        "seconds": seconds,
        "tokens": settings["tokens"],  # counted alike for both systems (token_count)
        "peak_rss_mb": metrics["peak_rss_mb"],
        "train_loss": metrics["train_loss"],
        "precision": metrics["precision"],
        "reward_accuracy": metrics.get("reward_accuracy"),
    }


def run_trl(work: Path, settings: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from lmforge.engine.compute import use_bf16
    from lmforge.hardware import peak_rss_mb
    from lmforge.models import load_causal_lm, load_tokenizer, resolve_model

    model_dir = resolve_model(settings["model"])
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, dtype=torch.float32)
    rows = [json.loads(line) for line in (work / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    )
    bf16 = use_bf16("auto")
    args = DPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=settings["batch_size"],
        num_train_epochs=settings["epochs"], learning_rate=settings["lr"], beta=0.1, max_length=512,
        warmup_steps=0, logging_steps=1, report_to=[], use_cpu=True, bf16=bf16, save_strategy="no",
        dataloader_num_workers=0,
    )  # fmt: skip
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    accuracies = [e["rewards/accuracies"] for e in trainer.state.log_history if "rewards/accuracies" in e]
    return {
        "seconds": round(seconds, 1),
        "tokens": settings["tokens"],
        "peak_rss_mb": peak_rss_mb(),
        "train_loss": round(float(output.training_loss), 5),
        "precision": "bf16" if bf16 else "fp32",
        "reward_accuracy": accuracies[-1] if accuracies else None,
    }


def token_count(work: Path, settings: dict) -> int:
    """Tokens of every chosen and rejected row (chat template applied), times the epochs."""
    from lmforge.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(settings["model"]))
    total = 0
    for line in (work / "pairs.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for answer in (row["chosen"], row["rejected"]):
            messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": answer}]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            total += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return total * settings["epochs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)  # a worker process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}

    if args.system:  # one system, in its own process; prints its result as the last line
        work = Path(args.work)
        settings["tokens"] = token_count(work, settings)
        result = run_lmforge(work, settings) if args.system == "lmforge" else run_trl(work, settings)
        print(json.dumps(result))
        return

    results = {}
    with tempfile.TemporaryDirectory(prefix="lmforge-dpo-bench-") as folder:
        work = Path(folder)
        (work / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs(args.pairs)), encoding="utf-8")
        for system in SYSTEMS:
            command = [sys.executable, __file__, "--system", system, "--work", str(work)]
            command += ["--model", args.model, "--pairs", str(args.pairs), "--epochs", str(args.epochs)]
            command += ["--batch-size", str(args.batch_size), "--lr", str(args.lr)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{system} failed:\n{done.stderr[-3000:]}")
            results[system] = json.loads(done.stdout.strip().splitlines()[-1])

    from lmforge.hardware import cpu_isa

    print(f"\n{args.pairs} pairs x {args.epochs} epoch(s), {args.batch_size} pairs per step, CPU ISA {cpu_isa()}\n")
    print("| system | precision | seconds | tokens/s | vs TRL | peak RSS (MB) | train loss | reward accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    trl_rate = results["trl"]["tokens"] / results["trl"]["seconds"]
    for system, r in results.items():
        rate = r["tokens"] / r["seconds"]
        print(
            f"| {system} | {r['precision']} | {r['seconds']:.1f} | {rate:.0f} | {rate / trl_rate:.2f}x | "
            f"{r['peak_rss_mb']:,.0f} | {r['train_loss']:.4f} | {r['reward_accuracy']} |"
        )


if __name__ == "__main__":
    main()
