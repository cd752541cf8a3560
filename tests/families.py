"""Tiny random models of the families people fine-tune, each with a real tokenizer.

The tokenizers are llama.cpp's vocabulary-only GGUF files (``models/ggml-vocab-*.gguf``, fetched with the
pinned converter by ``python -m lmforge.export.llamacpp``), converted once to Hugging Face folders under
``$LMFORGE_HOME/llama.cpp/<version>/tokenizers/``. Where a vocabulary ships no chat template, the family's
published format is written here as a Jinja template of our own (Llama 3's header tokens, Mistral's [INST],
Gemma 2's turns without a system role, Gemma 3's with one, Qwen3's thinking block). Where llama.cpp ships no
loadable vocabulary for a family (Gemma, OLMo 2, GPT-NeoX), another family's tokenizer stands in and
:attr:`Family.tokenizer_note` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}"
)
MISTRAL_TEMPLATE = (  # [INST] turns, no system role (lmforge folds one into the first user turn)
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{- raise_exception('System role not supported') -}}"
    "{%- elif m['role'] == 'user' -%}{{- '[INST] ' + m['content'] + ' [/INST]' -}}"
    "{%- else -%}{{- ' ' + m['content'] + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)
GEMMA_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- raise_exception('System role not supported') -}}{%- endif -%}"
    "{%- for m in messages -%}"
    "{{- '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' + m['content'] | trim"
    " + '<end_of_turn>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
)
GEMMA3_TEMPLATE = (  # Gemma's turns; unlike Gemma 2's, it takes a system prompt itself, ahead of the first user turn
    "{{- bos_token -}}"
    "{%- set ns = namespace(prefix='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{%- set ns.prefix = m['content'] | trim + '\n\n' -%}"
    "{%- else -%}"
    "{{- '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' -}}"
    "{%- if m['role'] == 'user' -%}{{- ns.prefix -}}{%- set ns.prefix = '' -%}{%- endif -%}"
    "{{- m['content'] | trim + '<end_of_turn>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
)
QWEN3_TEMPLATE = (  # ChatML; the reply starts with a thinking block, empty unless thinking is on
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' + m['content'] + '<|im_end|>\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\n\n</think>\n\n' -}}{%- endif -%}"
    "{%- endif -%}"
)


NEEDS_SPM = (
    "llama.cpp's converter reads this family's SentencePiece model file (tokenizer.model), which real checkpoints "
    "ship and a vocabulary GGUF does not"
)


@dataclass(frozen=True)
class Family:
    architecture: str
    """The transformers class (``config.architectures[0]``)."""
    config: str
    """The transformers config class."""
    vocab: str
    """llama.cpp's ``ggml-vocab-<vocab>.gguf``."""
    template: str | None = None
    """Our chat template in the family's format; None: the vocabulary's own, or lmforge's ``alpaca`` format."""
    specials: tuple[str, ...] = ()
    """Special tokens the template needs that the vocabulary does not mark special."""
    end_of_turn: str | None = None
    """The token generation stops at (the template's end of an assistant turn)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Config values besides the tiny shape."""
    tokenizer_note: str = ""
    """Why this family uses another family's tokenizer, when it does."""
    no_gguf: str = ""
    """Why llama.cpp's converter cannot convert this test model (the real family converts), when it cannot."""


