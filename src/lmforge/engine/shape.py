"""A causal LM's shape read from its ``config.json``: parameters, linear layers, adapter sizes, weight bytes.

``lmforge plan`` estimates memory and time from it and ``lr: auto`` tells a small model from a large one
by it, so it must read every family the same way transformers builds it: Llama's key names or GPT-2's
(``n_embd``, ``n_layer``), a gated MLP (gate, up, down: Llama, Qwen, Mistral, Gemma, Phi-3, OLMo,
Granite) or a plain one (up, down: GPT-2, GPT-NeoX, Phi-1/2, Falcon), separate or tied output
embeddings, a head width of its own (Gemma: 256 x 8 heads against a hidden size of 2,304), learned
position embeddings (GPT-2), and a multimodal config whose language model sits under ``text_config``
(Gemma 3). Biases and norms are counted approximately (a few thousandths of the total); the
embeddings and block matmuls, which decide memory and time, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmforge.engine.budget import standard_config

PLAIN_MLP = frozenset({"gpt2", "gpt_neox", "gpt_bigcode", "phi", "falcon", "opt", "bloom", "gptj", "starcoder2"})
"""Families whose MLP is one up and one down projection (no gate)."""
LEARNED_POSITIONS = frozenset({"gpt2", "gpt_bigcode", "opt"})
"""Families with a learned position embedding table (``max_position_embeddings`` x hidden)."""
FUSED = frozenset({"phi3", "gpt2", "gpt_neox", "gpt_bigcode"})
"""Families with one fused query-key-value projection (an adapter on it is one matrix, not three)."""
QUANTIZED_BYTES = {"4bit": 0.5 + 0.5 / 64 + 4 / (64 * 256), "8bit": 1.0 + 4 / 4096}
"""Bytes per weight of a bitsandbytes-quantized linear layer: NF4 with double quantization (4 bits, an
8-bit scale per 64 weights, an fp32 scale per 256 scales) and LLM.int8 (a byte, an fp32 scale per row)."""


def language_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of ``config`` (``text_config`` of a multimodal wrapper) under Llama's key names."""
    if isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], "tie_word_embeddings": config.get("tie_word_embeddings", True)}
    return standard_config(config)


@dataclass
class ModelShape:
    """What an estimate needs from a causal LM's ``config.json``."""

    params: int
    embedding_params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    checkpoint_bytes: int = 0
    """Size of the weight files on disk (mapped into memory while loading)."""
    gated: bool = True
    """A gated MLP (three projections) rather than a plain one (two)."""
    fused: bool = False
    """Query, key and value in one matrix (and gate with up): Phi-3, GPT-2, GPT-NeoX."""

    @classmethod
    def from_config(cls, config: dict[str, Any], checkpoint_bytes: int = 0) -> ModelShape:
        model_type = str(config.get("model_type", ""))
        config = language_config(config)
        hidden = int(config["hidden_size"])
        heads = int(config.get("num_attention_heads") or max(1, hidden // 64))
        head_dim = int(config.get("head_dim") or hidden // heads)
        kv_heads = int(config.get("num_key_value_heads") or heads)
        intermediate = int(config.get("intermediate_size") or 4 * hidden)
        layers = int(config["num_hidden_layers"])
        vocab = int(config["vocab_size"])
        embedding = vocab * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
        if model_type in LEARNED_POSITIONS:
            embedding += int(config.get("max_position_embeddings") or config.get("n_positions") or 0) * hidden
        shape = cls(0, embedding, layers, hidden, intermediate, heads, kv_heads, head_dim, vocab, checkpoint_bytes)
        shape.gated = model_type not in PLAIN_MLP
        shape.fused = model_type in FUSED
        norms = 2 * hidden
        shape.params = layers * (shape.block_matmul_params() + norms) + embedding + hidden
        return shape

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of the linear layers of one block, by their usual (Llama) module names."""
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {
            "q_proj": (self.hidden, q_out),
            "k_proj": (self.hidden, kv_out),
            "v_proj": (self.hidden, kv_out),
            "o_proj": (q_out, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }
        if not self.gated:
            del shapes["gate_proj"]
        if self.fused:  # one matmul for q, k, v (and gate with up): what an adapter on it sees
            i, kv = shapes.pop("q_proj"), shapes.pop("k_proj")[1] + shapes.pop("v_proj")[1]
            shapes = {"qkv_proj": (i[0], i[1] + kv), **shapes}
            if self.gated:
                gate, up = shapes.pop("gate_proj"), shapes.pop("up_proj")
                shapes = {**shapes, "gate_up_proj": (gate[0], gate[1] + up[1])}
        return shapes

    def block_matmul_params(self) -> int:
        return sum(i * o for i, o in self.linear_shapes().values())

    def lora_params(self, rank: int, targets: list[str] | str = "all-linear", top_layers: int | None = None) -> int:
        """Trainable parameters of a LoRA adapter of this rank on ``targets`` (in the last ``top_layers`` blocks)."""
        shapes = self.linear_shapes()
        chosen = shapes if targets == "all-linear" else {k: v for k, v in shapes.items() if k in targets}
        return self.adapted_layers(top_layers) * sum(rank * (i + o) for i, o in chosen.values())

    def adapted_layers(self, top_layers: int | None) -> int:
        """Blocks an adapter on the last ``top_layers`` blocks covers (every block when None)."""
        return self.layers if top_layers is None else min(self.layers, top_layers)

    def with_bf16_checkpoint(self) -> ModelShape:
        """This shape with the checkpoint a model of its size ships as bf16 safetensors (planning a model whose
        files are not here)."""
        self.checkpoint_bytes = 2 * self.params
        return self

    def frozen_weight_bytes(self, bytes_per_weight: float, quantization: str = "none") -> float:
        """Bytes of the frozen weights: the blocks' linear layers quantized when ``quantization`` says so
        (``4bit``, ``8bit``), everything else (embeddings, norms) at ``bytes_per_weight``."""
        linear = self.layers * self.block_matmul_params()
        per_linear = QUANTIZED_BYTES.get(quantization, bytes_per_weight)
        return linear * per_linear + (self.params - linear) * bytes_per_weight
