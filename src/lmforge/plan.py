"""``lmforge plan RECIPE``: estimate peak memory and wall time of the training stages before running them.

The estimate adds up what a training step holds at its peak, for the detected hardware:

* the process itself (Python, torch, transformers: measured once, a constant);
* weights (bf16 when LoRA trains over a frozen bf16 base, fp32 otherwise);
* trainable parameters' fp32 gradients and AdamW states (two fp32 tensors each);
* activations kept for the backward pass, per token and layer, from the model's shape;
* the output-layer loss (a chunk of logits with lmforge's chunked loss);
* a transient copy of the weights while they load.

Time is tokens x epochs / throughput, where throughput comes from the FLOPs of a token
(6 x non-embedding parameters, plus attention) and the efficiency this path reaches on this kind of
hardware, calibrated by the benchmarks in ``benchmarks/`` (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import Recipe, TrainSpec
from lmforge.models import cpu_supports_bf16, resolve_model

# Calibration constants, measured on the development machine (2-core Xeon with AMX, torch 2.13 CPU)
# by benchmarks/plan_calibration.py; docs/PERFORMANCE.md has the table they were fitted to.
PROCESS_BASE_MB = 520.0
"""RSS of a Python process that has imported torch, transformers and peft and built a Trainer."""
ACTIVATION_WORDS_PER_TOKEN_LAYER = {"hidden": 16.0, "intermediate": 5.0}
"""Saved activation elements per token per layer, as multiples of hidden size and intermediate size."""
ACTIVATION_BYTES = {"bf16": 2.0, "fp32": 4.0}
CHECKPOINTED_LAYER_FRACTION = 0.12
"""With activation checkpointing, the share of a layer's activations that stays alive per layer."""
THROUGHPUT_EFFICIENCY = {"bf16": 0.075, "fp32": 0.30}
"""Achieved share of the peak (bf16 AMX peak, or fp32 FMA peak) for LoRA training on this CPU."""
LOSS_CHUNK_ROWS = 64


