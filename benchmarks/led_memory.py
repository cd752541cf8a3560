"""Memory and time of one seq2seq training step of LED and BART at their published base sizes, by input length.

LED (Longformer encoder-decoder) reads long documents because its encoder attends within a local window
(plus the global first token, as lmforge's seq2seq stage sets it), so its memory grows linearly with the
input; BART attends to every pair of tokens and stops at 1,024. This script builds both from their
published configs (allenai/led-base-16384, facebook/bart-base; random weights, nothing downloaded), and
measures, each length in a fresh process, the peak resident memory and the seconds of one forward and
backward pass through lmforge's own loss and collator (batch 1, a 64-token target).

    python benchmarks/led_memory.py                       # LED 1,024 ... 16,384 tokens, BART 1,024
    python benchmarks/led_memory.py --lengths 4096 --checkpointing

Name the CPU with the figures (``lscpu``); bf16 where the CPU has it (``--precision fp32`` otherwise).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

BASE_SHAPE = {  # what allenai/led-base-16384 and facebook/bart-base share (their config.json)
    "d_model": 768,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_attention_heads": 12,
    "decoder_attention_heads": 12,
    "encoder_ffn_dim": 3072,
    "decoder_ffn_dim": 3072,
    "vocab_size": 50265,
}
LED_BASE = {
    **BASE_SHAPE,
    "max_encoder_position_embeddings": 16384,
    "max_decoder_position_embeddings": 1024,
    "attention_window": [1024] * 6,
}
BART_BASE = {**BASE_SHAPE, "max_position_embeddings": 1024}


def one_step(family: str, length: int, precision: str, checkpointing: bool) -> dict[str, float]:
    """Peak RSS (MiB) and seconds of one training step at ``length`` input tokens (run in its own process)."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, LEDConfig, LEDForConditionalGeneration

    from lmforge.train.seq2seq import attends_globally, collate, seq2seq_loss_sum

    torch.manual_seed(0)
    if precision == "bf16":  # built in bf16: an fp32 copy first would set the high-water mark read below
        torch.set_default_dtype(torch.bfloat16)
    if family == "led":
        model = LEDForConditionalGeneration(LEDConfig(**LED_BASE))
    else:
        model = BartForConditionalGeneration(BartConfig(**BART_BASE))
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    row = {"input_ids": [int(t) for t in torch.randint(4, 50000, (length - 1,))] + [2], "labels": [5] * 63 + [2]}
    batch = collate([row], 1, global_first=attends_globally(model))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    loss, _ = seq2seq_loss_sum(model, batch)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {"peak_mib": round(peak), "step_mib": round(peak - before), "seconds": round(seconds, 1), "params_m": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing on")
    parser.add_argument("--one", nargs=2, metavar=("FAMILY", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_step(args.one[0], int(args.one[1]), args.precision, args.checkpointing)))
        return
    cases = [("bart", 1024)] + [("led", n) for n in args.lengths]
    print(
        f"| model | input tokens | peak RSS | of which the step | one step (s) |  ({args.precision}"
        f"{', checkpointing' if args.checkpointing else ''})"
    )
    print("|---|---|---|---|---|")
    for family, length in cases:
        command = [sys.executable, __file__, "--one", family, str(length), "--precision", args.precision]
        found = subprocess.run(
            command + (["--checkpointing"] if args.checkpointing else []), capture_output=True, text=True
        )
        if found.returncode != 0:
            print(f"| {family} | {length:,} | failed: {found.stderr.strip().splitlines()[-1][:80]} | | |")
            continue
        result = json.loads(found.stdout.strip().splitlines()[-1])
        name = f"{'LED' if family == 'led' else 'BART'}-base ({result['params_m']:.0f}M)"
        print(
            f"| {name} | {length:,} | {result['peak_mib']:,} MiB | {result['step_mib']:,} MiB | {result['seconds']} |"
        )


if __name__ == "__main__":
    main()
