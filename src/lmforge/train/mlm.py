"""The ``mlm`` stage: masked-language-model pretraining of an encoder (BERT family) on domain text.

setup (text records -> one token stream -> rows of ``mlm.max_length`` with [CLS]/[SEP]) -> train
(a share ``mlm.mlm_probability`` of the tokens is chosen per batch: 80% masked, 10% random, 10%
kept; the loss is on the chosen ones) -> save (the encoder with its MLM head and tokenizer, merged
when trained with LoRA, for a later embedding or classification fine-tune).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.config import MLMSpec, Recipe
from lmforge.engine.compute import seed_everything, use_bf16
from lmforge.engine.lora import add_lora, trainable_summary
from lmforge.engine.stage import TrainingStage, TrainResult, open_training_stage, tokens_per_s, training_summary
from lmforge.engine.tokenize import IGNORE
from lmforge.engine.trainer import build_trainer, run_training, save_folder, training_metrics
from lmforge.errors import ModelError, StageError
from lmforge.log import stage_log


def run(recipe: Recipe) -> TrainResult:
    """Continue masked-LM pretraining of the recipe's encoder on the ``text`` records of ``mlm.splits``."""
    spec = recipe.mlm
    setup = open_training_stage(recipe, spec, "mlm")
    begun = setup.begin_on_text(recipe, "set mlm.splits")
    if begun is None:
        return setup.earlier_result()
    stage, resuming, base_dir, tokenizer = setup.stage, begun.resuming, begun.base_dir, begun.tokenizer
    texts = begun.texts
    if tokenizer.mask_token_id is None:
        raise StageError(f"mlm needs a tokenizer with a mask token (BERT family); {recipe.model.ref!r} has none")
    rows, counts = pack_for_mlm(tokenizer, texts, spec.max_length)
    stage_log("mlm").info(
        f"{counts['documents']} texts, {counts['tokens']} tokens -> {counts['rows']} rows of {spec.max_length}"
    )

    seed_everything(recipe.seed)
    model = load_masked_lm(base_dir, spec, recipe)
    stage_log("mlm").info(f"{spec.method}, {trainable_summary(model)}, masking {spec.mlm_probability:.0%} of tokens")
    pad_id = tokenizer.pad_token_id
    trainer = build_trainer(
        model=model,
        spec=spec,
        seed=recipe.seed,
        distributed_spec=recipe.distributed,
        stage=stage,
        label="mlm",
        train_dataset=MaskedRows(rows, tokenizer, spec.mlm_probability, recipe.seed),
        eval_dataset=_eval_rows(tokenizer, setup, spec, recipe.seed),
        collator=lambda batch: collate(batch, pad_id),
        train_sampler=EpochTaggedSampler(len(rows), recipe.seed),
        loss_sum=masked_lm_loss_sum,
    )
    result, seconds = run_training(trainer, stage, resuming, "mlm")

    outputs = {"base_model": str(base_dir)}
    if spec.method == "lora":
        outputs["adapter"] = str(save_folder(stage.path("adapter"), model, tokenizer))
        model = model.merge_and_unload()
    outputs["model"] = str(save_folder(stage.path("model"), model, tokenizer))
    metrics = training_metrics(trainer, result, seconds)
    metrics.update(counts)
    metrics["tokens_per_s"] = tokens_per_s(counts["tokens"], metrics["epochs"] or spec.epochs, seconds)
    setup.wrap_up(trainer)
    stage.finish(metrics, outputs=outputs)
    return TrainResult.from_outputs(outputs, metrics, skipped=False)


def load_masked_lm(base_dir: Path, spec: MLMSpec, recipe: Recipe) -> Any:
    """The encoder with a masked-LM head (a new head is initialised if the checkpoint has none)."""
    from transformers import AutoModelForMaskedLM

    dtype = torch.bfloat16 if spec.method == "lora" and use_bf16(spec.precision) else torch.float32
    try:
        model = AutoModelForMaskedLM.from_pretrained(
            str(base_dir), dtype=dtype, use_safetensors=True, trust_remote_code=recipe.model.trust_remote_code
        )
    except ValueError as exc:  # transformers names the config class it has no masked-LM model for
        raise ModelError(
            f"mlm needs an encoder with a masked-LM head (BERT, RoBERTa, ModernBERT, ...); {recipe.model.ref!r} "
            f"is not one: {str(exc).splitlines()[0]}. For causal LMs use the cpt stage"
        ) from None
    if spec.method == "lora":
        model = add_lora(model, spec, None)
    return model


