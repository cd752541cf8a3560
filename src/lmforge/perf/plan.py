"""``lmforge plan RECIPE``: peak memory and wall time of the training stages, estimated before running them.

For each causal-LM training stage of the recipe (``cpt``, ``sft``) the plan reads the model's
``config.json`` and the stage's data (the data stage's splits when it has run, else the sources
prepared in memory), and adds up what the training process holds at its peak, on the detected
hardware:

* the process itself: Python, torch, transformers, peft, datasets imported (a measured constant);
* the weights: bf16 when LoRA trains over a frozen base under bf16 autocast, fp32 otherwise, plus the
  bf16 copies autocast keeps for the forward pass when every weight trains;
* the trainable weights' fp32 gradients and AdamW states (two fp32 tensors each);
* the activations kept for the backward pass of the largest micro-batch: per token and layer, from
  the model's widths (:func:`activation_bytes_per_token_layer`), plus attention scores where the
  kernel materialises them; with activation checkpointing only each layer's input, plus a few layers;
* the chunked loss (a few ``64 x vocab`` fp32 tiles) and the logits of the eval pass;
* while loading, the checkpoint file mapped into memory next to the converted weights.

Peak RSS = process + max(loading, training). Time = computed tokens (padding included) x FLOPs per
token / (peak FLOP/s x the efficiency this path reaches), the FLOPs counted as in ``lmforge bench``.
The constants marked *measured* were fitted to peak RSS and throughput measured on the development
machines (2-core Xeon with AMX, 2-core Zen 5 with avx512_bf16; torch 2.13 CPU); docs/PERFORMANCE.md
("Planning") lists the measurements and ``benchmarks/plan_calibration.py`` repeats them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from lmforge.engine.budget import ACTIVATION_SCALE, activation_bytes_per_token_layer, backward_config, micro_batching
from lmforge.engine.compute import attention_kernel, attention_row, eager_scores_bytes, eager_scores_mb, use_bf16
from lmforge.engine.schedule import auto_epochs
from lmforge.engine.shape import ModelShape, language_config
from lmforge.hardware import MB, cpu_ghz, cpu_isa, cpu_name, cpu_peak_flops, memory_mb, usable_cores
from lmforge.stages import TRAINING_STAGES, WORKLOADS

# ---------------------------------------------------------------- constants (see the module docstring)

PROCESS_MB = 620.0
"""*Measured*: RSS of an ``lmforge run`` process with torch, transformers, peft and datasets imported,
the tokenizer loaded and the Trainer built, before any weight or activation."""
# ACTIVATION_SCALE (*measured*, in lmforge.engine.budget): peak RSS over the counted activation bytes.
# Most of it is glibc's heap: once a large tensor is freed, its dynamic mmap threshold rises and later
# tensors of that size come from the heap, which is not given back between layers (with
# MALLOC_MMAP_THRESHOLD_=131072 the 64-row LoRA run measures within 4% of the counted bytes, but its
# steps are several times slower).
CHECKPOINTED_LAYERS = 4
"""*Measured*: layers' worth of activations alive at once under activation checkpointing (the layer
being recomputed, its gradients and what the allocator holds back), beyond every layer's input."""
LOAD_OVERHEAD_MB = 0.0
"""*Measured*: extra memory while loading, beyond the mapped file and the converted weights."""
EFFICIENCY = {"amx": 0.05, "avx512_bf16": 0.30, "fp32": 0.30}
"""*Measured*: share of the peak matmul FLOP/s the sft path reaches (``lmforge bench``): bf16 on an AMX
Xeon (short rows, 2026-11-22), bf16 on a Zen 5 with avx512_bf16 (RAFT rows of 500-920 tokens,
2026-12-02; 33% on the demo's short rows), fp32 against ``cores x GHz x 64`` (AMX Xeon; 32% on the
Zen 5 capped to AVX2)."""
CHECKPOINTING_TIME = 1.3
"""*Measured*: step time with activation checkpointing over the step time without."""
LONG_RUN_SECONDS = 2 * 3600
"""A stage planned to take longer than this gets a warning."""
LOSS_CHUNK_ROWS = {"bf16": 64, "fp32": 256}
"""Rows of logits the chunked cross-entropy holds at once (``fast.loss_chunk_rows``)."""
GPUS = {  # name as torch.cuda.get_device_name() spells part of it: (memory GiB, dense bf16 tensor TFLOP/s)
    "H200": (141, 989),
    "H100 PCIe": (80, 756),
    "H100": (80, 989),
    "A100-SXM4-40GB": (40, 312),
    "A100": (80, 312),
    "L40S": (48, 362),
    "L4": (24, 121),
    "A10G": (24, 70),
    "A10": (24, 125),
    "RTX 4090": (24, 165),
    "RTX 3090": (24, 71),
    "T4": (16, 65),
}
"""Published figures of common cards (the vendors' datasheets; T4: fp16, it has no bf16)."""
GPU_EFFICIENCY = 0.35
"""*Assumed, not measured*: share of the card's dense bf16 peak a GPU step reaches. No GPU run of lmforge
has been measured yet (docs/PERFORMANCE.md); plan prints GPU times as assumptions."""
CUDA_CONTEXT_MB = 500.0
"""*Assumed*: GPU memory the CUDA context and kernels' workspaces take before any weight."""


