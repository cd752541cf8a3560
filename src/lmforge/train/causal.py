"""The ``sft`` stage: supervised fine-tuning of a causal LM on chat records (LoRA or full).

setup (data, model, tokenizer) -> train (HF Trainer) -> save (adapter or weights, tokenizer with
its chat template, training log, manifest). Examples are packed padding-free into one row per
micro-batch (``position_ids`` restart at each example, so attention never crosses examples) and
the loss is computed only where there is a label, so the ``tokens x vocab`` logits of the prompt
are never materialised.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from lmforge.config import Recipe, SFTSpec
from lmforge.errors import StageError
from lmforge.models import cpu_supports_bf16, load_causal_lm, load_tokenizer, resolve_model
from lmforge.records import read_records
from lmforge.rundir import StageDir, fingerprint_data, split_path
from lmforge.train.fast import causal_lm_loss_sum, disable_lean_lora, enable_lean_lora, pack_batch, pad_batch
from lmforge.train.tokenize import TokenizedExample, tokenize_records


@dataclass
class SFTResult:
    adapter_dir: Path | None
    model_dir: Path | None
    metrics: dict[str, Any]
    skipped: bool


def run(recipe: Recipe) -> SFTResult:
    """Fine-tune the recipe's model on the ``train`` split of the data stage."""
    spec = recipe.sft
    stage = StageDir.open(recipe.run_path(), "sft")
    train_path = split_path(recipe.run_path(), "train", needed_by="sft")
    data_fingerprint = StageDir.open(recipe.run_path(), "data").fingerprint
    config = {"model": recipe.model.model_dump(mode="json"), "sft": spec.model_dump(mode="json"), "seed": recipe.seed}
    fingerprint = fingerprint_data([config, data_fingerprint])
    if stage.is_done(fingerprint):
        outputs = stage.manifest["outputs"]
        return SFTResult(
            _opt_path(outputs.get("adapter")), _opt_path(outputs.get("model")), stage.manifest["metrics"], True
        )

    resuming = stage.can_resume(fingerprint)
    stage.start(fingerprint, config, {"data": data_fingerprint, "train": str(train_path)})
    base_dir = resolve_model(recipe.model.ref, recipe.model.revision)
    print(f"sft: base model {recipe.model.ref} ({base_dir}); training data {train_path}")
    tokenizer = load_tokenizer(base_dir, trust_remote_code=recipe.model.trust_remote_code)
    if not tokenizer.chat_template:
        raise StageError(f"the tokenizer of {recipe.model.ref!r} has no chat template; sft needs one")
    records = [r for r in read_records(train_path) if r["kind"] == "chat"]
    if not records:
        raise StageError(f"the train split {train_path} holds no chat records to fine-tune on")
    examples, token_counts = tokenize_records(tokenizer, records, spec.max_length, spec.train_on_inputs)
    if token_counts["truncated"]:
        print(f"sft: warning: {token_counts['truncated']} example(s) truncated to {spec.max_length} tokens")

    model = build_model(base_dir, spec, recipe.model.trust_remote_code)
    trainer = build_trainer(model, tokenizer, examples, spec, recipe.seed, stage.path("checkpoints"))
    started = time.perf_counter()
    resume = resuming and any(stage.path("checkpoints").glob("checkpoint-*"))
    if resume:
        print("sft: resuming from the last checkpoint of an interrupted run")
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    elapsed = time.perf_counter() - started

    outputs = save_outputs(model, tokenizer, spec, stage, base_dir)
    epochs_run = trainer.state.epoch or spec.epochs
    metrics = {
        "train_loss": round(float(result.training_loss), 5),
        "final_loss": _last_logged_loss(trainer),
        "steps": trainer.state.global_step,
        "epochs": round(float(epochs_run), 3),
        "seconds": round(elapsed, 1),
        **token_counts,
        "trainable_tokens_per_s": round(token_counts["trainable_tokens"] * epochs_run / max(elapsed, 1e-9), 1),
        "tokens_per_s": round(token_counts["tokens"] * epochs_run / max(elapsed, 1e-9), 1),
        "precision": "bf16" if use_bf16(spec) else "fp32",
    }
    _write_log(trainer, stage.path("train_log.jsonl"))
    shutil.rmtree(stage.path("checkpoints"), ignore_errors=True)
    stage.finish(metrics, outputs=outputs)
    return SFTResult(_opt_path(outputs.get("adapter")), _opt_path(outputs.get("model")), metrics, False)


def _opt_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def use_bf16(spec: SFTSpec) -> bool:
    """bf16 autocast: on request, or (auto) on CUDA and on CPUs with native bf16 matmuls."""
    import torch

    if spec.precision == "auto":
        return torch.cuda.is_available() or cpu_supports_bf16()
    return spec.precision == "bf16"


