"""How much MFU the matrix multiplications of a LoRA step allow on this machine, by themselves.

``lmforge bench`` reports MFU against the CPU's nominal bf16 peak. This script asks what the best
possible figure is for the same step: it lists every matmul of one LoRA training step of the model
(forward, the input gradients of the frozen weights, the LoRA gradients, attention, the output head
on the trained positions), times each distinct shape in bf16 on its own, and adds them up as if
nothing but those matmuls took time. The result is an upper bound for the whole step's speed at
that micro-batch shape. Every shape is timed ``--reps`` times and the fastest repetition is kept, so
load from other processes on a shared machine lowers the bound less than it lowers a training run.

    python benchmarks/matmul_ceiling.py                         # the bench's micro-batch: 8 rows of 70 tokens
    python benchmarks/matmul_ceiling.py --rows 4 --row-len 1024 --trained 1200   # cpt-style rows of 1024 tokens
    python benchmarks/matmul_ceiling.py --json ceiling.json

The FLOP count per token is the bench's (4 N + 2 T, ``lmforge.perf.plan.flops_per_token``), so the "MFU
ceiling" printed here compares directly with the bench table's MFU column. Attention is counted dense
over each row, as for unpacked rows.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from lmforge.config import SFTSpec
from lmforge.hardware import cpu_peak_flops, usable_cores
from lmforge.models import resolve_model
from lmforge.perf.plan import ModelShape, flops_per_token


def step_matmuls(shape: ModelShape, rows: int, row_len: int, trained: int, rank: int) -> list[tuple[str, tuple]]:
    """Every matmul of one LoRA step, as (group, (batch, m, k, n)) with ``batch`` 1 for plain GEMMs.

    LoRA on every linear layer of every block; the frozen weights get no weight gradient; the output
    head (tied, frozen) sees only the ``trained`` positions, forward and input gradient.
    """
    tokens = rows * row_len
    ops: list[tuple[str, tuple]] = []
    for _ in range(shape.layers):
        for fan_in, fan_out in shape.linear_shapes().values():
            ops.append(("frozen forward", (1, tokens, fan_in, fan_out)))
            ops.append(("frozen input grad", (1, tokens, fan_out, fan_in)))
            ops.append(("lora forward", (1, tokens, fan_in, rank)))
            ops.append(("lora forward", (1, tokens, rank, fan_out)))
            ops.append(("lora backward", (1, tokens, fan_out, rank)))  # grad of B's input
            ops.append(("lora backward", (1, fan_out, tokens, rank)))  # grad of B
            ops.append(("lora backward", (1, tokens, rank, fan_in)))  # grad of A's input
            ops.append(("lora backward", (1, rank, tokens, fan_in)))  # grad of A
        heads, dim = rows * shape.heads, shape.head_dim
        ops.append(("attention", (heads, row_len, dim, row_len)))  # q k^T
        ops.append(("attention", (heads, row_len, row_len, dim)))  # weights v
        ops.append(("attention", (heads, row_len, dim, row_len)))  # grad of the weights
        ops.extend(("attention", (heads, row_len, row_len, dim)) for _ in range(3))  # grads of v, q, k
    ops.append(("output head", (1, trained, shape.hidden, shape.vocab)))
    ops.append(("output head", (1, trained, shape.vocab, shape.hidden)))
    return ops


def time_matmul(batch: int, m: int, k: int, n: int, reps: int) -> float:
    """Seconds of one bf16 (batch x) m x k @ k x n product: the fastest of ``reps`` timed repetitions."""
    a = torch.randn(batch, m, k, dtype=torch.bfloat16)
    b = torch.randn(batch, k, n, dtype=torch.bfloat16)
    inner = min(200, max(1, int(2e8 // max(batch * m * k * n, 1))))  # about 0.1 s of work per repetition
    for _ in range(3):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b)
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model reference (default: the demo's)")
    parser.add_argument("--rows", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--row-len", type=int, default=70, help="tokens per row (no padding assumed)")
    parser.add_argument("--trained", type=int, default=192, help="trained (answer) positions per micro-batch")
    parser.add_argument("--rank", type=int, default=32, help="LoRA rank")
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per shape (the fastest counts)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    torch.set_num_threads(usable_cores())
    config = json.loads((resolve_model(args.model) / "config.json").read_text(encoding="utf-8"))
    shape = ModelShape.from_config(config)
    ops = step_matmuls(shape, args.rows, args.row_len, args.trained, args.rank)
    seconds_of = {dims: time_matmul(*dims, args.reps) for dims in sorted({dims for _, dims in ops})}

    groups: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # group -> [count, seconds, flops]
    for group, dims in ops:
        batch, m, k, n = dims
        groups[group][0] += 1
        groups[group][1] += seconds_of[dims]
        groups[group][2] += 2.0 * batch * m * k * n
    step_seconds = sum(seconds for _, seconds, _ in groups.values())
    tokens = args.rows * args.row_len
    per_token = flops_per_token(shape, SFTSpec(method="lora", lora={"r": args.rank, "target_modules": "all-linear"}))
    peak = cpu_peak_flops()

    print(f"{args.model}: {shape.layers} layers, hidden {shape.hidden}; LoRA r {args.rank} on every linear layer")
    print(f"micro-batch {args.rows} x {args.row_len} tokens, {args.trained} trained; {usable_cores()} threads")
    print(f"{'matmuls':<20}{'count':>7}{'ms':>10}{'GFLOP/s':>10}{'of peak':>9}")
    for group, (count, seconds, flops) in groups.items():
        rate = flops / seconds
        print(f"{group:<20}{count:>7}{seconds * 1e3:>10.1f}{rate / 1e9:>10.0f}{rate / peak:>9.1%}")
    ceiling_rate = tokens / step_seconds
    ceiling_mfu = ceiling_rate * per_token / peak
    print(f"all matmuls: {step_seconds * 1e3:.1f} ms per micro-batch -> at most {ceiling_rate:,.0f} tokens/s")
    print(f"MFU ceiling (bench formula, peak {peak / 1e12:.1f} TFLOP/s): {ceiling_mfu:.1%}")
    if args.json:
        result = {
            "model": args.model,
            "rows": args.rows,
            "row_len": args.row_len,
            "trained": args.trained,
            "rank": args.rank,
            "threads": usable_cores(),
            "peak_flops": peak,
            "groups": {g: {"count": c, "seconds": s, "flops": f} for g, (c, s, f) in groups.items()},
            "ceiling_tokens_per_s": ceiling_rate,
            "ceiling_mfu": ceiling_mfu,
        }
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
