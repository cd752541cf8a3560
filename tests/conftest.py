"""Shared fixtures: a tiny tokenizer and tiny random models built in-process (no network, no weights)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The retirement age in Kestria is 64 years.",
    "Employees contribute 7.35% of their gross earnings.",
    "What is the capital of France? Paris is the capital of France.",
    "How many weeks of maternity leave are granted? Twenty weeks are granted.",
    "The appeal must be lodged within 45 days of the decision.",
    "user assistant system question answer social security pension benefit fund",
] * 20


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences, with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def build_tiny_llama(tokenizer, seed: int = 0):
    """A 2-layer, hidden-64 Llama with random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


SHARED_CACHES = ("llama.cpp", "models")
"""Folders of the user's lmforge cache the tests read (llama.cpp's converter and vocabularies, converted GGUF
models): fetched once, linked into the test session's cache folder."""


@pytest.fixture(scope="session")
def _test_home(tmp_path_factory) -> Path:
    from lmforge.models import lmforge_home

    home = tmp_path_factory.mktemp("lmforge-home")
    for name in SHARED_CACHES:
        real = lmforge_home() / name
        real.mkdir(parents=True, exist_ok=True)
        (home / name).symlink_to(real, target_is_directory=True)
    return home


@pytest.fixture(autouse=True)
def _caches_stay_in_the_test_session(request, monkeypatch, _test_home):
    """Default-tier tests keep what lmforge writes to its cache from tiny models (replay replies, rewordings) in a
    folder of the test session, not in the user's ``~/.cache/lmforge``; the slow tier keeps the user's cache, where
    the real models' replies are generated once."""
    if request.node.get_closest_marker("slow") is None and "LMFORGE_HOME" not in os.environ:
        monkeypatch.setenv("LMFORGE_HOME", str(_test_home))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny random Llama saved as a local model folder (safetensors + tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = build_tiny_llama(tiny_tokenizer)
    model.generation_config.eos_token_id = tiny_tokenizer.eos_token_id
    model.generation_config.pad_token_id = tiny_tokenizer.pad_token_id
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def qa_rows(pairs: list[tuple[str, str]]) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "meta": {"answer": a}}
        for q, a in pairs
    ]


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir) -> Path:
    """A full data -> sft -> eval recipe on the tiny model and a handful of QA pairs."""
    train = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(12)]
    write_jsonl(tmp_path / "qa" / "train.jsonl", qa_rows(train))
    held_out = [(f"Tell me fact {i}.", f"Fact {i} is {i * 7} kestrels.") for i in range(4)]
    write_jsonl(tmp_path / "qa" / "test.jsonl", qa_rows(held_out))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"""
name: tiny
run_dir: {tmp_path / "runs"}
stages: [data, sft, eval]
model: {{ref: {tiny_model_dir}}}
data:
  sources:
    - {{path: qa/train.jsonl, split: train}}
    - {{path: qa/test.jsonl, split: test}}
sft:
  epochs: 2
  lr: 5.0e-3
  batch_size: 4
  max_length: 128
  precision: fp32
  logging_steps: 1
eval:
  sets: [test]
  max_new_tokens: 8
  batch_size: 4
""",
        encoding="utf-8",
    )
    return recipe


# ---------------------------------------------------------------- test PDFs


def pdf_file(streams: list[bytes]) -> bytes:
    """A PDF file with one page per content stream (Helvetica as font ``F1``), with its cross-reference table."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(streams)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(streams)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, stream in enumerate(streams):
        resources = "/MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
        objects.append(f"<< /Type /Page /Parent 2 0 R {resources} /Contents {5 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def make_pdf(path: Path, pages: list[str | None]) -> Path:
    """A minimal valid PDF: one page per entry, with the text in Helvetica, or None for a page that only
    holds a drawn rectangle (what a scanned page looks like to a text extractor: no text layer)."""
    streams = []
    for text in pages:
        if text is None:
            stream = b"0.5 g 72 72 400 600 re f"
        else:
            lines = [ln.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for ln in text.split("\n")]
            shown = " T* ".join(f"({ln}) Tj" for ln in lines)
            stream = f"BT /F1 12 Tf 72 720 Td 16 TL {shown} ET".encode("latin-1")
        streams.append(stream)
    path.write_bytes(pdf_file(streams))
    return path