@dataclass
class Hardware:
    """The machine the plan is for."""

    device: str
    cores: int
    ghz: float
    bf16: bool
    peak_flops: float
    total_mb: float | None
    available_mb: float | None
    name: str = ""
    isa: str = "amx"
    """The CPU's matmul instruction set (``lmforge.hardware.cpu_isa``): which calibration the time uses."""

    @classmethod
    def detect(cls) -> Hardware:
        import torch

        from lmforge.models import cpu_supports_bf16

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            name = torch.cuda.get_device_name()
            peak = next((tflops * 1e12 for key, (_, tflops) in GPUS.items() if key in name), 0.0)
            return cls("cuda", usable_cores(), cpu_ghz(), True, peak, total / MB, free / MB, name)
        total, available = memory_mb()
        name, isa = cpu_name(), cpu_isa()
        return cls("cpu", usable_cores(), cpu_ghz(), cpu_supports_bf16(), cpu_peak_flops(), total, available, name, isa)

    @classmethod
    def gpu(cls, name: str) -> Hardware:
        """One GPU of :data:`GPUS` (``H100``, ``L4`` ..., case-insensitive), all of its memory free: the
        machine to plan for when it is not this one."""
        found = next((key for key in GPUS if key.lower() == name.strip().lower()), None)
        if found is None:
            raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
        memory_gib, tflops = GPUS[found]
        return cls("cuda", 0, 0.0, found != "T4", tflops * 1e12, memory_gib * 1024.0, memory_gib * 1024.0, found)


@dataclass
class Batches:
    """The token counts of a stage's training that memory and time depend on."""

    micro_batch_tokens: int
    """Tokens of the largest micro-batch, padding included."""
    longest_row: int
    """Longest row of that micro-batch (eager attention scores grow with its square)."""
    rows: int
    """Rows in that micro-batch."""
    computed_tokens: int
    """Tokens the whole stage computes (all steps, padding included)."""
    trained_examples: int
    attention_span: int = 0
    """Longest stretch of tokens attending to each other in a row: an example (sft) or a row (cpt)."""


@dataclass
class StagePlan:
    """The estimate for one training stage."""

    stage: str
    method: str
    precision: str
    memory_mb: dict[str, float]
    peak_mb: float
    seconds: float | None
    batches: Batches
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the estimate


def estimate_memory(
    shape: ModelShape, spec: Any, batches: Batches, bf16: bool, kernel: str, hardware_device: str = "cpu"
) -> dict[str, float]:
    """Peak memory of one training stage by component, in MB (see the module docstring)."""
    lora = spec.method == "lora"
    frozen_bytes = 2 if (lora and bf16) else 4
    rank = spec.lora.r if lora else None
    top = spec.lora.top_layers if lora else None
    trainable = shape.lora_params(spec.lora.r, spec.lora.target_modules, top) if lora else shape.params
    quantization = getattr(spec, "quantization", "none") if lora else "none"
    weights = shape.frozen_weight_bytes(frozen_bytes, quantization) + (trainable * 4 if lora else 0)
    per_token_layer = activation_bytes_per_token_layer(shape.hidden, shape.intermediate, bf16, rank) * ACTIVATION_SCALE
    width = 2 if bf16 else 4
    scores = 0.0
    transient = 0.0
    if kernel == "eager":
        scores = eager_scores_bytes(batches.rows, batches.longest_row, shape.heads, width)
    elif kernel == "packed":  # sdpa with a block-diagonal mask over the row: fp32 scores while a layer runs
        transient = batches.rows * batches.longest_row**2 * (shape.heads * 4 + 1) * ACTIVATION_SCALE
    per_layer = batches.micro_batch_tokens * per_token_layer + scores
    if spec.gradient_checkpointing:
        kept = batches.micro_batch_tokens * shape.hidden * width * shape.layers + CHECKPOINTED_LAYERS * per_layer
    else:  # blocks below the adapted ones keep nothing for the backward pass
        kept = per_layer * shape.adapted_layers(top)
    kept += transient
    memory = {
        "process": PROCESS_MB if hardware_device == "cpu" else CUDA_CONTEXT_MB,
        "weights": weights / MB,
        "gradients + AdamW": trainable * 12 / MB,
        "activations": kept / MB,
        "loss": 3 * LOSS_CHUNK_ROWS["bf16" if bf16 else "fp32"] * shape.vocab * 4 / MB
        + batches.micro_batch_tokens * shape.hidden * 8 / MB,
    }
    if not lora:  # the chunked loss accumulates the output head's fp32 gradient during the forward pass
        memory["loss"] += shape.vocab * shape.hidden * 4 / MB
    if not lora and bf16:
        memory["autocast weight copies"] = (shape.params - shape.embedding_params) * 2 / MB
    return {key: round(value, 1) for key, value in memory.items()}