FAMILIES: dict[str, Family] = {
    "llama3": Family("LlamaForCausalLM", "LlamaConfig", "llama-bpe", LLAMA3_TEMPLATE, end_of_turn="<|eot_id|>"),
    "mistral": Family("MistralForCausalLM", "MistralConfig", "llama-spm", MISTRAL_TEMPLATE, end_of_turn="</s>"),
    "qwen2": Family("Qwen2ForCausalLM", "Qwen2Config", "qwen2", end_of_turn="<|im_end|>"),
    "qwen3": Family(
        "Qwen3ForCausalLM", "Qwen3Config", "qwen35", QWEN3_TEMPLATE, end_of_turn="<|im_end|>", extra={"head_dim": 16}
    ),
    "phi3": Family("Phi3ForCausalLM", "Phi3Config", "phi-3", end_of_turn="<|end|>", no_gguf=NEEDS_SPM),
    "gemma2": Family(
        "Gemma2ForCausalLM",
        "Gemma2Config",
        "llama-spm",
        GEMMA_TEMPLATE,
        specials=("<start_of_turn>", "<end_of_turn>"),
        end_of_turn="<end_of_turn>",
        extra={"head_dim": 16},
        tokenizer_note="llama.cpp's Gemma vocabulary does not load in transformers; Llama 2's SentencePiece stands in",
        no_gguf=NEEDS_SPM,
    ),
    "gemma3": Family(
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        "llama-spm",
        GEMMA3_TEMPLATE,
        specials=("<start_of_turn>", "<end_of_turn>"),
        end_of_turn="<end_of_turn>",
        # Gemma 3 interleaves sliding-window layers with full ones; a short window so the test's rows use it
        extra={"head_dim": 16, "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 16},
        tokenizer_note="llama.cpp's Gemma vocabulary does not load in transformers; Llama 2's SentencePiece stands in",
        no_gguf=(  # a real Gemma 3 checkpoint ships tokenizer.model and converts
            "without tokenizer.model llama.cpp's Gemma 3 converter reads the stand-in tokenizer as BPE and knows "
            "no pre-tokenizer for it"
        ),
    ),
    "gpt2": Family("GPT2LMHeadModel", "GPT2Config", "gpt-2"),
    "granite": Family("GraniteForCausalLM", "GraniteConfig", "starcoder"),
    "olmo2": Family(
        "Olmo2ForCausalLM",
        "Olmo2Config",
        "gpt-2",
        extra={"tie_word_embeddings": False},  # as OLMo 2's checkpoints: llama.cpp's olmo2 needs output.weight
        tokenizer_note="OLMo 2's own tokenizer is not shipped by llama.cpp",
    ),
    "gptneox": Family(
        "GPTNeoXForCausalLM",
        "GPTNeoXConfig",
        "gpt-2",
        tokenizer_note="llama.cpp's GPT-NeoX vocabulary does not load in transformers; GPT-2's stands in",
        no_gguf="llama.cpp 0.3.36's converter reads rotary_pct, which transformers 5 keeps under rope_parameters",
    ),
}


def tokenizer_dir(vocab: str) -> Path:
    """A Hugging Face tokenizer folder of llama.cpp's ``ggml-vocab-<vocab>.gguf`` (converted once, cached)."""
    from transformers import AutoTokenizer

    from lmforge.export import llamacpp

    folder = llamacpp.converter_dir() / "tokenizers" / vocab
    if not (folder / "tokenizer_config.json").is_file():
        source = llamacpp.vocab_file(vocab)
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        staging = folder.with_name(folder.name + ".partial")
        tokenizer.save_pretrained(staging)
        if not folder.exists():  # another process may have written it meanwhile
            staging.rename(folder)
    return folder


def family_tokenizer(name: str) -> Any:
    """The family's tokenizer with its chat template (ours where the vocabulary has none)."""
    from transformers import AutoTokenizer

    family = FAMILIES[name]
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir(family.vocab)))
    if family.specials:
        tokenizer.add_special_tokens({"additional_special_tokens": list(family.specials)})
    if family.template is not None:
        tokenizer.chat_template = family.template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_family_model(name: str, folder: Path, seed: int = 0) -> Path:
    """Save a 2-layer, hidden-64 random model of the family with its tokenizer into ``folder``."""
    import torch
    import transformers

    family = FAMILIES[name]
    tokenizer = family_tokenizer(name)
    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": True,
    }
    if family.config == "GPT2Config":
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        shape = {"vocab_size": len(tokenizer), "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512, **ids}
        shape["n_ctx"] = 512  # llama.cpp's converter reads it
    elif family.config == "GPTNeoXConfig":
        shape.pop("num_key_value_heads")
        shape.update(tie_word_embeddings=False, rotary_pct=1.0)  # llama.cpp's converter reads rotary_pct
    config = getattr(transformers, family.config)(**{**shape, **family.extra})
    config.architectures = [family.architecture]
    torch.manual_seed(seed)
    model = getattr(transformers, family.architecture)(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
