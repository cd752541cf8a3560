"""The ``seq2seq`` stage: an encoder-decoder (T5 / BART family) learns to extract JSON fields from documents.

Training records are chat records: the user turn is the document, the assistant turn the JSON
object of fields. setup (fields and schema, inputs with the instruction, targets) -> train (HF
Trainer, summed cross-entropy over target tokens) -> save (weights or adapter with the tokenizer)
-> evaluate: the tuned (and the base) model extracts the fields of each eval set's documents,
scored by valid-JSON rate and exact match per field (see :func:`score_extractions`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.config import Recipe, Seq2SeqSpec
from lmforge.engine.compute import seed_everything, use_bf16
from lmforge.engine.lora import add_lora, trainable_summary
from lmforge.engine.stage import TrainResult, open_training_stage, training_summary
from lmforge.engine.tokenize import IGNORE
from lmforge.engine.trainer import build_trainer, run_training, save_folder, training_metrics
from lmforge.errors import DataError, StageError
from lmforge.log import stage_log
from lmforge.models import load_tokenizer
from lmforge.records import read_records
from lmforge.rundir import StageDir, atomic_write_json, atomic_write_jsonl, fingerprint_data, split_path

PROMPT_INSTRUCTION = "Extract the fields {fields} from the document below. Answer with one JSON object."
SCHEMA_INSTRUCTION = "Extract from the document below one JSON object that follows this JSON schema:\n{schema}"


@dataclass
class Extraction:
    """One document and the fields expected from it."""

    record: dict[str, Any]
    document: str
    expected: dict[str, Any]


def run(recipe: Recipe) -> TrainResult:
    """Train the recipe's encoder-decoder on ``seq2seq.splits``, then score it on ``seq2seq.eval_sets``."""
    spec = recipe.seq2seq
    setup = open_training_stage(recipe, spec, "seq2seq")
    stage, paths, eval_path = setup.stage, setup.train_paths, setup.eval_path
    score_paths = _score_paths(setup.run_path, spec)
    fingerprint = fingerprint_data([setup.config, setup.file_hashes(*score_paths.values()), _schema_text(spec)])
    if stage.is_done(fingerprint):
        return setup.earlier_result()

    inputs = {"train": [str(p) for p in paths], "score": {k: str(v) for k, v in score_paths.items()}}
    resuming = setup.start(fingerprint, inputs)
    base_dir = setup.base_model(recipe, "training data")
    train = [x for path in paths for x in load_extractions(path)]
    if not train:
        raise StageError(f"seq2seq found no chat records (document -> JSON) in the split(s) {spec.splits}")
    schema = load_schema(spec, train)
    atomic_write_json(stage.path("schema.json"), schema)
    tokenizer = load_tokenizer(base_dir, trust_remote_code=recipe.model.trust_remote_code)
    seed_everything(recipe.seed)
    model = load_seq2seq_model(base_dir, spec, recipe)
    added = add_missing_characters(tokenizer, model, [target_text(x.expected) for x in train], spec)
    if spec.method == "lora":
        model = add_lora(model, spec, "SEQ_2_SEQ_LM")
    stage_log("seq2seq").info(
        f"{spec.method}, {trainable_summary(model)}; {len(schema['properties'])} fields, "
        f"input format {spec.input_format}"
    )
    max_input = input_limit(model, spec)
    examples, counts = encode(tokenizer, train, schema, spec, max_input)
    eval_examples = encode(tokenizer, load_extractions(eval_path), schema, spec, max_input)[0] if eval_path else []
    trainer = build_trainer(
        model=model,
        spec=spec,
        seed=recipe.seed,
        distributed_spec=recipe.distributed,
        stage=stage,
        label="seq2seq",
        train_dataset=examples,
        eval_dataset=eval_examples or None,
        collator=functools.partial(collate, pad_id=tokenizer.pad_token_id, global_first=attends_globally(model)),
        loss_sum=seq2seq_loss_sum,
        sampling="group_by_length",
    )
    result, seconds = run_training(trainer, stage, resuming, "seq2seq")

    kind = "adapter" if spec.method == "lora" else "model"
    outputs = {"base_model": str(base_dir), kind: str(save_folder(stage.path(kind), model, tokenizer))}
    metrics = training_metrics(trainer, result, seconds)
    metrics.update(counts)
    if added:
        metrics["added_tokens"] = added
    setup.wrap_up(trainer)
    metrics["extraction"] = evaluate_sets(model, tokenizer, base_dir, score_paths, schema, spec, stage, recipe)
    metrics["scores"] = _scores_line(metrics["extraction"])
    stage.finish(metrics, outputs=outputs)
    return TrainResult.from_outputs(outputs, metrics, skipped=False)


def _score_paths(run_path: Path, spec: Seq2SeqSpec) -> dict[str, Path]:
    if spec.eval_sets is not None:
        return {name: split_path(run_path, name, needed_by="seq2seq") for name in spec.eval_sets}
    splits = StageDir.open(run_path, "data").manifest.get("outputs", {}).get("splits", {})
    return {"test": Path(splits["test"])} if "test" in splits else {}


# ---------------------------------------------------------------- data


def load_extractions(path: Path) -> list[Extraction]:
    """Chat records as (document, expected fields); every target must be a JSON object.

    Raises:
        DataError: listing (up to 10) records whose assistant turn is not a JSON object.
    """
    found, bad = [], []
    for record in read_records(path):
        if record["kind"] != "chat":
            continue
        users = [m["content"] for m in record["messages"] if m["role"] == "user"]
        answers = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        try:
            expected = json.loads(answers[-1]) if answers else None
        except json.JSONDecodeError:
            expected = None
        source = record.get("source", {})
        if not users or not isinstance(expected, dict):
            bad.append(f"{source.get('path')}:{source.get('line')}")
            continue
        found.append(Extraction(record=record, document=users[-1], expected=expected))
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(
            f"{len(bad)} seq2seq record(s) have no user turn or an assistant turn that is not a JSON object: {shown}",
            hint="each record is a document (user) and the JSON object of its fields (assistant), e.g. "
            '{"prompt": "<document>", "response": "{\\"date\\": \\"2024-01-31\\"}"}',
        )
    return found


def load_schema(spec: Seq2SeqSpec, train: list[Extraction]) -> dict[str, Any]:
    """The output schema: given (mapping or file), or inferred from the training targets."""
    if isinstance(spec.json_schema, dict):
        return spec.json_schema
    if isinstance(spec.json_schema, str):
        return json.loads(Path(spec.json_schema).read_text(encoding="utf-8"))
    properties: dict[str, Any] = {}
    for example in train:
        for key, value in example.expected.items():
            kinds = properties.setdefault(key, [])
            kind = _json_type(value)
            if kind not in kinds:
                kinds.append(kind)
    return {
        "type": "object",
        "properties": {key: {"type": kinds[0] if len(kinds) == 1 else kinds} for key, kinds in properties.items()},
    }


def _schema_text(spec: Seq2SeqSpec) -> str | None:
    if isinstance(spec.json_schema, str):
        return Path(spec.json_schema).read_text(encoding="utf-8")
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def input_text(document: str, schema: dict[str, Any], spec: Seq2SeqSpec) -> str:
    """The encoder input: the instruction (fields or schema filled in), a blank line, the document."""
    fields = ", ".join(schema.get("properties", {}))
    default = PROMPT_INSTRUCTION if spec.input_format == "prompt" else SCHEMA_INSTRUCTION
    instruction = (spec.instruction or default).replace("{fields}", fields)
    instruction = instruction.replace("{schema}", json.dumps(schema, ensure_ascii=False))
    return f"{instruction}\n\nDocument:\n{document}"


def target_text(fields: dict[str, Any]) -> str:
    return json.dumps(fields, ensure_ascii=False)