@dataclass
class ModelShape:
    """What the estimate needs from a model's config.json."""

    params: int
    embedding_params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        hidden = config["hidden_size"]
        layers = config["num_hidden_layers"]
        intermediate = config.get("intermediate_size", 4 * hidden)
        heads = config.get("num_attention_heads", max(1, hidden // 64))
        kv_heads = config.get("num_key_value_heads", heads)
        vocab = config["vocab_size"]
        head_dim = config.get("head_dim") or hidden // heads
        per_layer = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * intermediate + 2 * hidden
        embedding = vocab * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
        return cls(
            params=layers * per_layer + embedding + hidden,
            embedding_params=embedding,
            layers=layers,
            hidden=hidden,
            intermediate=intermediate,
            heads=heads,
            kv_heads=kv_heads,
            vocab=vocab,
        )

    def lora_params(self, rank: int) -> int:
        """Trainable parameters of an all-linear LoRA adapter of this rank."""
        head_dim = self.hidden // self.heads
        q_out, kv_out = self.heads * head_dim, self.kv_heads * head_dim
        shapes = [
            (self.hidden, q_out),
            (self.hidden, kv_out),
            (self.hidden, kv_out),
            (q_out, self.hidden),
            (self.hidden, self.intermediate),
            (self.hidden, self.intermediate),
            (self.intermediate, self.hidden),
        ]
        return self.layers * sum(rank * (fan_in + fan_out) for fan_in, fan_out in shapes)


@dataclass
class StagePlan:
    stage: str
    memory_mb: dict[str, float]
    peak_rss_mb: float
    tokens: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def plan_training(
    shape: ModelShape,
    spec: TrainSpec,
    batch_tokens: int,
    longest: int,
    total_tokens: int,
    bf16: bool,
    stage: str = "sft",
) -> StagePlan:
    """Peak RSS and time of one training stage.

    Args:
        shape: the model's dimensions.
        spec: the stage's settings (method, LoRA rank, checkpointing).
        batch_tokens: tokens in the largest micro-batch (padding included).
        longest: longest row in tokens (attention scores grow with its square).
        total_tokens: tokens the whole stage trains on (epochs included).
        bf16: whether bf16 autocast is on.
    """
    mb = 1024**2
    lora = spec.method == "lora"
    weight_bytes = 2 if (lora and bf16) else 4
    trainable = shape.lora_params(spec.lora.r) if lora else shape.params
    act_bytes = ACTIVATION_BYTES["bf16" if bf16 else "fp32"]
    words = ACTIVATION_WORDS_PER_TOKEN_LAYER["hidden"] * shape.hidden + (
        ACTIVATION_WORDS_PER_TOKEN_LAYER["intermediate"] * shape.intermediate
    )
    per_layer = batch_tokens * words * act_bytes + longest * batch_tokens * shape.heads * act_bytes * 2
    layers_alive = shape.layers * (CHECKPOINTED_LAYER_FRACTION if spec.gradient_checkpointing else 1.0)
    if spec.gradient_checkpointing:
        layers_alive += 1  # the layer being recomputed holds its full activations
    memory = {
        "process": PROCESS_BASE_MB,
        "weights": shape.params * weight_bytes / mb,
        "gradients + AdamW": trainable * 4 * 3 / mb,
        "activations": per_layer * layers_alive / mb,
        "loss (logit chunks)": LOSS_CHUNK_ROWS * shape.vocab * 4 * 3 / mb,
    }
    if not lora and bf16:
        memory["bf16 weight copies (autocast)"] = shape.params * 2 / mb
    peak = sum(memory.values())
    flops_per_token = 6 * (shape.params - shape.embedding_params) + 12 * shape.layers * shape.hidden * longest / 2
    seconds = total_tokens * flops_per_token / achieved_flops(bf16)
    return StagePlan(
        stage, {k: round(v, 1) for k, v in memory.items()}, round(peak, 1), total_tokens, round(seconds, 1)
    )


def achieved_flops(bf16: bool) -> float:
    """FLOP/s the training path reaches here: the peak times the calibrated efficiency."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ghz = _cpu_ghz()
    if bf16 and cpu_supports_bf16():
        return cores * ghz * 1e9 * 1024 * THROUGHPUT_EFFICIENCY["bf16"]
    return cores * ghz * 1e9 * 64 * THROUGHPUT_EFFICIENCY["fp32"]


def _cpu_ghz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and "@" in line and "GHz" in line:
                return float(line.split("@")[1].strip().removesuffix("GHz"))
    except (OSError, ValueError):
        pass
    return 2.0


def available_memory_mb() -> float | None:
    """MemAvailable from /proc/meminfo (None where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def plan_recipe(recipe: Recipe) -> list[StagePlan]:
    """Plans for the recipe's training stages, from its model and its prepared (or raw) data."""
    import torch

    from lmforge.models import load_tokenizer
    from lmforge.train.causal import use_bf16

    model_dir = resolve_model(recipe.model.ref, recipe.model.revision)
    shape = ModelShape.from_config(json.loads((model_dir / "config.json").read_text()))
    tokenizer = load_tokenizer(model_dir)
    plans = []
    if "sft" in recipe.stages:
        spec = recipe.sft
        lengths = _chat_lengths(recipe, tokenizer, spec.max_length)
        lengths.sort()
        batch = lengths[-spec.batch_size :]
        batch_tokens = max(batch) * len(batch) if not spec.packing else sum(batch)
        epochs = (
            spec.epochs if spec.max_steps < 0 else spec.max_steps * spec.batch_size * spec.grad_accum / len(lengths)
        )
        plan = plan_training(
            shape,
            spec,
            batch_tokens,
            max(batch),
            int(sum(lengths) * epochs),
            use_bf16(spec) and not torch.cuda.is_available(),
        )
        plans.append(plan)
    return plans


def _chat_lengths(recipe: Recipe, tokenizer: Any, max_length: int) -> list[int]:
    from lmforge.records import read_records
    from lmforge.rundir import StageDir

    data = StageDir.open(recipe.run_path(), "data")
    splits = data.manifest.get("outputs", {}).get("splits", {}) if data.status == "done" else {}
    records = [r for name in recipe.sft.splits if name in splits for r in read_records(splits[name])]
    if not records:
        from lmforge.data.prepare import prepare_records  # data not prepared yet: read it in memory

        prepared = prepare_records(recipe.data, recipe.seed)
        records = [r for name in recipe.sft.splits for r in prepared.splits.get(name, [])]
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records if r["kind"] == "chat"]
    return [min(len(ids), max_length) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