def pack_for_mlm(tokenizer: Any, texts: list[str], max_length: int) -> tuple[list[list[int]], dict[str, int]]:
    """One stream of the texts' tokens ([SEP] between texts), cut into rows wrapped in [CLS] ... [SEP]."""
    sep, cls = tokenizer.sep_token_id, tokenizer.cls_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            stream.append(sep)
    body = max_length - (cls is not None) - (sep is not None)
    rows = []
    for begin in range(0, len(stream), body):
        chunk = stream[begin : begin + body]
        rows.append(([cls] if cls is not None else []) + chunk + ([sep] if sep is not None else []))
    return rows, {"documents": len(texts), "tokens": len(stream), "rows": len(rows)}


class MaskedRows:
    """Rows masked on the fly, each draw a function of ``(seed, key)`` alone.

    Keys come from :class:`EpochTaggedSampler`: ``epoch * rows + row``. A row is masked afresh every
    epoch, and the masking never depends on an RNG stream, so a run resumed mid-epoch (whose data
    loader prefetches a batch before the Trainer restores its RNG) masks exactly like an
    uninterrupted one. Validation rows use fixed keys: every validation scores the same positions.
    """

    def __init__(self, rows: list[list[int]], tokenizer: Any, probability: float, seed: int):
        self.rows = rows
        self.probability = probability
        self.seed = seed
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.special_ids = sorted(set(tokenizer.all_special_ids))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int) -> dict[str, list[int]]:
        ids = torch.tensor(self.rows[key % len(self.rows)])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(key))
        input_ids, labels = mask_tokens(
            ids, self.probability, self.mask_id, self.vocab_size, self.special_ids, generator
        )
        return {"input_ids": input_ids.tolist(), "labels": labels.tolist()}


def mask_tokens(
    ids: torch.Tensor, probability: float, mask_id: int, vocab_size: int, special_ids: list[int], generator: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of one row: ``probability`` of the non-special tokens are chosen; of those 80%
    become [MASK], 10% a random token, 10% stay. Labels are the chosen tokens, IGNORE elsewhere.

    Written here (not transformers' DataCollatorForLanguageModeling) so the draw comes from a
    per-row generator instead of the global RNG stream; see :class:`MaskedRows`.
    """
    special = torch.isin(ids, torch.tensor(special_ids, dtype=ids.dtype))
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    masked = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    return masked, labels


class EpochTaggedSampler:
    """A seeded shuffle per epoch that yields ``epoch * n + row``, so the dataset knows the epoch."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter((self.epoch * self.n + torch.randperm(self.n, generator=generator)).tolist())


def collate(batch: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad masked rows, with an attention mask."""
    longest = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for r, item in enumerate(batch):
        n = len(item["input_ids"])
        input_ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(item["input_ids"]), torch.tensor(item["labels"]), 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def _eval_rows(tokenizer: Any, setup: TrainingStage, spec: MLMSpec, seed: int) -> MaskedRows | None:
    texts = [r["text"] for r in setup.validation_records("text")]
    if not texts:
        return None
    return MaskedRows(pack_for_mlm(tokenizer, texts, spec.max_length)[0], tokenizer, spec.mlm_probability, seed + 1)


def masked_lm_loss_sum(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy at the masked positions, and their number."""
    labels = inputs["labels"]
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).logits
    chosen = labels != IGNORE
    loss = F.cross_entropy(logits[chosen].float(), labels[chosen], reduction="sum")
    return loss, int(chosen.sum())


def summary(result: TrainResult, seconds: float) -> str:
    """The line the pipeline prints after the stage."""
    return training_summary("mlm", result, seconds)
