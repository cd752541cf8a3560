"""Greedy generation speed of the eval path (``lmforge.models.generate_replies``) on the demo questions.

    python benchmarks/eval_generation.py --batch-size 32 --attention sdpa --cache dynamic --dtype fp32

Loads SmolLM2-135M-Instruct (the packaged GGUF, converted once), answers the first ``--questions``
questions of the demo's ``test`` set (48 new tokens), prints reply tokens per second and a hash of
the answers (identical hashes: identical answers). Run one configuration at a time on an idle machine.
"""

from __future__ import annotations

import argparse
import hashlib
import time


def main() -> None:
    import torch

    from lmforge.config import load_recipe, shipped_recipe
    from lmforge.data.stage import prepare_records
    from lmforge.engine.compute import configure_threads
    from lmforge.models import generate_replies, load_for_inference, resolve_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--cache", choices=["dynamic", "static"], default="dynamic")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--questions", type=int, default=128)
    args = parser.parse_args()

    configure_threads()
    recipe = load_recipe(shipped_recipe("demo"))
    model_dir = resolve_model(recipe.model.ref)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    model, tokenizer = load_for_inference(model_dir, dtype=dtype)
    model.set_attn_implementation(args.attention)
    if args.cache == "static":
        model.generation_config.cache_implementation = "static"
    test = prepare_records(recipe.data, recipe.seed).splits["test"][: args.questions]
    prompts = [[m for m in r["messages"] if m["role"] != "assistant"] for r in test]
    generate_replies(model, tokenizer, prompts[:4], max_new_tokens=8, batch_size=4)  # warm-up
    started = time.perf_counter()
    replies = generate_replies(model, tokenizer, prompts, max_new_tokens=48, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    tokens = sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)
    digest = hashlib.sha256("\n".join(replies).encode()).hexdigest()[:12]
    print(
        f"{vars(args)}: {len(prompts)} questions, {tokens} reply tokens in {seconds:.1f} s = "
        f"{tokens / seconds:.1f} tokens/s; answers {digest}"
    )


if __name__ == "__main__":
    main()
