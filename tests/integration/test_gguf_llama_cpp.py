"""llama.cpp itself loads lmforge's GGUF exports and continues prompts as the merged model does.

The export's own parity checks read the GGUF back with transformers' reader; this slow-tier check
uses the real consumer: llama.cpp's ``llama-simple`` (greedy), built from the sources the PyPI
package llama-cpp-python ships (``tests/tools/build_llama_cpp.sh``; ``make test-slow`` builds it into
``.cache/llama.cpp`` once, about 3 minutes). It found that exports of GPT-2-style tokenizers named
their pre-tokenizer ``gpt2``, which llama.cpp refuses to load (``gpt-2`` is its name).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from families import FAMILIES, build_family_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "What is fact number 3?",
    "Once upon a time, there was a",
]


@pytest.fixture(scope="module")
def llama_simple() -> Path:
    binary = Path(os.environ.get("LMFORGE_LLAMA_SIMPLE", REPO / ".cache" / "llama.cpp" / "llama-simple"))
    if not binary.is_file():
        build = subprocess.run(
            ["bash", str(REPO / "tests" / "tools" / "build_llama_cpp.sh"), str(binary.parent)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert build.returncode == 0, f"could not build llama.cpp: {build.stdout[-2000:]}{build.stderr[-2000:]}"
    return binary


def llama_cpp_continuation(binary: Path, gguf: Path, prompt: str, tokens: int) -> str:
    done = subprocess.run(
        [str(binary), "-m", str(gguf), "-n", str(tokens), prompt], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"llama.cpp could not run {gguf.name}: {done.stderr[-3000:]}"
    printed = done.stdout
    for bos in ("<s> ", "<s>", "<|begin_of_text|>", "<|endoftext|>"):  # llama-simple echoes the BOS it adds
        printed = printed.removeprefix(bos)
    assert printed.startswith(prompt), done.stdout
    return printed[len(prompt) :].removesuffix("\n")


def transformers_continuation(model_dir: Path, prompts: list[str], tokens: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")  # with the BOS a tokenizer adds, as llama.cpp does
        with torch.inference_mode():
            generated = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
        new = generated[0, ids["input_ids"].shape[1] :]
        stop = tokenizer.eos_token_id
        if stop in new.tolist():  # llama.cpp stops at the end-of-generation token without printing it
            new = new[: new.tolist().index(stop)]
        out.append(tokenizer.decode(new, skip_special_tokens=False))
    return out


def export(reference: str, out: Path, extra: list[str] | None = None) -> Path:
    command = [sys.executable, "-m", "lmforge", "export", reference, "--out", str(out), "--gguf", "f16,q8_0"]
    done = subprocess.run([*command, *(extra or [])], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def compare(llama_simple: Path, folder: Path, name: str, tokens: int) -> tuple[int, int]:
    """(f16 continuations equal to transformers', q8_0 ones equal) over PROMPTS."""
    expected = transformers_continuation(folder / "hf", PROMPTS, tokens)
    f16 = [llama_cpp_continuation(llama_simple, folder / f"{name}.f16.gguf", p, tokens) for p in PROMPTS]
    q8 = [llama_cpp_continuation(llama_simple, folder / f"{name}.q8_0.gguf", p, tokens) for p in PROMPTS]
    print({"expected": expected, "f16": f16, "q8_0": q8})
    return sum(a == b for a, b in zip(expected, f16, strict=True)), sum(
        a == b for a, b in zip(expected, q8, strict=True)
    )


def test_llama_cpp_continues_a_tiny_lora_run_like_the_merged_model(llama_simple, tmp_path, tiny_model_dir):
    from conftest import qa_rows, write_jsonl

    write_jsonl(tmp_path / "qa.jsonl", qa_rows([(f"What is fact number {i}?", f"Fact {i}.") for i in range(8)]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: tiny\nstages: [data, sft]\nmodel: {{ref: {tiny_model_dir}}}\ndata: {{sources: [{{path: qa.jsonl}}]}}\n"
        "sft: {epochs: 1, lr: 5.0e-2, batch_size: 4, max_length: 64, precision: fp32, lora: {r: 4, alpha: 16}}\n",
        encoding="utf-8",
    )
    run = subprocess.run([sys.executable, "-m", "lmforge", "run", str(recipe), "--run-dir", str(tmp_path / "runs")])
    assert run.returncode == 0
    folder = export(str(tmp_path / "runs" / "tiny"), tmp_path / "export", ["--samples", "2"])
    f16, q8 = compare(llama_simple, folder, "tiny", tokens=8)
    assert f16 == len(PROMPTS)
    assert q8 >= len(PROMPTS) - 1


def test_llama_cpp_continues_smollm2_like_transformers(llama_simple, tmp_path):
    """The real 135M model, f16 and q8_0: greedy continuations of 16 tokens."""
    folder = export("smollm2-135m-instruct", tmp_path / "smollm2", ["--name", "smollm2", "--samples", "2"])
    f16, q8 = compare(llama_simple, folder, "smollm2", tokens=16)
    assert f16 >= len(PROMPTS) - 1  # fp32 vs f16 arithmetic may flip one near-tie
    assert q8 >= len(PROMPTS) // 2


CONVERTED = [name for name, family in FAMILIES.items() if not family.no_gguf]


@pytest.mark.parametrize("name", CONVERTED)
def test_llama_cpp_loads_every_converted_family(llama_simple, tmp_path, name):
    """Each family's GGUF (llama.cpp's own converter, through ``lmforge export``) loads in llama.cpp and
    continues prompts as transformers does (f16; a tiny random model, so a near-tie may flip one prompt)."""
    model_dir = build_family_model(name, tmp_path / "model")
    folder = export(str(model_dir), tmp_path / "export", ["--name", name, "--samples", "2"])
    expected = transformers_continuation(folder / "hf", PROMPTS, 6)
    got = [llama_cpp_continuation(llama_simple, folder / f"{name}.f16.gguf", p, 6) for p in PROMPTS]
    print({"expected": expected, "llama.cpp": got})
    # SentencePiece decodes a continuation on its own without the space its first piece carries: compare stripped
    assert sum(a.strip() == b.strip() for a, b in zip(expected, got, strict=True)) >= len(PROMPTS) - 1, (expected, got)
