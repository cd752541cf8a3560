"""The causal LM a training stage trains: loaded with the kernel and dtype its batches need, a stacked cpt
adapter folded in when asked, and wrapped in LoRA / DoRA unless the stage fine-tunes every weight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.config import Recipe, TrainSpec
from lmforge.engine import chain
from lmforge.engine.budget import standard_config
from lmforge.engine.compute import attention_kernel, eager_scores_mb, quantization_config, use_bf16
from lmforge.engine.fast import enable_lean_lora
from lmforge.engine.lora import add_lora
from lmforge.models import load_causal_lm


def build_causal_model(
    base_dir: Path,
    spec: TrainSpec,
    max_length: int,
    attention: str,
    recipe: Recipe,
    fold_in: Path | None = None,
    rows: int | None = None,
) -> Any:
    """Load a causal LM for training and wrap it in a LoRA / DoRA adapter when asked.

    With LoRA and bf16 the frozen base weights are stored in bf16 (no per-step casts, half the
    memory) while the adapter weights stay fp32 master weights under autocast. Full fine-tuning
    keeps fp32 master weights everywhere. ``fold_in`` is an adapter merged into the fp32 weights
    first (a stacked cpt adapter). With ``quantization`` the base is loaded 4-/8-bit (QLoRA, CUDA).
    ``rows`` is the most rows one forward pass holds (default ``batch_size``; fewer under a token budget).
    """
    import torch

    frozen_bf16 = spec.method == "lora" and use_bf16(spec.precision)
    config = standard_config(json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8")))
    rows = 1 if getattr(spec, "packing", False) else (rows or spec.batch_size)  # sft packs a micro-batch into one row
    heads, layers = config.get("num_attention_heads", 1), config.get("num_hidden_layers", 1)
    kernel = attention_kernel(attention, max_length, eager_scores_mb(spec, rows, max_length, heads, layers))
    kwargs: dict[str, Any] = {"attn_implementation": kernel}
    quantization = quantization_config(spec)
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map={"": torch.cuda.current_device()})
    dtype = torch.bfloat16 if frozen_bf16 and fold_in is None else torch.float32
    trust = recipe.model.trust_remote_code
    model = load_causal_lm(base_dir, dtype=dtype, trust_remote_code=trust, **kwargs)
    if fold_in is not None:
        model = chain.fold_in_adapter(model, fold_in)
        if frozen_bf16:
            model = model.to(torch.bfloat16)
    model.config.use_cache = False
    if spec.method == "full":
        return model
    model = add_lora(model, spec, "CAUSAL_LM")
    if quantization is None:
        enable_lean_lora(model)
    return model
