"""Parity checks run at the end of an export: the exported files behave like the model that was trained.

* ``merge``: the merged weights give the same logits as base + adapter (fp32, max abs difference).
* ``hf``: the saved HF folder reloads to the same logits, renders the same prompts, stops at the same EOS.
* ``gguf:<type>``: the GGUF file, loaded back by transformers' GGUF loader (an independent reader:
  its own name mapping, un-permutation and de-quantization), gives
  - for f16/bf16: exactly the greedy continuation of the merged model with its weights rounded
    to that type (so any mistake in the file shows), and
  - for f16/bf16: the same logits as that rounded model at every position (<= 1e-3), and
  - for every type: next-token (argmax) agreement with the full-precision merged model at every
    position of prompt + that model's greedy continuation, of at least ``min_agreement``;
  and its tokenizer produces the same token ids and renders the chat template identically.
* ``llama.cpp:<type>``: the same agreement and tokenization measured with llama-cpp-python, when installed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.export.gguf_file import storage_type


@dataclass
class Check:
    """One parity check and its measurements."""

    name: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)
    ran: bool = True
    """False: the check could not run here (``details["not_run"]`` says why); it neither passes nor fails."""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed if self.ran else None, **self.details}


@dataclass
class Samples:
    """Sample conversations, their rendered prompts and the reference model's behaviour on them."""

    conversations: list[list[dict[str, str]]]
    prompts: list[str]
    prompt_ids: list[list[int]]
    continuations: list[list[int]]
    """Greedy continuation (token ids, up to and including EOS) of the full-precision merged model."""
    new_tokens: int
    eos_id: int
    reference_argmax: list[list[int]]
    """The merged model's argmax at every position of ``prompt + continuation``."""

    def sequences(self) -> list[list[int]]:
        return [p + c for p, c in zip(self.prompt_ids, self.continuations, strict=True)]


def render(tokenizer: Any, conversation: list[dict[str, str]]) -> str:
    """The prompt a conversation becomes: the chat template's rendering, or for a model without a template (a
    base model exported as it is) its messages' text, one after the other, as a plain completion prompt."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(message["content"] for message in conversation)


def reference_samples(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], new_tokens: int
) -> Samples:
    prompts = [render(tokenizer, c) for c in conversations]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    eos_id = tokenizer.eos_token_id
    continuations = [greedy(model, ids, new_tokens, eos_id) for ids in prompt_ids]
    argmax = [logits_of(model, p + c).argmax(-1).tolist() for p, c in zip(prompt_ids, continuations, strict=True)]
    return Samples(conversations, prompts, prompt_ids, continuations, new_tokens, eos_id, argmax)


def greedy(model: Any, prompt_ids: list[int], new_tokens: int, eos_id: int) -> list[int]:
    """Greedy continuation, stopping after the chat's EOS (kept, so stopping is compared too)."""
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
    return out[0, len(prompt_ids) :].tolist()


def logits_of(model: Any, ids: list[int]) -> Any:
    """Logits at every position of ``ids``: (len(ids), vocab) float32."""
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def agreement(predicted: list[list[int]], reference: list[list[int]]) -> float:
    pairs = [(p, r) for ps, rs in zip(predicted, reference, strict=True) for p, r in zip(ps, rs, strict=True)]
    return sum(p == r for p, r in pairs) / max(len(pairs), 1)


def check_merge(merged: Any, unmerged: Any, samples: Samples, tolerance: float = 1e-3) -> Check:
    """Merged weights vs base + adapter: the largest absolute logit difference over the sample prompts."""
    import torch

    worst = 0.0
    with torch.inference_mode():
        for ids in samples.prompt_ids:
            x = torch.tensor([ids])
            worst = max(worst, float((merged(input_ids=x).logits - unmerged(input_ids=x).logits).abs().max()))
    return Check("merge", worst <= tolerance, {"max_abs_logit_diff": worst, "tolerance": tolerance})


