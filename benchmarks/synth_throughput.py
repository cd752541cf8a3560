"""Synth throughput against a local `lmforge serve` endpoint, at several concurrency settings.

    python benchmarks/synth_throughput.py --model smollm2-135m-instruct --prompts 48 --concurrency 1 4 16

Starts the server once, then runs the ``answer`` task on the same prompts with each concurrency
(a fresh run directory each time, so nothing comes from the cache) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of the server")
    args = parser.parse_args()

    from lmforge.config import load_recipe
    from lmforge.pipeline import run_recipe

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "lmforge.cli", "serve", args.model, "--name", "teacher", "--port", str(port)]
        + ["--max-batch-size", str(args.max_batch_size)]
        + (["--threads", str(args.threads)] if args.threads else []),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        rows = []
        for concurrency in args.concurrency:
            root = Path(tempfile.mkdtemp(prefix=f"synth-bench-{concurrency}-"))
            (root / "prompts.txt").write_text(
                "".join(f"In one sentence, what is a pension fund? (variant {i})\n" for i in range(args.prompts))
            )
            recipe = root / "bench.yaml"
            recipe.write_text(
                json.dumps(
                    {
                        "name": "bench",
                        "run_dir": str(root / "runs"),
                        "stages": ["data", "synth"],
                        "data": {"sources": [{"path": "prompts.txt", "split": "prompts", "unit": "line"}]},
                        "synth": {
                            "task": "answer",
                            "teacher": {
                                "base_url": f"{url}/v1",
                                "model": "teacher",
                                "concurrency": concurrency,
                                "max_tokens": args.max_tokens,
                                "temperature": 0.0,
                            },
                        },
                    }
                )
            )
            before = httpx.get(f"{url}/health").json()["engine"]
            started = time.perf_counter()
            metrics = run_recipe(load_recipe(recipe))["synth"].metrics
            seconds = time.perf_counter() - started
            after = httpx.get(f"{url}/health").json()["engine"]
            batches = after["batches"] - before["batches"]
            rows.append(
                (
                    concurrency,
                    metrics["requests"]["sent"],
                    seconds,
                    metrics["requests"]["sent"] / seconds,
                    metrics["tokens"]["completion"] / seconds,
                    (after["requests"] - before["requests"]) / max(batches, 1),
                )
            )
        print("| concurrency | requests | seconds | requests/s | completion tokens/s | mean batch |")
        print("|---|---|---|---|---|---|")
        for c, n, s, rps, tps, batch in rows:
            print(f"| {c} | {n} | {s:.1f} | {rps:.2f} | {tps:.0f} | {batch:.1f} |")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
