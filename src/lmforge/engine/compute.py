"""What a training stage computes with, decided once before it trains: precision (bf16 autocast where
the hardware has native bf16), the attention kernel, QLoRA quantization, threads per process and
``torch.compile``; the checks that refuse settings this machine cannot honour; and the record of
those choices in the stage's metrics (:func:`compute_choices`)."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from lmforge import distributed
from lmforge.config import TrainSpec
from lmforge.errors import ConfigError, Problem
from lmforge.hardware import MB, usable_cores
from lmforge.log import stage_log
from lmforge.models import cpu_supports_bf16

BNB_OPTIMIZERS = {"adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}
BNB_OPTIMIZERS["paged_adamw_32bit"] = "paged_adamw_32bit"

# ---------------------------------------------------------------- setup checks


def check_training_setup(spec: TrainSpec, where: str, source: str) -> None:
    """Refuse settings this machine cannot honour, all at once, before any model is loaded.

    Raises:
        ConfigError: CUDA-only features on a machine without CUDA, missing optional packages.
    """
    import torch

    problems: list[Problem] = []
    cuda = torch.cuda.is_available()
    needs_bnb = spec.quantization != "none" or spec.optimizer in BNB_OPTIMIZERS
    if spec.quantization != "none" and not cuda:
        problems.append(
            Problem(
                f"{where}.quantization",
                f"got {spec.quantization!r}; bitsandbytes quantization (QLoRA) needs a CUDA GPU and none is "
                f"visible here; set {where}.quantization: none (plain LoRA trains on CPU)",
            )
        )
    if spec.optimizer in BNB_OPTIMIZERS and not cuda:
        problems.append(
            Problem(
                f"{where}.optimizer",
                f"got {spec.optimizer!r}; 8-bit and paged optimizers (bitsandbytes) need a CUDA GPU and none is "
                f"visible here; use adamw, adafactor or sgd",
            )
        )
    if needs_bnb and cuda and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(Problem(where, "quantization / 8-bit optimizers need bitsandbytes: pip install bitsandbytes"))
    for backend in spec.report_to:
        if backend != "tensorboard" and importlib.util.find_spec(backend) is None:
            problems.append(Problem(f"{where}.report_to", f"{backend!r} is not installed: pip install {backend}"))
    if problems:
        raise ConfigError(source, problems)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch before a model is built, so adapter initialisation is reproducible."""
    from transformers import set_seed

    set_seed(seed)


def use_bf16(precision: str) -> bool:
    """bf16 autocast: on request, or (auto) on CUDA and on CPUs with native bf16 matmuls."""
    import torch

    if precision == "auto":
        return torch.cuda.is_available() or cpu_supports_bf16()
    return precision == "bf16"


EAGER_SCORES_BUDGET_MB = 1024.0
"""Most memory ``attention: auto`` lets the eager kernel keep in attention scores on a CPU (MB)."""


def eager_scores_bytes(rows: int, longest: int, heads: int, width: int = 2) -> float:
    """Bytes eager attention keeps for the backward pass in one layer: the fp32 softmax output, its
    copy in the compute dtype (``width`` bytes) and the mask, per head and token pair of a micro-batch."""
    return float(rows * longest**2 * heads * (5 + width))


def eager_scores_mb(spec: TrainSpec, rows: int, longest: int, heads: int, layers: int) -> float:
    """MB of attention scores eager attention would hold for the backward pass of a micro-batch: every
    layer's, or under activation checkpointing about one layer's (the layers are recomputed one by one)."""
    width = 2 if use_bf16(spec.precision) else 4
    kept_layers = 1 if spec.gradient_checkpointing else layers
    return eager_scores_bytes(rows, longest, heads, width) * kept_layers / MB


def attention_row(lengths: list[int], batch_size: int, packing: bool) -> tuple[int, int]:
    """(rows, tokens per row) of the largest micro-batch attention sees, from the examples' lengths:
    ``batch_size`` rows padded to the longest example, or — packed — one row that can hold the
    ``batch_size`` longest examples together (judging by ``max_length`` alone underestimates it)."""
    ordered = sorted(lengths, reverse=True)
    if packing:
        return 1, sum(ordered[:batch_size])
    return min(batch_size, len(ordered)), ordered[0] if ordered else 0


def attention_kernel(attention: str, longest: int, scores_mb: float = 0.0) -> str:
    """The attention implementation to train with (``auto``: see ``SFTSpec.attention``).

    ``longest`` is the longest row trained on; ``scores_mb`` what eager attention would keep over all
    layers for the largest micro-batch (:func:`eager_scores_mb`).
    """
    import torch

    if attention != "auto":
        return attention
    if torch.cuda.is_available():
        return "sdpa"
    # CPU: the eager kernel beat sdpa's flash backward on short rows, but it keeps the score matrices
    # of every layer: on demo-rag (16 rows up to 385 tokens, 4.5 GB of scores) sdpa peaked at 8.5 GB
    # against eager's 13.2 GB for 5% more time (docs/PERFORMANCE.md).
    return "eager" if longest <= 512 and scores_mb <= EAGER_SCORES_BUDGET_MB else "sdpa"