def check_hf_folder(hf_dir: Path, merged: Any, samples: Samples) -> Check:
    """The saved HF folder reloads to the same logits, renders the same prompts and stops at the same EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    reloaded = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    problems: list[str] = []
    worst = 0.0
    with torch.inference_mode():
        for ids in samples.prompt_ids:
            x = torch.tensor([ids])
            worst = max(worst, float((reloaded(input_ids=x).logits - merged(input_ids=x).logits).abs().max()))
    if worst > 1e-5:
        problems.append(f"reloaded logits differ by {worst:.2e}")
    rendered = [render(tokenizer, c) for c in samples.conversations]
    if rendered != samples.prompts:
        problems.append("its chat template renders the sample conversations differently")
    eos = GenerationConfig.from_pretrained(hf_dir).eos_token_id
    if tokenizer.eos_token_id not in (eos if isinstance(eos, list) else [eos]):
        problems.append(f"generation_config eos_token_id {eos} is not the tokenizer's EOS {tokenizer.eos_token_id}")
    details = {"max_abs_logit_diff": worst, "same_chat_template": rendered == samples.prompts, "eos_token_id": eos}
    return Check("hf", not problems, {**details, "problems": problems})


def rounded_copy(model: Any, out_type: str) -> Any:
    """The merged model with each weight rounded the way the GGUF file stores it (for f16/bf16), in fp32."""
    import torch

    dtype = torch.float16 if out_type == "f16" else torch.bfloat16
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in copy_.named_parameters():
            if storage_type(name, tuple(param.shape), out_type) == out_type:
                param.copy_(param.to(dtype).float())
    return copy_


UNREADABLE = ("is not supported yet", "Unknown gguf model_type", "ignore_mismatched_sizes")
"""How transformers says it cannot load a GGUF of an architecture (or loads its shapes wrongly)."""


def check_gguf(
    path: Path, out_type: str, merged: Any, tokenizer: Any, samples: Samples, min_agreement: float
) -> tuple[Check, Any]:
    """Load the GGUF back with transformers and compare it with the merged model; returns the check and that model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # the GGUF reader's de-quantization bar
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, NotImplementedError, RuntimeError) as exc:
        if not any(sign in str(exc) for sign in UNREADABLE):
            raise
        import transformers

        why = f"transformers {transformers.__version__} cannot read this architecture's GGUF back ({str(exc)[:160]})"
        return Check(
            f"gguf:{out_type}", False, {"not_run": why + "; llama.cpp itself reads it (make test-slow)"}, ran=False
        ), None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    details: dict[str, Any] = {}
    problems: list[str] = []
    same_ids = all(
        gguf_tokenizer(p, add_special_tokens=False)["input_ids"] == ids
        for p, ids in zip(samples.prompts, samples.prompt_ids, strict=True)
    )
    details["same_token_ids"] = same_ids
    if not same_ids:
        problems.append("its tokenizer splits the sample prompts differently")
    rendered = [render(gguf_tokenizer, c) for c in samples.conversations]
    details["same_chat_template"] = rendered == samples.prompts
    if rendered != samples.prompts:
        problems.append("its chat template renders the sample conversations differently")
    details["eos_token"] = gguf_tokenizer.eos_token
    if gguf_tokenizer.eos_token != tokenizer.eos_token:
        problems.append(f"its EOS token is {gguf_tokenizer.eos_token!r}, the model's is {tokenizer.eos_token!r}")
    got = [greedy(loaded, ids, samples.new_tokens, samples.eos_id) for ids in samples.prompt_ids]
    same = sum(g == c for g, c in zip(got, samples.continuations, strict=True))
    details["greedy_equal_to_fp32_merged"] = f"{same}/{len(got)} prompts"
    if out_type in ("f16", "bf16"):
        rounded = rounded_copy(merged, out_type)
        expected = [greedy(rounded, ids, samples.new_tokens, samples.eos_id) for ids in samples.prompt_ids]
        details["same_greedy_as_rounded_merged"] = got == expected
        if got != expected:
            problems.append(f"its greedy continuation differs from the {out_type}-rounded merged model")
    reference = rounded_copy(merged, out_type) if out_type in ("f16", "bf16") else None
    predicted, worst = [], 0.0
    for sequence in samples.sequences():
        logits = logits_of(loaded, sequence)
        predicted.append(logits.argmax(-1).tolist())
        if reference is not None:
            worst = max(worst, float((logits - logits_of(reference, sequence)).abs().max()))
    if reference is not None:
        # same weights, same arithmetic: anything above float noise is a mistake in the file
        details["max_abs_logit_diff_vs_rounded"] = worst
        if worst > 1e-3:
            problems.append(f"its logits differ from the {out_type}-rounded merged model by up to {worst:.3g}")
    score = agreement(predicted, samples.reference_argmax)
    details["next_token_agreement"] = round(score, 4)
    details["min_agreement"] = min_agreement
    if score < min_agreement:
        problems.append(f"next-token agreement with the merged model is {score:.3f} < {min_agreement}")
    details["problems"] = problems
    return Check(f"gguf:{out_type}", not problems, details), loaded


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def check_llama_cpp(path: Path, out_type: str, samples: Samples, min_agreement: float) -> Check:
    """Tokenization and teacher-forced next-token agreement measured with llama.cpp itself."""
    import numpy as np
    from llama_cpp import Llama

    context = max(len(p) + len(c) for p, c in zip(samples.prompt_ids, samples.continuations, strict=True)) + 8
    llm = Llama(model_path=str(path), n_ctx=context, logits_all=True, verbose=False, n_threads=2)
    problems: list[str] = []
    same_ids = all(
        llm.tokenize(p.encode("utf-8"), add_bos=False, special=True) == ids
        for p, ids in zip(samples.prompts, samples.prompt_ids, strict=True)
    )
    if not same_ids:
        problems.append("llama.cpp splits the sample prompts differently")
    predicted = []
    for sequence in samples.sequences():
        llm.reset()
        llm.eval(sequence)
        predicted.append(np.asarray(llm.scores[: len(sequence)]).argmax(-1).tolist())
    score = agreement(predicted, samples.reference_argmax)
    if score < min_agreement:
        problems.append(f"next-token agreement with the merged model is {score:.3f} < {min_agreement}")
    details = {"same_token_ids": same_ids, "next_token_agreement": round(score, 4), "problems": problems}
    return Check(f"llama.cpp:{out_type}", not problems, details)