def loading_peak_mb(shape: ModelShape, spec: Any, bf16: bool) -> float:
    """Peak while the weights load: the mapped checkpoint file next to the converted weights."""
    frozen_bytes = 2 if (spec.method == "lora" and bf16) else 4
    return PROCESS_MB + (shape.checkpoint_bytes + shape.params * frozen_bytes) / MB + LOAD_OVERHEAD_MB


def flops_per_token(shape: ModelShape, spec: Any) -> float:
    """4 N + 2 T, as ``lmforge bench`` counts model FLOPs (N: block matmul weights, T: trainable ones);
    with LoRA on the last blocks only, the backward pass (2 N of the 4) covers only those blocks."""
    n = shape.layers * shape.block_matmul_params()
    if spec.method == "lora":
        top = spec.lora.top_layers
        lora = shape.lora_params(spec.lora.r, spec.lora.target_modules, top)
        backward = 2 * n * shape.adapted_layers(top) / shape.layers
        return 2 * n + backward + 4 * lora + 2 * lora
    return 6.0 * n


def estimate_seconds(shape: ModelShape, spec: Any, batches: Batches, hardware: Hardware, bf16: bool) -> float | None:
    """Training time: computed tokens x FLOPs per token / achieved FLOP/s (None where uncalibrated)."""
    if hardware.peak_flops <= 0:
        return None
    if hardware.device != "cpu":  # an assumption until a GPU run is measured (GPU_EFFICIENCY)
        return batches.computed_tokens * flops_per_token(shape, spec) / (hardware.peak_flops * GPU_EFFICIENCY)
    native_bf16 = bf16 and hardware.bf16
    efficiency = EFFICIENCY[("amx" if hardware.isa == "amx" else "avx512_bf16") if native_bf16 else "fp32"]
    peak = hardware.peak_flops if bf16 and hardware.bf16 else hardware.cores * hardware.ghz * 1e9 * 64
    seconds = batches.computed_tokens * flops_per_token(shape, spec) / (peak * efficiency)
    return seconds * (CHECKPOINTING_TIME if spec.gradient_checkpointing else 1.0)


def plan_stage(
    stage: str, shape: ModelShape, spec: Any, batches: Batches, hardware: Hardware, bf16: bool, kernel: str
) -> StagePlan:
    """Memory, time and warnings for one stage."""
    memory = estimate_memory(shape, spec, batches, bf16, kernel, hardware.device)
    training = sum(memory.values())
    loading = loading_peak_mb(shape, spec, bf16) if hardware.device == "cpu" else 0.0
    peak = max(training, loading)
    notes = [f"{kernel} attention", f"largest micro-batch {batches.rows} x {batches.longest_row} tokens"]
    if loading > training:
        notes.append(f"the peak is while loading the weights ({loading:.0f} MB)")
    plan = StagePlan(
        stage=stage,
        method=spec.method,
        precision="bf16" if bf16 else "fp32",
        memory_mb=memory,
        peak_mb=round(peak, 1),
        seconds=estimate_seconds(shape, spec, batches, hardware, bf16),
        batches=batches,
        notes=notes,
    )
    if hardware.available_mb is not None and peak > hardware.available_mb:
        plan.warnings.append(
            f"{stage} needs about {peak / 1024:.1f} GiB at its peak and {hardware.available_mb / 1024:.1f} GiB are "
            f"available: it will not fit. {_advice(stage, spec, memory)}"
        )
    elif hardware.available_mb is not None and peak > 0.8 * hardware.available_mb:
        plan.warnings.append(
            f"{stage} needs about {peak / 1024:.1f} GiB of the {hardware.available_mb / 1024:.1f} GiB available: tight"
        )
    if plan.seconds is not None and plan.seconds > LONG_RUN_SECONDS:
        plan.warnings.append(
            f"{stage} will take about {_duration(plan.seconds)} here ({batches.computed_tokens:,} tokens to compute); "
            f"fewer {stage}.epochs, a shorter {stage}.max_length, lora.top_layers or a smaller model cut it"
        )
    return plan


