"""Write a Hugging Face Llama-family model folder as a GGUF file with the ``gguf`` package.

What llama.cpp (and Ollama, LM Studio, transformers' GGUF loader) need, and nothing else:
hyper-parameters under the ``llama.*`` keys, the byte-level BPE vocabulary (tokens, types,
merges), the special token ids (EOS is the chat end-of-turn token the model was trained to
emit), the chat template, and the tensors under GGUF names (query and key projections permuted
into the rotary layout llama.cpp uses). Norms stay float32; matrices are stored in the requested
type (``f16``, ``bf16`` or ``q8_0``; ``q8_0`` falls back to f16 for rows that are not a multiple
of 32 wide, as llama.cpp's own converter does).

Written here rather than by calling llama.cpp's ``convert_hf_to_gguf.py`` because that script is
not shipped in any package (only the ``gguf`` library is); the mapping of tensor names comes from
the library (``gguf.get_tensor_name_map``), not from this file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.errors import StageError

GGUF_TYPES = ("f16", "bf16", "q8_0")
SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}


def storage_type(name: str, shape: tuple[int, ...], out_type: str) -> str:
    """GGUF storage type of one tensor: ``f32`` for vectors, else ``out_type`` (q8_0 needs rows of 32)."""
    if len(shape) < 2:
        return "f32"
    if out_type == "q8_0" and shape[-1] % 32 != 0:
        return "f16"
    return out_type


def write_gguf(model_dir: Path, out_path: Path, out_type: str, name: str) -> dict[str, Any]:
    """Convert the safetensors model in ``model_dir`` to ``out_path``; returns what was written.

    Raises:
        StageError: the architecture or its rope scaling is not supported.
    """
    import gguf
    import numpy as np
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    architecture = (config.architectures or ["?"])[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise StageError(
            f"GGUF export supports {sorted(SUPPORTED_ARCHITECTURES)}, got {architecture}; "
            "use llama.cpp's convert_hf_to_gguf.py on the exported HF folder instead"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    writer = gguf.GGUFWriter(str(out_path), "llama")
    _write_hyperparameters(writer, config, out_type, name)
    _write_tokenizer(writer, tokenizer, model_dir, config.vocab_size)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    counts: dict[str, int] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                if key == "lm_head.weight" and tied:
                    continue  # llama.cpp reuses token_embd for a tied output head
                if "rotary_emb" in key:
                    continue
                gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise StageError(f"no GGUF name for tensor {key!r} of {model_dir}; the export cannot continue")
                data = handle.get_tensor(key).float().numpy()
                if key.endswith("q_proj.weight"):
                    data = _permute(data, heads, heads)
                elif key.endswith("k_proj.weight"):
                    data = _permute(data, heads, kv_heads)
                kind = storage_type(key, data.shape, out_type)
                counts[kind] = counts.get(kind, 0) + 1
                if kind == "f32":
                    writer.add_tensor(gguf_name, data.astype(np.float32))
                elif kind == "f16":
                    writer.add_tensor(gguf_name, data.astype(np.float16))
                else:
                    qtype = gguf.GGMLQuantizationType.Q8_0 if kind == "q8_0" else gguf.GGMLQuantizationType.BF16
                    writer.add_tensor(gguf_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"path": str(out_path), "type": out_type, "tensors_by_type": counts, "bytes": out_path.stat().st_size}


def _write_hyperparameters(writer: Any, config: Any, out_type: str, name: str) -> None:
    import gguf

    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", None):
        raise StageError(f"GGUF export does not handle rope scaling {rope_type!r} yet; export the HF folder only")
    theta = (rope.get("rope_theta") if isinstance(rope, dict) else None) or getattr(config, "rope_theta", 10000.0)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    file_types = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_types[out_type])
    if out_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tokenizer(writer: Any, tokenizer: Any, model_dir: Path, vocab_size: int) -> None:
    """Byte-level BPE vocabulary, merges, special ids and the chat template."""
    import gguf

    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if spec.get("model", {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise StageError(
            "GGUF export handles byte-level BPE tokenizers (GPT-2 style, as in SmolLM2 and Llama 3); "
            f"{model_dir} has a {spec.get('model', {}).get('type')} tokenizer"
        )
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = {token.content: token.special for token in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for index in range(max(vocab_size, len(by_id))):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(tokenizer.eos_token_id)
        writer.add_eot_token_id(tokenizer.eos_token_id)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizer_name(pre: Any) -> str:
    """llama.cpp's name for the pre-tokenizer: ``smollm`` (digits split one by one) or ``gpt-2``."""
    text = json.dumps(pre)
    if '"Digits"' in text and '"individual_digits": true' in text:
        return "smollm"
    return "gpt-2"  # llama.cpp knows "gpt-2", not "gpt2" (refused: unknown pre-tokenizer type)


def _permute(weights: Any, heads: int, kv_heads: int) -> Any:
    """Reorder q/k projection rows from HF's rotate-half layout to llama.cpp's interleaved one.

    weights: (heads * head_dim, hidden) for q, (kv_heads * head_dim, hidden) for k.
    """
    if kv_heads != heads:
        heads = kv_heads
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )
