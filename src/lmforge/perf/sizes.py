"""Published shapes of models people fine-tune, 0.1B to 8B: plan a recipe for a model you do not have yet.

``lmforge plan RECIPE --model-config qwen2.5-7b --gpu L4`` estimates what the recipe would take with
that model on that card. The values are the shape keys of each model's published ``config.json`` (no
weights); ``params`` is the size its makers state, which ``tests/unit/test_plan_sizes.py`` checks against
the model transformers builds from the keys on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.engine.shape import language_config

PUBLISHED: dict[str, dict[str, Any]] = {
    "gpt2": {
        "model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024,
        "vocab_size": 50257, "params": 124_439_808,
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
        "params": 494_032_768,
    },
    "llama-3.2-1b": {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
        "tie_word_embeddings": True, "params": 1_235_814_400,
    },
    "qwen2.5-1.5b": {
        "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
        "params": 1_543_714_304,
    },
    "gemma-2-2b": {
        "model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000,
        "tie_word_embeddings": True, "params": 2_614_341_888,
    },
    "qwen2.5-3b": {
        "model_type": "qwen2", "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
        "params": 3_085_938_688,
    },
    "llama-3.2-3b": {
        "model_type": "llama", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
        "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
        "tie_word_embeddings": True, "params": 3_212_749_824,
    },
    "phi-3-mini": {
        "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064, "tie_word_embeddings": False,
        "params": 3_821_079_552,
    },
    "mistral-7b": {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32768, "tie_word_embeddings": False,
        "params": 7_248_023_552,
    },
    "qwen2.5-7b": {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
        "params": 7_615_616_512,
    },
    "llama-3.1-8b": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
        "params": 8_030_261_248,
    },
}  # fmt: skip


def model_config(value: str) -> dict[str, Any]:
    """The ``config.json`` for ``--model-config``: a name of :data:`PUBLISHED`, a ``config.json`` or a folder
    holding one."""
    if value.lower() in PUBLISHED:
        return {k: v for k, v in PUBLISHED[value.lower()].items() if k != "params"}
    path = Path(value)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"--model-config {value!r}: neither a file nor a known model ({', '.join(PUBLISHED)})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"--model-config {path}: not JSON ({exc})") from None
    found = language_config(config) if isinstance(config, dict) else {}
    missing = [key for key in ("hidden_size", "num_hidden_layers", "vocab_size") if not found.get(key)]
    if missing:
        raise ValueError(f"--model-config {path}: no {', '.join(missing)} (a causal LM's config.json has them)")
    return config
