"""``lmforge bench``: training throughput and memory of lmforge against the usual baselines, side by side.

Every system trains the same LoRA adapter (same rank, targets, learning rate, number of optimizer
steps and examples per step) on the same chat data, each in its own child process so that its
peak RSS is its own:

* ``baseline``: the seed-style script: HF Trainer, fp32, every example padded to the sequence length;
* ``trl``: TRL's ``SFTTrainer`` with its defaults (gradient checkpointing, bf16 autocast, batches
  padded to their longest example), loss on the completion only;
* ``lmforge``: lmforge's training path (``train.causal.build_trainer``);
* ``lmforge-lowmem``: the same with activation checkpointing, to compare with TRL on memory.

Reported per system: non-padding tokens per second, peak RSS, the mean training loss of the last
steps and the answer-only loss on the same held-out questions after training, and MFU.

MFU = 6 x N x tokens/s / peak, with N the non-embedding parameters (Kaplan et al.'s convention; it
credits neither the output layer nor attention, so it is conservative) and peak the CPU's bf16
matmul peak: cores x GHz x 1024 FLOP/cycle with AMX (4.3 TFLOP/s for 2 cores at 2.1 GHz), or
the fp32 FMA peak (cores x GHz x 64) without it. On CUDA, pass ``--peak-tflops``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SYSTEMS = ("baseline", "trl", "lmforge", "lmforge-lowmem")
LORA = {"r": 16, "alpha": 32}


@dataclass
class BenchSettings:
    """What every system trains on, identically."""

    model: str = "smollm2-135m-instruct"
    seq_len: int = 1024
    steps: int = 8
    batch_size: int = 8
    lr: float = 5e-4
    seed: int = 0
    train_file: str = "lmforge://demo/qa/train.jsonl"
    heldout_file: str = "lmforge://demo/qa/test.jsonl"
    heldout: int = 48
    peak_tflops: float | None = None


@dataclass
class BenchResult:
    system: str
    seq_len: int
    steps: int
    examples: int
    tokens: int
    padded_tokens: int
    seconds: float
    tokens_per_s: float
    peak_rss_mb: float
    train_loss_last: float
    heldout_loss: float
    mfu: float
    notes: str = ""
    losses: list[float] = field(default_factory=list)


# ---------------------------------------------------------------- parent


def run_bench(
    settings: BenchSettings, seq_lens: list[int], systems: list[str], out_dir: Path, console: Any = None
) -> list[BenchResult]:
    """Run every system at every sequence length, each in a child process; write results JSON + Markdown."""
    from rich.console import Console

    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[BenchResult] = []
    for seq_len in seq_lens:
        for system in systems:
            config = {**asdict(settings), "seq_len": seq_len, "system": system}
            console.print(f"bench: {system} at sequence length {seq_len} ({settings.steps} steps) ...")
            completed = subprocess.run(
                [sys.executable, "-m", "lmforge.bench", json.dumps(config)],
                capture_output=True,
                text=True,
                env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
            )
            lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
            if completed.returncode != 0 or not lines:
                raise RuntimeError(f"bench worker {system} failed:\n{completed.stderr[-4000:]}")
            result = BenchResult(**json.loads(lines[-1]))
            results.append(result)
            console.print(
                f"  {result.tokens_per_s:.0f} tokens/s, peak RSS {result.peak_rss_mb:.0f} MB, "
                f"held-out loss {result.heldout_loss:.4f}"
            )
    (out_dir / "bench.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    (out_dir / "bench.md").write_text(markdown_table(results) + "\n")
    return results


def markdown_table(results: list[BenchResult]) -> str:
    """The results as a Markdown table, with speed-ups against the baseline and TRL at each length."""
    head = (
        "| seq len | system | tokens/s | vs baseline | vs TRL | peak RSS (MB) | train loss (last) "
        "| held-out loss | MFU | notes |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for r in results:
        peers = {p.system: p for p in results if p.seq_len == r.seq_len}
        base = peers.get("baseline")
        trl = peers.get("trl")
        vs_base = f"{r.tokens_per_s / base.tokens_per_s:.1f}x" if base else "-"
        vs_trl = f"{r.tokens_per_s / trl.tokens_per_s:.2f}x" if trl else "-"
        rows.append(
            f"| {r.seq_len} | {r.system} | {r.tokens_per_s:.0f} | {vs_base} | {vs_trl} | {r.peak_rss_mb:.0f} "
            f"| {r.train_loss_last:.4f} | {r.heldout_loss:.4f} | {r.mfu:.1%} | {r.notes} |"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------- worker


def peak_flops(settings: BenchSettings, bf16: bool) -> float:
    """Peak FLOP/s of this machine (see the module docstring)."""
    if settings.peak_tflops:
        return settings.peak_tflops * 1e12
    from lmforge.models import cpu_supports_bf16

    cores = len(os.sched_getaffinity(0))
    ghz = _cpu_ghz()
    per_cycle = 1024 if (bf16 and cpu_supports_bf16()) else 64
    return cores * ghz * 1e9 * per_cycle


def _cpu_ghz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and "@" in line and "GHz" in line:
                return float(line.split("@")[1].strip().removesuffix("GHz"))
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    except (OSError, ValueError):
        pass
    return 2.0


def _examples(settings: BenchSettings, tokenizer: Any) -> tuple[list[Any], list[Any], list[dict]]:
    """Tokenized training examples (steps x batch, cycled), held-out examples, and the raw training records."""
    import random

    from lmforge.config import package_dir
    from lmforge.records import read_records
    from lmforge.train.tokenize import tokenize_chat

    def load(path: str) -> list[dict]:
        path = str(package_dir() / path.removeprefix("lmforge://")) if path.startswith("lmforge://") else path
        return [r for r in read_records(path) if r["kind"] == "chat"]

    pool = load(settings.train_file)
    random.Random(settings.seed).shuffle(pool)
    needed = settings.steps * settings.batch_size
    records = [pool[i % len(pool)] for i in range(needed)]
    heldout = load(settings.heldout_file)[: settings.heldout]
    train = [tokenize_chat(tokenizer, r["messages"], settings.seq_len) for r in records]
    held = [tokenize_chat(tokenizer, r["messages"], settings.seq_len) for r in heldout]
    return train, held, records


class TokenCounter:
    """Wraps a collator and counts the real (non-padding) tokens it sees."""

    def __init__(self, collate: Any):
        self.collate = collate
        self.tokens = 0
        self.padded = 0

    def __call__(self, features: list[dict]) -> Any:
        if "attention_mask" in features[0]:
            self.tokens += sum(int(sum(f["attention_mask"])) for f in features)
        else:
            self.tokens += sum(len(f["input_ids"]) for f in features)
        batch = self.collate(features)
        self.padded += int(batch["input_ids"].numel())
        return batch


def heldout_loss(model: Any, examples: list[Any], pad_id: int, bf16: bool) -> float:
    """Mean answer-only loss on held-out examples, computed the same way for every system."""
    import torch

    from lmforge.train.fast import causal_lm_loss_sum, pad_batch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(examples), 8):
            chunk = examples[start : start + 8]
            batch = pad_batch([{"input_ids": e.input_ids, "labels": e.labels} for e in chunk], pad_id)
            loss, n = causal_lm_loss_sum(model, batch)
            total += float(loss)
            count += n
    return total / max(count, 1)


def worker(config: dict[str, Any]) -> BenchResult:
    """Train one system and measure it (runs in a child process)."""
    import torch

    from lmforge.models import load_tokenizer, resolve_model

    system = config.pop("system")
    settings = BenchSettings(**config)
    torch.manual_seed(settings.seed)
    base_dir = resolve_model(settings.model)
    tokenizer = load_tokenizer(base_dir)
    train, held, records = _examples(settings, tokenizer)
    if system == "baseline":
        trainer, bf16, notes = _baseline(base_dir, tokenizer, train, settings)
    elif system == "trl":
        trainer, bf16, notes = _trl(base_dir, tokenizer, records, settings)
    elif system in ("lmforge", "lmforge-lowmem"):
        trainer, bf16, notes = _lmforge(base_dir, tokenizer, train, settings, low_memory=system.endswith("lowmem"))
    else:
        raise ValueError(f"unknown system {system!r}; expected one of {SYSTEMS}")
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    held_loss = heldout_loss(trainer.model, held, pad_id, bf16)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    non_embedding = sum(p.numel() for n, p in trainer.model.named_parameters() if "embed" not in n and "lora_" not in n)
    tokens_per_s = counter.tokens / seconds
    return BenchResult(
        system=system,
        seq_len=settings.seq_len,
        steps=trainer.state.global_step,
        examples=len(train),
        tokens=counter.tokens,
        padded_tokens=counter.padded,
        seconds=round(seconds, 2),
        tokens_per_s=round(tokens_per_s, 1),
        peak_rss_mb=round(peak_rss_mb, 1),
        train_loss_last=round(sum(losses[-3:]) / max(len(losses[-3:]), 1), 5),
        heldout_loss=round(held_loss, 5),
        mfu=round(6 * non_embedding * tokens_per_s / peak_flops(settings, bf16), 4),
        notes=notes,
        losses=[round(x, 5) for x in losses],
    )


def _common_args(settings: BenchSettings, out: str) -> dict[str, Any]:
    return {
        "output_dir": out,
        "per_device_train_batch_size": settings.batch_size,
        "max_steps": settings.steps,
        "learning_rate": settings.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": settings.seed,
        "data_seed": settings.seed,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def _lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear", task_type="CAUSAL_LM")


def _baseline(base_dir: Path, tokenizer: Any, train: list[Any], settings: BenchSettings) -> tuple[Any, bool, str]:
    """HF Trainer, fp32, padded to the sequence length: what the seed scripts do."""
    import tempfile

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, use_safetensors=True)
    model = get_peft_model(model, _lora_config())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for example in train:
        n = len(example.input_ids)
        pad = settings.seq_len - n
        rows.append(
            {
                "input_ids": example.input_ids + [pad_id] * pad,
                "attention_mask": [1] * n + [0] * pad,
                "labels": example.labels + [-100] * pad,
            }
        )
    args = TrainingArguments(**_common_args(settings, tempfile.mkdtemp()))
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=default_data_collator)
    return trainer, False, "fp32, padded to seq len"


def _trl(base_dir: Path, tokenizer: Any, records: list[dict], settings: BenchSettings) -> tuple[Any, bool, str]:
    """TRL SFTTrainer with its defaults, on prompt/completion pairs (loss on the completion)."""
    import tempfile

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records]
    args = SFTConfig(**_common_args(settings, tempfile.mkdtemp()), max_length=settings.seq_len)
    trainer = SFTTrainer(
        model=str(base_dir),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=_lora_config(),
    )
    checkpointing = "activation checkpointing" if args.gradient_checkpointing else "no checkpointing"
    return trainer, bool(args.bf16), f"TRL defaults: {'bf16' if args.bf16 else 'fp32'}, {checkpointing}"


def _lmforge(
    base_dir: Path, tokenizer: Any, train: list[Any], settings: BenchSettings, low_memory: bool
) -> tuple[Any, bool, str]:
    """lmforge's own path, exactly as the sft stage builds it."""
    import tempfile

    from lmforge.config import LoraSpec, SFTSpec
    from lmforge.train.causal import build_model, build_trainer, use_bf16

    spec = SFTSpec(
        lora=LoraSpec(r=LORA["r"], alpha=LORA["alpha"]),
        max_steps=settings.steps,
        batch_size=settings.batch_size,
        max_length=settings.seq_len,
        lr=settings.lr,
        scheduler="constant",
        warmup_ratio=0.0,
        logging_steps=1,
        gradient_checkpointing=low_memory,
    )
    model = build_model(base_dir, spec, trust_remote_code=False)
    trainer = build_trainer(model, tokenizer, train, spec, settings.seed, Path(tempfile.mkdtemp()))
    bf16 = use_bf16(spec)
    notes = f"{'bf16' if bf16 else 'fp32'}, length-grouped{', activation checkpointing' if low_memory else ''}"
    return trainer, bf16, notes


if __name__ == "__main__":  # child process: python -m lmforge.bench '<json config>'
    result = worker(json.loads(sys.argv[1]))
    print(json.dumps(asdict(result)))