def _advice(stage: str, spec: Any, memory: dict[str, float]) -> str:
    biggest = max(memory, key=memory.get)
    if biggest == "activations":
        tips = [f"lower {stage}.batch_size (raise {stage}.grad_accum to keep the step)"]
        if not spec.gradient_checkpointing:
            tips.insert(0, f"set {stage}.gradient_checkpointing: true")
        tips.append(f"lower {stage}.max_length")
        return "Largest part: activations; " + ", or ".join(tips) + "."
    if spec.method == "full":
        return f"Largest part: {biggest}; train a LoRA adapter ({stage}.method: lora) instead of every weight."
    return f"Largest part: {biggest}; use a smaller model."


# ---------------------------------------------------------------- from a recipe


def plan_recipe(
    recipe: Any, fresh_data: bool = False, hardware: Hardware | None = None, model_config: dict[str, Any] | None = None
) -> tuple[Hardware, list[StagePlan]]:
    """The hardware and a plan per causal-LM training stage of ``recipe`` (``cpt``, ``sft``); ``fresh_data``:
    prepare the data in memory even where the run's data stage has finished (an arm that changes it).
    ``hardware`` plans for another machine (:meth:`Hardware.gpu`) and ``model_config`` for another model's
    shape (its ``config.json``; the tokens are still counted with the recipe model's tokenizer)."""
    from lmforge.models import load_tokenizer, resolve_model

    hardware = hardware or Hardware.detect()
    model_dir = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
    checkpoint = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if model_config is None:
        shape = ModelShape.from_config(config, checkpoint)
    else:
        config = model_config
        shape = ModelShape.from_config(config).with_bf16_checkpoint()
    config = language_config(config)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=recipe.model.trust_remote_code)
    splits = _splits(recipe, fresh_data)
    future_notes = _future_splits(recipe, splits)
    plans = []
    for stage in [name for name in WORKLOADS if name in recipe.stages]:
        spec = getattr(recipe, stage)
        bf16 = use_bf16(spec.precision)
        rank = spec.lora.r if spec.method == "lora" else None
        if WORKLOADS[stage] == "chat":
            lengths = _chat_lengths(splits, spec.splits, tokenizer, spec.max_length)
            added, added_notes = _sft_additions(recipe, splits, tokenizer)
            lengths += added
            micro = micro_batching(
                spec.micro_batch_tokens,
                spec.batch_size,
                lengths,
                spec.packing,
                backward_config(config, spec),
                bf16,
                rank,
                hardware.available_mb,
                hardware.device,
            )
            batches = sft_batches(lengths, spec, micro.rows)
            rows, longest = attention_row(lengths, micro.rows, spec.packing)
        else:
            lengths = _text_lengths(splits, spec.splits, tokenizer)
            rows_total = max(1, math.ceil(sum(lengths) / spec.max_length))
            kept = backward_config(config, spec)
            rows_of = [spec.max_length] * rows_total
            micro = micro_batching(
                spec.micro_batch_tokens,
                spec.batch_size,
                rows_of,
                False,
                kept,
                bf16,
                rank,
                hardware.available_mb,
                hardware.device,
            )
            batches = cpt_batches(sum(lengths), spec, micro.rows)
            rows, longest = micro.rows, spec.max_length
        # What the stage picks: by its longest (packed or padded) row and the eager scores of its largest micro-batch.
        scores = eager_scores_mb(spec, rows, longest, shape.heads, shape.layers)
        kernel = attention_kernel(spec.attention, longest, scores)
        plans.append(plan_stage(stage, shape, spec, batches, hardware, bf16, kernel))
        plans[-1].notes.append(micro.reason)
        if WORKLOADS[stage] == "chat":
            plans[-1].notes.extend(added_notes)
        plans[-1].notes.extend(note for name, note in future_notes.items() if name in spec.splits)
        missing = [name for name in spec.splits if name not in splits]
        if missing:
            plans[-1].warnings.append(
                f"{stage}.splits {missing} do not exist yet (written by a later stage, e.g. index for raft): "
                "not counted; plan again after that stage has run"
            )
    for stage in TRAINING_STAGES:
        if stage in recipe.stages and stage not in WORKLOADS:
            plans.append(_not_estimated(stage, getattr(recipe, stage)))
    return hardware, plans