def encode(
    tokenizer: Any, items: list[Extraction], schema: dict[str, Any], spec: Seq2SeqSpec, max_input: int
) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Token ids of inputs and targets, truncated to the limits (and counted)."""
    examples, cut_inputs, cut_outputs = [], 0, 0
    for item in items:
        source = tokenizer(input_text(item.document, schema, spec))["input_ids"]
        target = tokenizer(text_target=target_text(item.expected))["input_ids"]
        cut_inputs += len(source) > max_input
        cut_outputs += len(target) > spec.max_output_length
        examples.append({"input_ids": source[:max_input], "labels": target[: spec.max_output_length]})
    if cut_inputs:
        stage_log("seq2seq").warning(f"{cut_inputs} document(s) truncated to {max_input} input tokens")
    if cut_outputs:
        stage_log("seq2seq").warning(f"{cut_outputs} target(s) cut at {spec.max_output_length} tokens: not valid JSON")
    counts = {"examples": len(examples), "truncated_inputs": cut_inputs, "truncated_outputs": cut_outputs}
    counts["input_tokens"] = sum(len(e["input_ids"]) for e in examples)
    counts["target_tokens"] = sum(len(e["labels"]) for e in examples)
    return examples, counts


# ---------------------------------------------------------------- model


def load_seq2seq_model(base_dir: Path, spec: Seq2SeqSpec, recipe: Recipe) -> Any:
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    trust = recipe.model.trust_remote_code
    config = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=trust)
    if not getattr(config, "is_encoder_decoder", False):
        raise StageError(
            f"seq2seq needs an encoder-decoder model (T5, BART, LED, ...); {recipe.model.ref!r} is a "
            f"{config.model_type!r} model without a decoder of its own: fine-tune it with sft instead"
        )
    dtype = torch.bfloat16 if spec.method == "lora" and use_bf16(spec.precision) else torch.float32
    return AutoModelForSeq2SeqLM.from_pretrained(
        str(base_dir), dtype=dtype, use_safetensors=True, trust_remote_code=trust
    )


def input_limit(model: Any, spec: Seq2SeqSpec) -> int:
    """``max_input_length``, capped by the model's position table (BART: 1024; T5 has none)."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "max_encoder_position_embeddings", None)
    if limit is None or spec.max_input_length <= limit:
        return spec.max_input_length
    if "max_input_length" in spec.model_fields_set:
        raise StageError(
            f"seq2seq.max_input_length is {spec.max_input_length}, but this {config.model_type} model reads at most "
            f"{limit} tokens; set seq2seq.max_input_length <= {limit} (or use a T5 / LED model for long documents)"
        )
    stage_log("seq2seq").info(f"note: inputs capped at {limit} tokens, the most this {config.model_type} model reads")
    return limit


def add_missing_characters(tokenizer: Any, model: Any, targets: list[str], spec: Seq2SeqSpec) -> list[str]:
    """Add characters the tokenizer can only write as <unk> (T5 has no '{' or '}') as new tokens.

    Returns:
        The characters added (the embeddings are resized; the new rows train with the model).
    """
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    characters = sorted({c for text in targets for c in text if not c.isspace()})
    missing = [c for c in characters if unk in tokenizer(c, add_special_tokens=False)["input_ids"]]
    if not missing:
        return []
    if spec.method == "lora" and not spec.lora.train_embeddings:
        raise StageError(
            f"the tokenizer cannot write {missing} (they become <unk>), so new tokens are needed, whose embeddings "
            "must train; set seq2seq.lora.train_embeddings: true or seq2seq.method: full"
        )
    tokenizer.add_tokens(missing)
    model.resize_token_embeddings(len(tokenizer))
    stage_log("seq2seq").info(f"added tokens {missing}: the tokenizer could only write them as <unk>")
    return missing


def attends_globally(model: Any) -> bool:
    """LED-style (Longformer) encoders attend locally within a window; the first token needs global attention
    (every token sees it, it sees every token) for the decoder's view of the whole document."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner.config, "model_type", "") == "led"


def global_attention(attention_mask: torch.Tensor) -> torch.Tensor:
    """The ``global_attention_mask`` of an LED batch: global attention on each row's first token."""
    mask = torch.zeros_like(attention_mask)
    mask[:, 0] = 1
    return mask


def collate(batch: list[dict[str, list[int]]], pad_id: int, global_first: bool = False) -> dict[str, torch.Tensor]:
    """Right-pad inputs (with an attention mask) and targets (IGNORE); ``global_first``: an LED's
    ``global_attention_mask`` too."""
    source_len = max(len(b["input_ids"]) for b in batch)
    target_len = max(len(b["labels"]) for b in batch)
    input_ids = torch.full((len(batch), source_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), source_len), dtype=torch.long)
    labels = torch.full((len(batch), target_len), IGNORE, dtype=torch.long)
    for r, item in enumerate(batch):
        n, m = len(item["input_ids"]), len(item["labels"])
        input_ids[r, :n], mask[r, :n], labels[r, :m] = torch.tensor(item["input_ids"]), 1, torch.tensor(item["labels"])
    out = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if global_first:
        out["global_attention_mask"] = global_attention(mask)
    return out


