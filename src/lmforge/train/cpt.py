"""The ``cpt`` stage: continued pretraining of a causal LM on the domain's raw text.

setup (text records -> one token stream -> rows of exactly ``cpt.max_length`` tokens) -> train
(next-token loss on every token, LoRA / DoRA / full, optionally with trained embeddings and head)
-> save (adapter or weights with the tokenizer, training log, manifest). A later ``sft`` stage in
the same recipe starts from this result (see ``chain.py``).
"""

from __future__ import annotations

from typing import Any

from lmforge.config import Recipe
from lmforge.engine.budget import stage_micro_batching
from lmforge.engine.causal import build_causal_model
from lmforge.engine.compute import seed_everything, use_bf16
from lmforge.engine.fast import causal_lm_loss_sum, collate_rows, disable_lean_lora
from lmforge.engine.lora import trainable_summary
from lmforge.engine.stage import TrainingStage, TrainResult, open_training_stage, tokens_per_s, training_summary
from lmforge.engine.tokenize import PackedRow, pack_texts
from lmforge.engine.trainer import build_trainer, run_training, save_folder, training_metrics
from lmforge.log import stage_log


def run(recipe: Recipe) -> TrainResult:
    """Continue pretraining the recipe's model on the ``text`` records of ``cpt.splits``."""
    spec = recipe.cpt
    setup = open_training_stage(recipe, spec, "cpt")
    begun = setup.begin_on_text(
        recipe, "put documents (or `text` rows) in one of them with a data source's 'split' key, or set cpt.splits"
    )
    if begun is None:
        return setup.earlier_result()
    stage, resuming, base_dir, tokenizer = setup.stage, begun.resuming, begun.base_dir, begun.tokenizer
    texts = begun.texts
    rows, counts = pack_texts(tokenizer, texts, spec.max_length, spec.isolate_documents)
    eval_rows = _eval_rows(tokenizer, setup, spec.max_length, spec.isolate_documents)
    stage_log("cpt").info(
        f"{counts['documents']} texts, {counts['tokens']} tokens -> {counts['rows']} rows of {spec.max_length}"
    )

    seed_everything(recipe.seed)
    micro = stage_micro_batching(spec, base_dir, [spec.max_length] * len(rows), use_bf16(spec.precision))
    model = build_causal_model(base_dir, spec, spec.max_length, spec.attention, recipe, rows=micro.rows)
    stage_log("cpt").info(f"{spec.method}, {trainable_summary(model)}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = build_trainer(
        model=model,
        spec=spec,
        seed=recipe.seed,
        distributed_spec=recipe.distributed,
        stage=stage,
        label="cpt",
        train_dataset=RowDataset(rows),
        eval_dataset=RowDataset(eval_rows) if eval_rows else None,
        collator=lambda batch: collate_rows(batch, pad_id),
        loss_sum=causal_lm_loss_sum,
        loss_shifts_labels=True,
        micro_batching=micro,
    )
    result, seconds = run_training(trainer, stage, resuming, "cpt")

    disable_lean_lora(model)
    outputs: dict[str, Any] = {"base_model": str(base_dir)}
    kind = "adapter" if spec.method == "lora" else "model"
    outputs[kind] = str(save_folder(stage.path(kind), model, tokenizer))
    metrics = training_metrics(trainer, result, seconds)
    metrics.update(counts)
    metrics["tokens_per_s"] = tokens_per_s(counts["tokens"], metrics["epochs"] or spec.epochs, seconds)
    setup.wrap_up(trainer)
    stage.finish(metrics, outputs=outputs)
    return TrainResult.from_outputs(outputs, metrics, skipped=False)


def _eval_rows(tokenizer: Any, setup: TrainingStage, max_length: int, isolate: bool) -> list[PackedRow]:
    texts = [r["text"] for r in setup.validation_records("text")]
    return pack_texts(tokenizer, texts, max_length, isolate)[0] if texts else []


class RowDataset:
    """Packed rows as the dicts the collator expects."""

    def __init__(self, rows: list[PackedRow]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        row = self.rows[index]
        return {"input_ids": row.input_ids, "labels": row.labels, "position_ids": row.position_ids}


def summary(result: TrainResult, seconds: float) -> str:
    """The line the pipeline prints after the stage."""
    return training_summary("cpt", result, seconds)
