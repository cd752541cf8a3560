"""Benchmark the data stage: generate ~100 MB of JSON Lines, run ``prepare``, report time and throughput.

    python benchmarks/data_prepare.py                      # 100 MB, default settings
    python benchmarks/data_prepare.py --mb 20 --near 0.85  # smaller, with MinHash near-dup removal
    python benchmarks/data_prepare.py --workers 2          # files read by two worker processes

The generated files mix the formats users bring (alpaca, question/answer, OpenAI messages, raw
text) with 3% exact duplicates, 1% near-duplicates and 0.1% broken lines, in four files. Generation
is not timed; the timed part is exactly what ``lmforge data RECIPE`` does (read, convert, clean,
filter, dedup, split, write, stats), run in-process through ``lmforge.data.stage.run``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

VOCABULARY = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there all one their we him been has when who will more no if out so said what up its about "
    "into than them can only other new some could time these two may then do first any my now such like our over "
    "pension benefit contribution insured employer fund article code claim appeal period rate earnings year month "
    "retirement disability survivor unemployment sickness accident maternity parental allowance office board "
    "reserve ceiling qualifying credited voluntary insurance minimum formula indexation revaluation decision"
)
WORDS = VOCABULARY.split(" ")


def sentence(rng: random.Random, low: int, high: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(low, high))
    return " ".join(words).capitalize() + "."


def row(rng: random.Random, kind: int) -> dict:
    question = sentence(rng, 6, 20)[:-1] + "?"
    answer = " ".join(sentence(rng, 8, 25) for _ in range(rng.randint(1, 6)))
    if kind == 0:
        return {"instruction": question, "input": "", "output": answer}
    if kind == 1:
        return {"question": question, "answer": answer, "meta": {"fact": f"f{rng.randint(0, 50_000)}"}}
    if kind == 2:
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    return {"text": " ".join(sentence(rng, 8, 25) for _ in range(rng.randint(3, 12)))}


def generate(folder: Path, megabytes: float, seed: int = 0) -> tuple[int, int]:
    """Write four JSONL files (one per format) totalling ``megabytes``; returns (lines, bytes)."""
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    handles = [(folder / f"part-{name}.jsonl").open("w", encoding="utf-8") for name in ("alpaca", "qa", "chat", "text")]
    written = lines = 0
    recent: list[list[dict]] = [[], [], [], []]  # per format, so a duplicate lands in a file of its own format
    while written < target:
        kind = lines % 4
        roll = rng.random()
        if roll < 0.03 and recent[kind]:
            item = json.dumps(rng.choice(recent[kind]))  # exact duplicate
        elif roll < 0.04 and recent[kind]:
            near = json.loads(json.dumps(rng.choice(recent[kind])))
            _touch(near)
            item = json.dumps(near)  # near duplicate (a few words changed)
        elif roll < 0.041:
            item = '{"instruction": "broken line'  # invalid JSON
        else:
            value = row(rng, kind)
            recent[kind] = [*recent[kind][-999:], value]
            item = json.dumps(value)
        handles[kind].write(item + "\n")
        written += len(item) + 1
        lines += 1
    for handle in handles:
        handle.close()
    return lines, written


def _touch(value: dict) -> None:
    """Change one word of the longest string inside ``value``."""
    if "text" in value:
        words = value["text"].split()
        words[len(words) // 2] = "changed"
        value["text"] = " ".join(words)
    elif "output" in value:
        value["output"] += " Indeed."
    elif "answer" in value:
        value["answer"] += " Indeed."
    else:
        value["messages"][-1]["content"] += " Indeed."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="size of the generated JSONL in MB (default 100)")
    parser.add_argument("--near", type=float, default=None, help="near-duplicate threshold (default: off)")
    parser.add_argument("--val", type=float, default=0.05, help="val_fraction (default 0.05)")
    parser.add_argument("--workers", type=int, default=1, help="data.workers: processes reading files (default 1)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the generated data and run here")
    args = parser.parse_args()

    from lmforge.config import load_recipe
    from lmforge.data import stage as prepare

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    (workdir / "in").mkdir(parents=True, exist_ok=True)
    lines, size = generate(workdir / "in", args.mb)
    dedup = f"{{near_threshold: {args.near}}}" if args.near else "{}"
    recipe_path = workdir / "bench.yaml"
    recipe_path.write_text(
        f"name: bench\nrun_dir: {workdir / 'runs'}\nstages: [data]\n"
        f"data:\n  sources: [{{path: in}}]\n  val_fraction: {args.val}\n  group_by: meta.fact\n  dedup: {dedup}\n"
        f"  workers: {args.workers}\n",
        encoding="utf-8",
    )
    recipe = load_recipe(recipe_path)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = prepare.run(recipe)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    again = time.perf_counter()
    cached = prepare.run(load_recipe(recipe_path))
    cached_seconds = time.perf_counter() - again
    assert cached.skipped
    totals = result.totals
    report = {
        "input_mb": round(size / 1e6, 1),
        "lines": lines,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "mb_per_s": round(size / 1e6 / seconds, 2),
        "records_per_s": round(totals["read"] / seconds),
        "cached_rerun_seconds": round(cached_seconds, 2),
        "near_threshold": args.near,
        "workers": args.workers,
        "totals": totals,
        "splits": result.splits,
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
    }
    print(json.dumps(report, indent=2))
    if args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
