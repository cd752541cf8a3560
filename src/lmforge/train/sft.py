"""The ``sft`` stage: supervised fine-tuning of a causal LM on chat records (LoRA, DoRA or full).

setup (start point, data, template, model) -> train (HF Trainer, see ``trainer.py``) -> save
(adapter or weights, tokenizer with the chat template trained on, training log, manifest).

Examples are length-grouped right-padded batches, or packed padding-free into one row per
micro-batch (``position_ids`` restart at each example, so attention never crosses examples); the
loss is computed only where there is a label, so the ``tokens x vocab`` logits of the prompt are
never materialised. With ``sft.distill`` the loss also matches a teacher's top-k distribution
(``distill.py``); when the recipe runs ``cpt`` first, sft starts from its result (``chain.py``).
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

from lmforge.config import Recipe, SFTSpec
from lmforge.distributed import leader_runs
from lmforge.engine import chain
from lmforge.engine.budget import stage_micro_batching
from lmforge.engine.causal import build_causal_model
from lmforge.engine.compute import (
    attention_row,
    seed_everything,
    use_bf16,
)
from lmforge.engine.fast import causal_lm_loss_sum, disable_lean_lora, pack_batch, pad_batch
from lmforge.engine.lora import trainable_summary
from lmforge.engine.stage import TrainingStage, TrainResult, open_training_stage, tokens_per_s, training_summary
from lmforge.engine.start import StartingPoint, sft_start
from lmforge.engine.templates import install_template
from lmforge.engine.tokenize import TokenizedExample, tokenize_records
from lmforge.engine.trainer import build_trainer, run_training, save_folder, training_metrics
from lmforge.errors import StageError
from lmforge.log import stage_log
from lmforge.models import load_tokenizer
from lmforge.records import read_records
from lmforge.rundir import StageDir, fingerprint_data, fingerprint_file
from lmforge.train.documents import mix_documents
from lmforge.train.replay import with_replay
from lmforge.train.rewording import with_rewording


def run(recipe: Recipe) -> TrainResult:
    """Fine-tune on ``sft.splits`` (default: ``train``), starting from the base model or the cpt result."""
    spec = recipe.sft
    setup = open_training_stage(recipe, spec, "sft")
    run_path, stage, train_paths, eval_path = setup.run_path, setup.stage, setup.train_paths, setup.eval_path
    start = sft_start(recipe)
    fingerprint = _fingerprint(run_path, setup.config, spec.splits, train_paths, eval_path, start)
    if stage.is_done(fingerprint):
        return setup.earlier_result()

    shown_paths = ", ".join(map(str, train_paths))
    inputs = {
        "data": StageDir.open(run_path, "data").fingerprint,
        "train": [str(p) for p in train_paths],
        "starts_from": start.as_manifest(),
    }
    resuming = setup.start(fingerprint, inputs, "base", "adapter-sft-only")
    stage_log("sft").info(f"{start.description}; training data {shown_paths}")
    tokenizer = load_tokenizer(start.base_dir, trust_remote_code=recipe.model.trust_remote_code)
    records = _chat_records(train_paths, spec.splits)
    records, reworded = with_rewording(recipe, records, stage.path("reworded.jsonl"))
    records, replayed = with_replay(recipe, records, stage.path("replay.jsonl"))
    default_domain = install_template(tokenizer, spec.template, records, recipe.model.ref)
    examples, token_counts = tokenize_records(tokenizer, records, spec.max_length, spec.train_on_inputs, spec.template)
    examples, order = mix_documents(recipe, run_path, tokenizer, examples, token_counts)
    if token_counts["truncated"]:
        stage_log("sft").warning(f"{token_counts['truncated']} example(s) truncated to {spec.max_length} tokens")
    eval_examples = _eval_examples(tokenizer, setup, spec)

    if start.how == "cpt-merge":
        start.merge_into(stage.path("base"), recipe.model.trust_remote_code)
    fold_in = start.adapter if start.how == "cpt-stack" else None
    seed_everything(recipe.seed)
    # `attention: auto` picks the kernel by the longest row trained on (a packed row holds a whole
    # micro-batch), not by the max_length ceiling: short chat rows train ~30% faster with eager than
    # with sdpa on a CPU (docs/PERFORMANCE.md).
    micro = stage_micro_batching(
        spec, start.base_dir, [len(e.input_ids) for e in examples], use_bf16(spec.precision), spec.packing
    )
    _, longest = attention_row([len(e.input_ids) for e in [*examples, *eval_examples]], micro.rows, spec.packing)
    model = build_causal_model(start.base_dir, spec, longest, spec.attention, recipe, fold_in=fold_in, rows=micro.rows)
    stage_log("sft").info(
        f"{spec.method}{' (DoRA)' if spec.lora.use_dora and spec.method == 'lora' else ''}, "
        f"{trainable_summary(model)}, template {spec.template}"
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = eval_collate = pack_batch if spec.packing else partial(pad_batch, pad_id=pad_id)
    train_dataset, loss_sum = ExampleDataset(examples), causal_lm_loss_sum
    if spec.distill is not None:
        from lmforge.train import distill

        topk = distill.teacher_topk(spec.distill, tokenizer, examples, stage, recipe.model.trust_remote_code)
        train_dataset, collate = distill.DistillDataset(examples, topk), distill.with_teacher(collate)
        loss_sum = partial(distill.distill_loss_sum, alpha=spec.distill.alpha, temperature=spec.distill.temperature)
    trainer = build_trainer(
        model=model,
        spec=spec,
        seed=recipe.seed,
        distributed_spec=recipe.distributed,
        stage=stage,
        label="sft",
        train_dataset=train_dataset,
        eval_dataset=ExampleDataset(eval_examples) if eval_examples else None,
        collator=collate,
        eval_collator=eval_collate,
        loss_sum=loss_sum,
        eval_loss_sum=causal_lm_loss_sum,
        sampling="random" if spec.packing else "group_by_length",
        train_sampler=order,
        loss_shifts_labels=True,
        micro_batching=micro,
    )
    result, seconds = run_training(trainer, stage, resuming, "sft")

    outputs = save_outputs(model, tokenizer, spec, stage, start)
    metrics = _metrics(trainer, result, seconds, token_counts, spec.template, replayed, default_domain)
    metrics["reworded_records"] = reworded
    setup.wrap_up(trainer)
    stage.finish(metrics, outputs=outputs)
    return TrainResult.from_outputs(outputs, metrics, skipped=False)


def _chat_records(train_paths: list[Path], splits: list[str]) -> list[dict[str, Any]]:
    """The chat records of the training splits, without KTO rows labelled undesirable (for dpo's kto loss,
    never imitated).

    Raises:
        StageError: the splits hold no chat record to fine-tune on.
    """
    records = [r for path in train_paths for r in read_records(path) if r["kind"] == "chat"]
    undesirable = [r for r in records if (r.get("meta") or {}).get("label") is False]
    if undesirable:
        records = [r for r in records if (r.get("meta") or {}).get("label") is not False]
        stage_log("sft").info(
            f"left out {len(undesirable)} completion(s) labelled undesirable (KTO rows, for the dpo stage)"
        )
    if not records:
        shown = ", ".join(map(str, train_paths))
        raise StageError(f"the split(s) {splits} ({shown}) hold no chat records to fine-tune on")
    return records


def _metrics(
    trainer: Any,
    result: Any,
    seconds: float,
    token_counts: dict[str, int],
    template: str,
    replayed: int,
    default_domain: str | None,
) -> dict[str, Any]:
    """The manifest's metrics of a finished sft: the trainer's, the token counts and rates, what auto chose."""
    metrics = training_metrics(trainer, result, seconds)
    chosen = trainer.args  # `lr: auto` / `epochs: auto` are resolved by build_trainer
    epochs_run = metrics["epochs"] or chosen.num_train_epochs
    metrics.update(token_counts)
    metrics["trainable_tokens_per_s"] = tokens_per_s(token_counts["trainable_tokens"], epochs_run, seconds)
    metrics["tokens_per_s"] = tokens_per_s(token_counts["tokens"], epochs_run, seconds)
    metrics["template"] = template
    metrics["replay_records"] = replayed
    metrics["lr"], metrics["epochs_planned"] = chosen.learning_rate, chosen.num_train_epochs
    if default_domain is not None:
        metrics["default_domain"] = default_domain
    return metrics


def _fingerprint(
    run_path: Path,
    config: dict[str, Any],
    splits: list[str],
    train_paths: list[Path],
    eval_path: Path | None,
    start: StartingPoint,
) -> str:
    parts: list[Any] = [config, StageDir.open(run_path, "data").fingerprint]
    # Splits other than `train` may come from a later stage (index.raft, synth), which changes without the data stage.
    extra = {split: fingerprint_file(path) for split, path in zip(splits, train_paths, strict=True)}
    extra.pop("train", None)
    if extra:
        parts.append(extra)
    if eval_path is not None:
        parts.append({"eval": str(eval_path)})
    if start.fingerprint is not None:
        parts.append({"cpt": start.fingerprint})
    return fingerprint_data(parts)


def _eval_examples(tokenizer: Any, setup: TrainingStage, spec: SFTSpec) -> list[TokenizedExample]:
    records = setup.validation_records("chat")
    if not records:
        return []
    examples, _ = tokenize_records(tokenizer, records, spec.max_length, spec.train_on_inputs, spec.template)
    return examples


def _stack_on_cpt(start: StartingPoint, adapter: Path, own: Path) -> dict[str, int]:
    """Keep sft's own adapter as ``own`` and write cpt + sft stacked as ``adapter``; returns the ranks."""
    assert start.adapter is not None and start.original_base is not None
    shutil.rmtree(own, ignore_errors=True)
    adapter.rename(own)
    return chain.stack_adapters(start.original_base, start.adapter, own, adapter)