def quantization_config(spec: TrainSpec) -> Any:
    """bitsandbytes settings for QLoRA (4-bit NF4, double quantization, bf16 compute) or 8-bit; None for none."""
    if spec.quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        # Packed 4-bit weights stored as bf16 elements, so FSDP can shard them with the bf16 weights
        # (the layout transformers and PEFT document for FSDP + QLoRA); the same bits otherwise.
        bnb_4bit_quant_storage=torch.bfloat16,
    )


# ---------------------------------------------------------------- threads and compilation


def configure_threads(per_process: int | None = None) -> int:
    """One torch thread per usable physical core, unless the user chose a number; returns the count.

    With several processes on this machine (``LOCAL_WORLD_SIZE``), each gets its share of the cores
    (at least one), so processes x threads never oversubscribe them; ``per_process`` overrides that.

    A choice is OMP_NUM_THREADS / MKL_NUM_THREADS in the environment, or ``torch.set_num_threads``
    to something other than torch's default. Usable cores are the physical ones in this process's
    CPU affinity, capped by a cgroup CPU quota (containers): torch's default counts every core of
    the host, and more threads than cores makes every parallel region wait for a parked thread.
    """
    import torch

    current = torch.get_num_threads()
    if per_process is not None:
        torch.set_num_threads(per_process)
        return per_process
    local = distributed.world().local_size
    if (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")) and local == 1:
        return current
    if current not in _default_thread_counts() and local == 1:
        return current  # set by the user in this process
    wanted = max(1, usable_cores() // local)
    if wanted != current:
        torch.set_num_threads(wanted)
    return wanted


def _default_thread_counts() -> set[int]:
    """Thread counts torch may pick by itself (its default follows the host's cores)."""
    counts = {os.cpu_count() or 1}
    try:
        import psutil

        counts.add(psutil.cpu_count(logical=False) or 1)
    except ImportError:
        pass
    return counts


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def compile_blocks(model: Any, label: str, backend: str = "inductor") -> int:
    """``torch.compile`` every block of the model's main stack of layers in place; returns how many.

    Blocks are compiled one by one rather than the whole model: the stages call the backbone and the
    loss directly, and identical blocks share one compiled graph, so compile time does not grow with
    depth. Compilation happens at the first step; :func:`compile_seconds` reports its cost.
    """
    import torch

    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
    stacks = [m for m in stacks if len({type(block) for block in m}) == 1]
    if not stacks:
        stage_log(label).warning("compile is on but no stack of identical layers was found; training uncompiled")
        return 0
    blocks = max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()))
    torch._dynamo.utils.clear_compilation_metrics()
    for block in blocks:
        block.compile(backend=backend)
    stage_log(label).info(
        f"torch.compile on {len(blocks)} {type(blocks[0]).__name__} blocks (compiled at the first step)"
    )
    return len(blocks)


def compile_seconds() -> float:
    """Seconds spent compiling (dynamo, AOT autograd, inductor) since :func:`compile_blocks`."""
    from torch._dynamo.utils import get_compilation_metrics

    metrics = get_compilation_metrics()
    total_us = sum((m.duration_us or 0) + (m.backward_cumulative_compile_time_us or 0) for m in metrics)
    return round(total_us / 1e6, 1)


def compute_choices(trainer: Any) -> dict[str, str]:
    """What the stage computed with and why: device, instruction set, precision, attention kernel."""
    import torch

    from lmforge.hardware import cpu_isa

    model = trainer.model
    attention = str(getattr(getattr(model, "config", None), "_attn_implementation", None) or "default")
    if torch.cuda.is_available():
        device, isa = "cuda", torch.cuda.get_device_name(0)
    else:
        device, isa = "cpu", cpu_isa()
    bf16 = bool(trainer.args.bf16)
    native = device == "cuda" or isa in ("amx", "avx512_bf16")
    if bf16:
        why = "bf16 autocast: native bf16 matmuls" if native else "bf16 as the recipe asks (emulated here: slow)"
    else:
        why = "fp32 as the recipe asks" if native else "fp32: this CPU has no native bf16 matmuls (emulated: slower)"
    choices = {"device": device, "isa": isa, "precision": "bf16" if bf16 else "fp32", "why": why}
    choices["attention"] = attention
    micro = getattr(trainer, "micro_batching", None)
    if micro is not None:
        choices["micro_batch"] = micro.reason
    return choices
