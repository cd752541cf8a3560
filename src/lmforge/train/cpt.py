"""The ``cpt`` stage: continued pretraining of a causal LM on the domain's raw text.

setup (text records -> one token stream -> rows of exactly ``cpt.max_length`` tokens) -> train
(next-token loss on every token, LoRA / DoRA / full, optionally with trained embeddings and head)
-> save (adapter or weights with the tokenizer, training log, manifest). A later ``sft`` stage in
the same recipe starts from this result (see ``chain.py``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.config import Recipe
from lmforge.errors import StageError
from lmforge.models import load_tokenizer, resolve_model
from lmforge.records import read_records
from lmforge.rundir import StageDir, fingerprint_data, fingerprint_file, split_path
from lmforge.train.causal import build_causal_model
from lmforge.train.fast import causal_lm_loss_sum, disable_lean_lora
from lmforge.train.tokenize import IGNORE, PackedRow, pack_texts
from lmforge.train.trainer import (
    build_trainer,
    check_training_setup,
    clear_stale,
    eval_split_path,
    run_training,
    save_folder,
    seed_everything,
    trainable_summary,
    training_metrics,
    write_log,
)


@dataclass
class CPTResult:
    adapter_dir: Path | None
    model_dir: Path | None
    metrics: dict[str, Any]
    skipped: bool


def run(recipe: Recipe) -> CPTResult:
    """Continue pretraining the recipe's model on the ``text`` records of ``cpt.splits``."""
    spec = recipe.cpt
    run_path = recipe.run_path()
    stage = StageDir.open(run_path, "cpt")
    check_training_setup(spec, "cpt", f"recipe {recipe.name!r}")
    paths = [split_path(run_path, split, needed_by="cpt") for split in spec.splits]
    eval_path = eval_split_path(run_path, spec, needed_by="cpt")
    config = {"model": recipe.model.model_dump(mode="json"), "cpt": spec.model_dump(mode="json"), "seed": recipe.seed}
    files = {str(path): fingerprint_file(path) for path in [*paths, *([eval_path] if eval_path else [])]}
    fingerprint = fingerprint_data([config, files])
    if stage.is_done(fingerprint):
        outputs = stage.manifest["outputs"]
        return CPTResult(_path(outputs.get("adapter")), _path(outputs.get("model")), stage.manifest["metrics"], True)

    resuming = stage.can_resume(fingerprint)
    stage.start(fingerprint, config, {"text": [str(p) for p in paths], "eval": str(eval_path) if eval_path else None})
    clear_stale(stage, resuming)
    base_dir = resolve_model(recipe.model.ref, recipe.model.revision)
    print(f"cpt: base model {recipe.model.ref} ({base_dir}); text from {', '.join(map(str, paths))}")
    tokenizer = load_tokenizer(base_dir, trust_remote_code=recipe.model.trust_remote_code)
    texts = [r["text"] for path in paths for r in read_records(path) if r["kind"] == "text"]
    if not texts:
        raise StageError(
            f"cpt needs text records, and the split(s) {spec.splits} hold none; put documents (or `text` rows) "
            "in one of them with a data source's 'split' key, or set cpt.splits"
        )
    rows, counts = pack_texts(tokenizer, texts, spec.max_length, spec.isolate_documents)
    eval_rows = _eval_rows(tokenizer, eval_path, spec.max_length, spec.isolate_documents)
    print(f"cpt: {counts['documents']} texts, {counts['tokens']} tokens -> {counts['rows']} rows of {spec.max_length}")

    seed_everything(recipe.seed)
    model = build_causal_model(base_dir, spec, spec.max_length, spec.attention, recipe)
    print(f"cpt: {spec.method}, {trainable_summary(model)}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = build_trainer(
        model=model,
        spec=spec,
        seed=recipe.seed,
        stage=stage,
        label="cpt",
        train_dataset=RowDataset(rows),
        eval_dataset=RowDataset(eval_rows) if eval_rows else None,
        collator=lambda batch: collate_rows(batch, pad_id),
        loss_sum=causal_lm_loss_sum,
        loss_shifts_labels=True,
    )
    result, seconds = run_training(trainer, stage, resuming, "cpt")

    disable_lean_lora(model)
    outputs: dict[str, Any] = {"base_model": str(base_dir)}
    kind = "adapter" if spec.method == "lora" else "model"
    outputs[kind] = str(save_folder(stage.path(kind), model, tokenizer))
    metrics = training_metrics(trainer, result, seconds)
    metrics.update(counts)
    metrics["tokens_per_s"] = round(counts["tokens"] * (metrics["epochs"] or spec.epochs) / max(seconds, 1e-9), 1)
    write_log(trainer, stage.path("train_log.jsonl"))
    shutil.rmtree(stage.path("checkpoints"), ignore_errors=True)
    stage.finish(metrics, outputs=outputs)
    return CPTResult(_path(outputs.get("adapter")), _path(outputs.get("model")), metrics, False)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _eval_rows(tokenizer: Any, eval_path: Path | None, max_length: int, isolate: bool) -> list[PackedRow]:
    if eval_path is None:
        return []
    texts = [r["text"] for r in read_records(eval_path) if r["kind"] == "text"]
    if not texts:
        print(f"cpt: warning: the validation split {eval_path} holds no text records; training without validation")
        return []
    return pack_texts(tokenizer, texts, max_length, isolate)[0]


class RowDataset:
    """Packed rows as the dicts the collator expects."""

    def __init__(self, rows: list[PackedRow]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        row = self.rows[index]
        return {"input_ids": row.input_ids, "labels": row.labels, "position_ids": row.position_ids}


def collate_rows(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack rows, right-padding the (last, shorter) ones: pad labels IGNORE, positions keep counting."""
    longest = max(len(row["input_ids"]) for row in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), longest), dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[r, :n] = torch.tensor(row["input_ids"])
        labels[r, 1:n] = torch.tensor(row["labels"][1:])  # the first token of a row has no context
        positions[r, :n] = torch.tensor(row["position_ids"])
        positions[r, n:] = torch.arange(row["position_ids"][-1] + 1, row["position_ids"][-1] + 1 + longest - n)
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions}
