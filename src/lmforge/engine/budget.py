"""How many rows a micro-batch may hold: a token budget instead of a fixed number of rows.

A recipe's ``batch_size`` says how many examples an optimizer step learns from; how many of them go
through the model *at once* decides the memory the backward pass keeps (activations grow with the
tokens of a micro-batch). Eight demo rows of ~80 tokens need ~1 GB; eight RAFT rows of ~1,000 tokens
need ~11 GB in fp32. With a token budget the step keeps its examples, but a micro-batch whose padded
(or packed) tokens would exceed the budget is cut into smaller ones, accumulated: same examples per
step, same per-token loss, less memory.

``micro_batch_tokens: auto`` picks the budget from the memory the device has free and the model's
widths (:func:`activation_bytes_per_token`): a quarter of the free memory, and never more than
:data:`AUTO_ACTIVATION_CAP_MB` — past a micro-batch of ~1-2 k tokens a CPU's matmuls are already
as fast as they get (docs/PERFORMANCE.md, "Token budget"), so more rows at once would only cost memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lmforge.hardware import MB, memory_mb

ACTIVATION_SCALE = 1.4
"""*Measured*: peak RSS over the counted activation bytes (glibc keeps freed blocks in its heap);
fitted to ``benchmarks/plan_calibration.py`` and the licenses case on a Zen 5 (docs/PERFORMANCE.md,
"Planning"); see ``lmforge.perf.plan``."""
AUTO_MEMORY_SHARE = 0.25
"""Share of the free memory ``micro_batch_tokens: auto`` lets one micro-batch's activations take."""
AUTO_ACTIVATION_CAP_MB = 2048.0
"""Most activation memory ``auto`` plans for, however much is free (see the module docstring)."""
MIN_AUTO_TOKENS = 256
"""Fewest tokens ``auto`` budgets (a machine short of memory still trains, one short row at a time)."""


def activation_bytes_per_token_layer(hidden: int, intermediate: int, bf16: bool, lora_rank: int | None) -> float:
    """Bytes one token leaves in one transformer block for the backward pass (Llama-style block).

    Counted from what autograd saves: the fp32 inputs of the two RMSNorms (2 x 4 d; in fp32 they are
    the residual stream itself, 4 d), the normalised inputs of the attention and MLP projections
    (2 x w d), query, key and value after rotary and grouped-query expansion and the attention output
    (4 x w d), and in the MLP the gate, its activation, the up projection and their product (4 x w i),
    w being 2 bytes under bf16 autocast and 4 in fp32; plus the rank-r LoRA intermediates. Checked with
    ``torch.autograd.graph.saved_tensors_hooks`` on SmolLM2's widths: 23.2 KB counted by the hooks
    against 24.0 KB here for bf16 LoRA (sdpa).
    """
    width = 2 if bf16 else 4
    counted = (8 * hidden if bf16 else 4 * hidden) + 6 * width * hidden + 4 * width * intermediate
    if lora_rank:
        counted += 7 * lora_rank * width
    return counted


def activation_bytes_per_token(config: dict[str, Any], bf16: bool, lora_rank: int | None) -> float:
    """Bytes one token of a micro-batch keeps for the backward pass over all layers (allocator slack included)."""
    hidden = config["hidden_size"]
    intermediate = config.get("intermediate_size") or 4 * hidden
    per_layer = activation_bytes_per_token_layer(hidden, intermediate, bf16, lora_rank)
    return per_layer * config["num_hidden_layers"] * ACTIVATION_SCALE


def _on_cuda(device: str) -> bool:
    if device != "auto":
        return device == "cuda"
    import torch

    return torch.cuda.is_available()


def free_memory_mb() -> float | None:
    """Memory the training device has free now (CUDA: the current GPU's; CPU: MemAvailable within the cgroup)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0] / MB
    return memory_mb()[1]


@dataclass(frozen=True)
class MicroBatching:
    """How one stage's micro-batches are sized."""

    budget: int | None
    """Tokens a micro-batch may hold (padding included); None: no budget (``batch_size`` rows)."""
    rows: int
    """Rows per micro-batch: ``batch_size``, or fewer to stay within the budget."""
    reason: str

    def as_manifest(self) -> dict[str, Any]:
        return {"micro_batch_tokens": self.budget, "micro_batch_rows": self.rows, "why": self.reason}