def attention_kernel(spec: SFTSpec) -> str:
    """The attention implementation to train with (see ``SFTSpec.attention``)."""
    import torch

    if spec.attention != "auto":
        return spec.attention
    if torch.cuda.is_available():
        return "sdpa"
    # CPU: the eager kernel beat sdpa's flash backward on short rows; sdpa wins on memory for long ones.
    return "eager" if spec.max_length <= 512 else "sdpa"


def build_model(base_dir: Path, spec: SFTSpec, trust_remote_code: bool) -> Any:
    """Load the base model and wrap it in a LoRA adapter when asked.

    With LoRA and bf16 the frozen base weights are stored in bf16 (no per-step casts, half the
    memory) while the adapter weights stay fp32 master weights under autocast. Full fine-tuning
    keeps fp32 master weights everywhere.
    """
    import torch

    frozen_bf16 = spec.method == "lora" and use_bf16(spec)
    model = load_causal_lm(
        base_dir,
        dtype=torch.bfloat16 if frozen_bf16 else torch.float32,
        trust_remote_code=trust_remote_code,
        attn_implementation=attention_kernel(spec),
    )
    model.config.use_cache = False
    if spec.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora, autocast_adapter_dtype=True)
    enable_lean_lora(model)
    return model


class ExampleDataset:
    """Tokenized examples as the dicts the Trainer's sampler and collator expect."""

    def __init__(self, examples: list[TokenizedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels}


def build_trainer(
    model: Any, tokenizer: Any, examples: list[TokenizedExample], spec: SFTSpec, seed: int, output_dir: Path
) -> Any:
    """An HF Trainer set up for padding-free, answer-only causal LM training."""
    import torch
    from transformers import PrinterCallback, Trainer, TrainingArguments

    bf16 = use_bf16(spec)

    class AnswerOnlyTrainer(Trainer):
        """Computes the logits only at positions with a label: the loss needs nothing else."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # The backbone is called directly (not through the wrapped model.forward), so the
            # bf16 autocast the Trainer puts around forward() is set here explicitly.
            with torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, count = causal_lm_loss_sum(model, inputs)
            denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
            loss = loss / denominator
            return (loss, None) if return_outputs else loss

    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps,
        learning_rate=spec.lr,
        lr_scheduler_type=spec.scheduler,
        warmup_steps=spec.warmup_ratio,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=spec.logging_steps,
        save_strategy="steps" if spec.save_steps else "epoch",
        save_steps=spec.save_steps or 500,
        save_total_limit=2,
        seed=seed,
        data_seed=seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        train_sampling_strategy="random" if spec.packing else "group_by_length",
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = AnswerOnlyTrainer(
        model=model,
        args=args,
        train_dataset=ExampleDataset(examples),
        data_collator=pack_batch if spec.packing else partial(pad_batch, pad_id=pad_id),
        callbacks=[progress_callback()],
    )
    trainer.remove_callback(PrinterCallback)  # replaced by the rich progress callback
    # Our loss is already a per-token mean over the whole accumulated batch (num_items_in_batch).
    trainer.model_accepts_loss_kwargs = True
    trainer.loss_is_scaled_for_ga = True
    return trainer


def progress_callback() -> Any:
    """A rich progress bar over optimizer steps, with a compact line per logged loss."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self) -> None:
            self.console = Console()
            self.progress: Progress | None = None
            self.task: Any = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(
                TextColumn("sft"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress is None or not logs or "loss" not in logs:
                return
            parts = [
                f"step {state.global_step}/{state.max_steps}",
                f"epoch {state.epoch:.2f}",
                f"loss {logs['loss']:.4f}",
            ]
            if "learning_rate" in logs:
                parts.append(f"lr {logs['learning_rate']:.2e}")
            if "grad_norm" in logs:
                parts.append(f"grad {logs['grad_norm']:.3f}")
            self.progress.console.print("  " + "  ".join(parts), highlight=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RichProgress()


def save_outputs(model: Any, tokenizer: Any, spec: SFTSpec, stage: StageDir, base_dir: Path) -> dict[str, str]:
    """Save the adapter (or full weights) with the tokenizer and its chat template."""
    disable_lean_lora(model)
    outputs = {"base_model": str(base_dir)}
    target = stage.path("adapter" if spec.method == "lora" else "model")
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    outputs["adapter" if spec.method == "lora" else "model"] = str(target)
    return outputs


def _last_logged_loss(trainer: Any) -> float | None:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return round(float(losses[-1]), 5) if losses else None


def _write_log(trainer: Any, path: Path) -> None:
    from lmforge.rundir import atomic_write_text

    lines = [json.dumps(entry) for entry in trainer.state.log_history]
    atomic_write_text(path, "\n".join(lines) + "\n")