def _sft_additions(recipe: Any, splits: dict[str, list[dict[str, Any]]], tokenizer: Any) -> tuple[list[int], list[str]]:
    """Lengths of what sft adds to its splits' chat records (replay, the documents' text), and notes on them."""
    from lmforge.train.documents import document_texts
    from lmforge.train.replay import cached_replay
    from lmforge.train.rewording import planned_note

    spec = recipe.sft
    replay = cached_replay(recipe, [r for name in spec.splits for r in splits.get(name, []) if r["kind"] == "chat"])
    lengths, notes = [], []
    if replay is None:
        notes.append("replay of the base model's replies not counted (generated when sft first runs)")
    elif replay:
        lengths += _chat_lengths({"replay": replay}, ["replay"], tokenizer, spec.max_length)
        notes.append(f"{len(replay)} replay records")
    if spec.reword.enabled:
        notes.append(planned_note(spec.reword, [r for name in spec.splits for r in splits.get(name, [])]))
    if spec.documents.enabled:
        texts = document_texts(splits.get(spec.documents.split, []), spec.documents, recipe.seed)
        lengths += [min(n, spec.max_length) for n in _text_lengths({"d": texts}, ["d"], tokenizer)]
        notes.append(f"{len(texts)} document chunks ({spec.documents.copies} form(s) each)")
    return lengths, notes


def sft_batches(lengths: list[int], spec: Any, rows: int | None = None) -> Batches:
    """Micro-batches of sft: length-grouped and padded to their longest example, or packed into one row;
    ``rows`` per forward pass (fewer than ``batch_size`` under a token budget)."""
    if not lengths:
        return Batches(0, 0, 0, 0, 0)
    ordered = sorted(lengths, reverse=True)
    size = rows or spec.batch_size
    _, epochs = _steps_and_epochs(len(lengths), spec)
    if spec.packing:
        mean = sum(lengths) / len(lengths)
        spread = math.sqrt(sum((n - mean) ** 2 for n in lengths) / len(lengths))
        row = min(sum(ordered[:size]), int(mean * size + 3 * spread * math.sqrt(size)))
        computed = sum(lengths) * epochs
        return Batches(row, row, 1, int(computed), int(len(lengths) * epochs), ordered[0])
    padded = sum(max(chunk) * len(chunk) for chunk in _chunks(ordered, size))
    first = ordered[:size]
    return Batches(max(first) * len(first), max(first), len(first), int(padded * epochs), int(len(lengths) * epochs))


def cpt_batches(total_tokens: int, spec: Any, micro_rows: int | None = None) -> Batches:
    """Micro-batches of cpt: ``batch_size`` rows (``micro_rows`` under a token budget) of ``max_length`` tokens."""
    rows = max(1, math.ceil(total_tokens / spec.max_length))
    _, epochs = _steps_and_epochs(rows, spec)
    size = min(micro_rows or spec.batch_size, rows)
    return Batches(
        size * spec.max_length, spec.max_length, size, int(total_tokens * epochs), int(rows * epochs), spec.max_length
    )


def _steps_and_epochs(examples: int, spec: Any) -> tuple[int, float]:
    per_step = spec.batch_size * spec.grad_accum
    if spec.max_steps > 0:
        return spec.max_steps, spec.max_steps * per_step / max(examples, 1)
    epochs = auto_epochs(examples) if spec.epochs == "auto" else spec.epochs
    return math.ceil(examples / per_step * epochs), epochs


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _not_estimated(stage: str, spec: Any) -> StagePlan:
    return StagePlan(
        stage=stage,
        method=spec.method,
        precision=spec.precision,
        memory_mb={},
        peak_mb=0.0,
        seconds=None,
        batches=Batches(0, 0, 0, 0, 0),
        notes=[f"{stage} is not estimated yet (encoder and encoder-decoder models, preference pairs)"],
    )