CONFIG_ALIASES = {
    "hidden_size": ("n_embd", "d_model"),
    "num_hidden_layers": ("n_layer", "num_layers"),
    "num_attention_heads": ("n_head", "num_heads"),
    "intermediate_size": ("n_inner", "d_ff", "ffn_dim"),
}
"""Other names families give the shape keys in config.json (GPT-2's n_embd, T5's d_model ...)."""


def standard_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the shape keys under their Llama names wherever the family spells them otherwise."""
    out = dict(config)
    for key, names in CONFIG_ALIASES.items():
        if out.get(key) is None:
            found = next((config[name] for name in names if config.get(name)), None)
            if found is not None:
                out[key] = found
    return out


def token_budget(
    setting: int | str,
    config: dict[str, Any],
    bf16: bool,
    lora_rank: int | None,
    free_mb: float | str | None = "now",
    device: str = "auto",
) -> tuple[int | None, str]:
    """The token budget for ``micro_batch_tokens`` (an int, ``auto`` or ``off``) and why; ``free_mb``
    is the device's free memory in MB (``now``: measured now; None: unknown). :data:`AUTO_ACTIVATION_CAP_MB`
    holds on a CPU (``device`` ``cpu``, or ``auto`` without CUDA) only: a GPU keeps gaining from larger
    micro-batches, so there ``auto`` gives activations their share of the free memory, uncapped."""
    if setting == "off":
        return None, "micro_batch_tokens: off (batch_size rows per micro-batch)"
    if isinstance(setting, int):
        return setting, f"micro_batch_tokens: {setting} (recipe)"
    per_token = activation_bytes_per_token(config, bf16, lora_rank)
    free = free_memory_mb() if free_mb == "now" else free_mb
    cap = math.inf if _on_cuda(device) else AUTO_ACTIVATION_CAP_MB
    allowed = AUTO_ACTIVATION_CAP_MB if free is None else min(cap, AUTO_MEMORY_SHARE * free)
    budget = max(MIN_AUTO_TOKENS, int(allowed * MB / per_token))
    where = "free memory unknown" if free is None else f"{free / 1024:.1f} GiB free"
    return budget, (
        f"micro_batch_tokens: auto -> {budget} ({per_token / 1024:.0f} KB of activations per token, "
        f"{allowed:.0f} MB allowed: {where})"
    )


def micro_batching(
    setting: int | str,
    batch_size: int,
    lengths: list[int],
    packing: bool,
    config: dict[str, Any],
    bf16: bool,
    lora_rank: int | None,
    free_mb: float | str | None = "now",
    device: str = "auto",
) -> MicroBatching:
    """Rows per micro-batch so that ``batch_size`` rows of the longest examples stay within the budget.

    Padded rows cost ``rows x longest``; a packed micro-batch is one row of the examples' summed
    lengths, bounded the same way. One example longer than the budget still trains (alone).
    """
    budget, reason = token_budget(setting, config, bf16, lora_rank, free_mb, device)
    if budget is None or not lengths:
        return MicroBatching(budget, batch_size, reason)
    longest = max(lengths)
    rows = max(1, min(batch_size, budget // max(longest, 1)))
    if rows < batch_size:
        pieces = math.ceil(batch_size / rows)
        reason += f"; {batch_size} rows of up to {longest} tokens -> {pieces} micro-batches of <= {rows} per step"
    if longest > budget:
        reason += f"; the longest example ({longest} tokens) exceeds the budget and trains alone"
    return MicroBatching(budget, rows, reason)


def backward_config(config: dict[str, Any], spec: Any) -> dict[str, Any]:
    """``config`` with ``num_hidden_layers`` cut to the blocks that keep activations for the backward pass:
    with ``lora.top_layers`` (and no activation checkpointing) the blocks below the adapted ones keep none."""
    top = spec.lora.top_layers if spec.method == "lora" else None
    if not top or getattr(spec, "gradient_checkpointing", False):
        return config
    return {**config, "num_hidden_layers": min(top, config["num_hidden_layers"])}


def stage_micro_batching(
    spec: Any, base_dir: Any, lengths: list[int], bf16: bool, packing: bool = False
) -> MicroBatching:
    """:func:`micro_batching` for a training stage's ``spec`` over the model in ``base_dir`` (its config.json)."""
    import json
    from pathlib import Path

    config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    config = backward_config(standard_config(config), spec)
    rank = spec.lora.r if spec.method == "lora" else None
    setting = getattr(spec, "micro_batch_tokens", "off")
    return micro_batching(setting, spec.batch_size, lengths, packing, config, bf16, rank)