class ExampleDataset:
    """Tokenized examples as the dicts the Trainer's sampler and collator expect."""

    def __init__(self, examples: list[TokenizedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels}


def save_outputs(model: Any, tokenizer: Any, spec: SFTSpec, stage: StageDir, start: StartingPoint) -> dict[str, Any]:
    """Save the adapter (stacked with the cpt one for ``chain: stack``) or the full weights, with the tokenizer."""
    disable_lean_lora(model)
    outputs: dict[str, Any] = {"base_model": str(start.base_dir), "starts_from": start.how}
    if spec.method == "full":
        outputs["model"] = str(save_folder(stage.path("model"), model, tokenizer))
        return outputs
    adapter = save_folder(stage.path("adapter"), model, tokenizer)
    if start.how == "cpt-stack":
        assert start.adapter is not None and start.original_base is not None
        own = adapter.with_name("adapter-sft-only")
        ranks = leader_runs(partial(_stack_on_cpt, start, adapter, own))
        outputs["stacked_ranks"] = ranks
        outputs["sft_only_adapter"] = str(own)  # relative to base + cpt adapter; the stacked one is what runs
        stage_log("sft").info(
            f"saved one adapter = cpt (rank {ranks['first']}) + sft (rank {ranks['second']}), "
            f"rank {ranks['stacked']}, on the original base"
        )
    outputs["adapter"] = str(adapter)
    return outputs


def summary(result: TrainResult, seconds: float) -> str:
    """The line the pipeline prints after the stage."""
    return training_summary("sft", result, seconds)