def _future_splits(recipe: Any, splits: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Add to ``splits`` what later stages will write and that training stages read; returns a note per split.

    Today: the index stage's RAFT split (:func:`lmforge.rag.raft.preview_raft_split`).
    """
    from lmforge.rag.raft import preview_raft_split

    preview = preview_raft_split(recipe, splits)
    if preview is None:
        return {}
    splits[recipe.index.raft.split] = preview[0]
    return {recipe.index.raft.split: preview[1]}


def future_split_notes(recipe: Any) -> dict[str, str]:
    """What later stages will write (the RAFT split: examples, questions skipped and why), from the
    recipe's data, before anything runs (``lmforge validate``)."""
    return _future_splits(recipe, _splits(recipe))


def _splits(recipe: Any, fresh: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Split name -> records: the data stage's output when it has run (and not ``fresh``), else prepared in
    memory (nothing written)."""
    from lmforge.records import read_records
    from lmforge.rundir import MANIFEST, StageDir

    run_path = recipe.run_path()
    data = StageDir.open(run_path, "data")
    if data.status == "done" and not fresh:
        written = dict(data.manifest.get("outputs", {}).get("splits", {}))
        for manifest in sorted(run_path.glob(f"*/{MANIFEST}")):  # splits of later stages (index: raft)
            other = StageDir.open(run_path, manifest.parent.name)
            if other.stage != "data" and other.status == "done":
                written = {**other.manifest.get("outputs", {}).get("splits", {}), **written}
        return {name: list(read_records(path)) for name, path in written.items()}
    from lmforge.data.stage import prepare_records

    return prepare_records(recipe.data, recipe.seed).splits


def _chat_lengths(
    splits: dict[str, list[dict[str, Any]]], names: list[str], tokenizer: Any, max_length: int
) -> list[int]:
    texts = [
        tokenizer.apply_chat_template(r["messages"], tokenize=False)
        for name in names
        for r in splits.get(name, [])
        if r["kind"] == "chat"
    ]
    if not texts:
        return []
    return [min(len(ids), max_length) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _text_lengths(splits: dict[str, list[dict[str, Any]]], names: list[str], tokenizer: Any) -> list[int]:
    texts = [r["text"] for name in names for r in splits.get(name, []) if r["kind"] == "text"]
    if not texts:
        return []
    return [len(ids) + 1 for ids in tokenizer(texts)["input_ids"]]  # + EOS between documents


# ---------------------------------------------------------------- machine


def render(hardware: Hardware, plans: list[StagePlan]) -> Any:
    """A rich renderable: the hardware line and a table per stage."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    available = f"{hardware.available_mb / 1024:.1f} GiB available" if hardware.available_mb else "memory unknown"
    total = f" of {hardware.total_mb / 1024:.1f} GiB" if hardware.total_mb else ""
    if hardware.device == "cpu":
        peak = f"{hardware.peak_flops / 1e12:.1f} TFLOP/s {'bf16' if hardware.bf16 else 'fp32'} peak"
        head = f"{hardware.name}: {hardware.cores} cores at {hardware.ghz:.2f} GHz, {peak}; {available}{total}"
    else:
        assumed = f"time assumed at {GPU_EFFICIENCY:.0%} of its bf16 peak, not measured"
        timing = assumed if hardware.peak_flops else "time not estimated: a card plan does not know"
        head = f"{hardware.name}: {available}{total} of GPU memory ({timing})"
    parts: list[Any] = [Text(head)]
    for plan in plans:
        table = Table(title=f"{plan.stage}: {plan.method}, {plan.precision}", title_justify="left")
        table.add_column("memory")
        table.add_column("MB", justify="right")
        for key, value in plan.memory_mb.items():
            table.add_row(key, f"{value:,.0f}")
        if plan.memory_mb:
            label = "peak RSS" if hardware.device == "cpu" else "peak GPU memory"
            table.add_row(f"[bold]{label}[/bold]", f"[bold]{plan.peak_mb:,.0f}[/bold]")
        parts.append(table)
        details = list(plan.notes)
        if plan.seconds is not None:
            details.append(f"{plan.batches.computed_tokens:,} tokens to compute, about {_duration(plan.seconds)}")
        parts.append(Text("  " + "; ".join(details)))
        parts.extend(Text(f"  warning: {w}", style="yellow") for w in plan.warnings)
    return Group(*parts)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
