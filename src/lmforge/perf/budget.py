"""How a run with a time budget shares it out (:mod:`lmforge.clock`), decided once the data stage has run.

The order, written here and in docs/TRAINING.md ("A time budget"):

1. **Eval keeps its time.** Its cost is estimated from a measurement on this machine: the base model, in
   eval's precision, reads one batch of eval's size of prompts as long as the eval set's own (its first
   questions in the chat template, system prompt included) and answers them for a few tokens; the run's eval
   then costs, per variant and batch, that reading (the prefill) plus ``max_new_tokens`` decoding steps at
   that speed, plus loading each variant; a variant with passages reads ``index.top_k`` chunks of up to
   ``index.chunk.max_tokens`` more per prompt, so its reading is counted that much longer (as a share of
   the measured prompt length: reading grows with the tokens read).
2. **Eval is cut before training is**, only when its estimate is over :data:`EVAL_SHARE` of the budget: then
   ``eval.limit`` asks every set the same first questions, as many as fit in that share.
3. **Training gets the rest**, shared by the training stages still to run; each fits its schedule to its share
   after measuring its own steps (``lmforge.engine.deadline``): fewer steps, the learning rate decaying to the
   new end. Epochs, LoRA blocks and row length stay as the recipe says: ``lmforge plan --arm`` shows what
   changing them would cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from lmforge import clock
from lmforge.config import Recipe
from lmforge.rundir import StageDir

EVAL_SHARE = 0.35
"""Most of the budget eval may keep before its question sets are cut."""
MARGIN = 1.15
"""Eval's estimate is kept with this margin (speed varies within a run)."""
LOAD_SECONDS = 4.0
"""Loading one variant's model (a small model from the page cache), per variant."""
PROBE_TOKENS = 8


@dataclass
class EvalEstimate:
    seconds: float
    questions: int
    variants: int
    step_seconds: float
    """One decoding step of a full batch, measured."""
    prefill_seconds: float = 0.0
    """Reading one full batch of prompts (the first forward pass), measured."""
    limit: int | None = None
    """Questions per set after the cut (None: all)."""


def plan_budget(recipe: Recipe, console: Any = None) -> Recipe:
    """Share the run's budget out (see the module docstring); the recipe, with ``eval.limit`` set when eval
    had to be cut. Prints what was decided and why."""
    remaining = clock.remaining()
    if remaining is None or "eval" not in recipe.stages:
        return recipe
    estimate = eval_estimate(recipe)
    if estimate is None:
        return recipe
    share = EVAL_SHARE * (clock.remaining() or 0.0)
    if estimate.seconds > share and estimate.questions:
        per_question = estimate.seconds / estimate.questions
        sets = max(1, len(recipe.eval.sets))
        limit = max(1, math.floor(share / per_question / sets))
        estimate.limit, estimate.seconds = limit, per_question * limit * sets
        recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"limit": limit})})
    clock.reserve("eval", estimate.seconds * MARGIN)
    if console is not None:
        cut = (
            f"; over {EVAL_SHARE:.0%} of the budget, so each set is cut to its first {estimate.limit} questions"
            if estimate.limit
            else ""
        )
        console.print(
            f"budget: {clock.shown(clock.remaining() or 0)} left; eval kept {clock.shown(estimate.seconds * MARGIN)} "
            f"({estimate.variants} variants x {estimate.questions} questions, {estimate.prefill_seconds:.2f}s to read "
            f"a batch of {recipe.eval.batch_size} prompts, {estimate.step_seconds:.2f}s per decoding step){cut}; "
            "training gets the rest",
            highlight=False,
        )
    return recipe


def eval_estimate(recipe: Recipe) -> EvalEstimate | None:
    """Seconds eval will take on this machine (module docstring, step 1); None when the data stage has not
    written the eval sets."""
    from lmforge.evaluate.variants import variant_specs

    written = StageDir.open(recipe.run_path(), "data").manifest.get("outputs", {}).get("splits", {})
    sizes = [_lines(written[name]) for name in recipe.eval.sets if name in written]
    if not sizes:
        return None
    limit = recipe.eval.limit
    sizes = [min(size, limit) if limit else size for size in sizes]
    variants = variant_specs(recipe)
    batch = recipe.eval.batch_size
    first = next(written[name] for name in recipe.eval.sets if name in written)
    step, prefill, length = decoding_seconds(recipe, first)
    with_passages = prefill * (length + recipe.index.top_k * recipe.index.chunk.max_tokens) / length
    batches = sum(math.ceil(size / batch) for size in sizes)
    reading = sum(with_passages if getattr(v, "rag", False) else prefill for v in variants)
    decoding = len(variants) * recipe.eval.max_new_tokens * step
    seconds = batches * (reading + decoding) + LOAD_SECONDS * len(variants)
    return EvalEstimate(round(seconds, 1), sum(sizes), len(variants), round(step, 4), round(prefill, 4))


def decoding_seconds(recipe: Recipe, eval_split: str) -> tuple[float, float, int]:
    """(one decoding step, reading the prompts, their length in tokens) for a batch of ``eval.batch_size``
    prompts as long as those of ``eval_split``, with the base model in eval's precision (warmed up by a first,
    untimed pass)."""
    import torch

    from lmforge.evaluate.stage import eval_dtype
    from lmforge.models import load_causal_lm, load_tokenizer, resolve_model

    folder = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
    model = load_causal_lm(folder, dtype=eval_dtype(recipe.eval.precision), trust_remote_code=False)
    model.eval()
    tokenizer = load_tokenizer(folder)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    length = prompt_tokens(tokenizer, eval_split, recipe.eval.batch_size)
    seeded = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, min(1000, len(tokenizer)), (recipe.eval.batch_size, length), generator=seeded)
    timings = []
    with torch.no_grad():
        for tokens in (1, 1, 1 + PROBE_TOKENS):  # the first pass warms up and is not counted
            started = time.perf_counter()
            model.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens, min_new_tokens=tokens,
                do_sample=False, pad_token_id=pad,
            )  # fmt: skip
            timings.append(time.perf_counter() - started)
    del model
    return max(1e-4, (timings[2] - timings[1]) / PROBE_TOKENS), timings[1], length


def prompt_tokens(tokenizer: Any, split_path: str, count: int) -> int:
    """Mean length in tokens of the first ``count`` prompts of an eval split (chat template, system prompt
    included, the reply left out); 48 where the split holds no chat record or the tokenizer has no template."""
    import json

    lengths = []
    with open(split_path, encoding="utf-8") as handle:
        for line in handle:
            if len(lengths) >= count:
                break
            messages = json.loads(line).get("messages") if line.strip() else None
            if not messages or not getattr(tokenizer, "chat_template", None):
                continue
            asked = messages[:-1] if messages[-1].get("role") == "assistant" else messages
            text = tokenizer.apply_chat_template(asked, add_generation_prompt=True, tokenize=False)
            lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return max(8, round(sum(lengths) / len(lengths))) if lengths else 48


def _lines(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


__all__ = ["EVAL_SHARE", "EvalEstimate", "decoding_seconds", "eval_estimate", "plan_budget", "prompt_tokens"]