def seq2seq_loss_sum(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the target tokens (teacher forcing), and their number."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = inputs["labels"]
    decoder_input_ids = inner.prepare_decoder_input_ids_from_labels(labels=labels)
    extra = {"global_attention_mask": inputs["global_attention_mask"]} if "global_attention_mask" in inputs else {}
    logits = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        decoder_input_ids=decoder_input_ids,
        **extra,
    ).logits
    trained = labels != IGNORE
    return F.cross_entropy(logits[trained].float(), labels[trained], reduction="sum"), int(trained.sum())


# ---------------------------------------------------------------- evaluation


def evaluate_sets(
    model: Any,
    tokenizer: Any,
    base_dir: Path,
    score_paths: dict[str, Path],
    schema: dict[str, Any],
    spec: Seq2SeqSpec,
    stage: StageDir,
    recipe: Recipe,
) -> dict[str, Any]:
    """Extract every eval document with the tuned (and the base) model; write predictions and return scores."""
    if not score_paths:
        stage_log("seq2seq").info(
            "no eval set (the data stage wrote no 'test' split; set seq2seq.eval_sets): not scored"
        )
        return {}
    variants = [("tuned", model, tokenizer)]
    if spec.compare_base:
        base_tokenizer = load_tokenizer(base_dir, trust_remote_code=recipe.model.trust_remote_code)
        variants.append(
            ("base", load_seq2seq_model(base_dir, spec.model_copy(update={"method": "full"}), recipe), base_tokenizer)
        )
    summary: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name, path in score_paths.items():
        items = load_extractions(path)
        inputs = [input_text(x.document, schema, spec) for x in items]
        replies = {variant: generate(m, tok, inputs, spec) for variant, m, tok in variants}
        summary[name] = {
            variant: score_extractions([x.expected for x in items], texts) for variant, texts in replies.items()
        }
        for i, item in enumerate(items):
            row = {"set": name, "id": item.record["id"], "source": item.record.get("source"), "expected": item.expected}
            row["outputs"] = {variant: texts[i] for variant, texts in replies.items()}
            rows.append(row)
    atomic_write_jsonl(stage.path("predictions.jsonl"), rows)
    atomic_write_json(stage.path("summary.json"), summary)
    return summary


def generate(model: Any, tokenizer: Any, inputs: list[str], spec: Seq2SeqSpec) -> list[str]:
    """Greedy (or beam) outputs for ``inputs``, batched by length; returned in input order."""
    model.eval()
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    outputs = [""] * len(inputs)
    for start in range(0, len(order), spec.eval_batch_size):
        batch = order[start : start + spec.eval_batch_size]
        encoded = tokenizer(
            [inputs[i] for i in batch],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=spec.max_input_length,
        ).to(model.device)
        if attends_globally(model):
            encoded["global_attention_mask"] = global_attention(encoded["attention_mask"])
        with torch.inference_mode():
            generated = model.generate(
                **encoded, max_new_tokens=spec.max_output_length, num_beams=spec.num_beams, do_sample=False
            )
        for index, tokens in zip(batch, generated, strict=True):
            outputs[index] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return outputs


def score_extractions(expected: list[dict[str, Any]], outputs: list[str]) -> dict[str, Any]:
    """Valid-JSON rate, match rate per field, all-fields and field accuracy over ``expected``: the scorer
    eval's extraction task uses too (:mod:`lmforge.evaluate.fields`)."""
    from lmforge.evaluate.fields import score_reply, summarize

    return summarize([score_reply(text, want) for want, text in zip(expected, outputs, strict=True)])


def _scores_line(summary: dict[str, Any]) -> str:
    parts = []
    for name, variants in summary.items():
        shown = ", ".join(
            f"{variant} valid JSON {s['valid_json']:.0%}, fields {s['field_accuracy']:.0%}"
            for variant, s in variants.items()
        )
        parts.append(f"{name}: {shown}")
    return "; ".join(parts) or "not scored"


def summary(result: TrainResult, seconds: float) -> str:
    """The line the pipeline prints after the stage."""
    return training_summary("seq2seq", result, seconds)
