"""Measure the peak RSS and time of short training runs and compare them with ``lmforge plan``.

Each configuration runs ``lmforge run RECIPE --set stages=[data,sft] --set sft.max_steps=N ...`` in a
child process (its own peak RSS, read with ``os.wait4``) and is planned in this process with the
same overrides. The constants in ``lmforge/perf/plan.py`` were fitted to this table; docs/PERFORMANCE.md
("Planning") has the measured numbers.

    python benchmarks/plan_calibration.py                      # the SmolLM2 configurations (minutes)
    python benchmarks/plan_calibration.py --only lora-b16 full-b8
    python benchmarks/plan_calibration.py --json out.json

Run it on an otherwise idle machine (or under the heavy-run lock): another process's load changes
the time, not the memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS: dict[str, list[str]] = {
    # name: overrides of the demo recipe (SmolLM2-135M-Instruct, demo chat data)
    "lora-b16": ["sft.batch_size=16"],
    "lora-b64": ["sft.batch_size=64"],
    "lora-b64-ckpt": ["sft.batch_size=64", "sft.gradient_checkpointing=true"],
    "lora-packed-b32": ["sft.batch_size=32", "sft.packing=true", "sft.max_length=1024"],
    "lora-b16-fp32": ["sft.batch_size=16", "sft.precision=fp32"],
    "full-b8": ["sft.method=full", "sft.batch_size=8", "sft.lr=1e-5"],
}


def measure(recipe: Path, overrides: list[str], steps: int) -> dict[str, float]:
    """Run data + sft for ``steps`` steps in a child process; its peak RSS (MB) and the sft seconds."""
    run_dir = Path(tempfile.mkdtemp(prefix="lmforge-calibration-"))
    sets = [*overrides, "stages=[data,sft]", f"sft.max_steps={steps}", "sft.report_to=[]"]
    command = [sys.executable, "-m", "lmforge.cli", "run", str(recipe), "--run-dir", str(run_dir)]
    for item in sets:
        command += ["--set", item]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")
    manifest = json.loads(next(run_dir.glob("*/sft/manifest.json")).read_text())
    return {
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "sft_seconds": manifest["metrics"]["seconds"],
        "wall_seconds": time.perf_counter() - started,
        "tokens": manifest["metrics"]["tokens"],
    }


def predict(recipe: Path, overrides: list[str], steps: int) -> dict[str, float]:
    from lmforge.config import load_recipe
    from lmforge.perf.plan import plan_recipe

    loaded = load_recipe(recipe, [*overrides, "stages=[data,sft]", f"sft.max_steps={steps}"])
    _, plans = plan_recipe(loaded)
    plan = plans[0]
    return {"peak_rss_mb": plan.peak_mb, "seconds": plan.seconds or 0.0, **{k: v for k, v in plan.memory_mb.items()}}


def main() -> None:
    from lmforge.config import shipped_recipe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=shipped_recipe("demo"))
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="configurations to run (default: all)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()
    rows = []
    for name in args.only or list(CONFIGS):
        measured = measure(args.recipe, CONFIGS[name], args.steps)
        predicted = predict(args.recipe, CONFIGS[name], args.steps)
        error = predicted["peak_rss_mb"] / measured["peak_rss_mb"] - 1
        rows.append({"name": name, "overrides": CONFIGS[name], "measured": measured, "predicted": predicted})
        print(
            f"{name:18s} measured {measured['peak_rss_mb']:7.0f} MB  predicted {predicted['peak_rss_mb']:7.0f} MB "
            f"({error:+.0%})  sft {measured['sft_seconds']:6.1f} s (plan {predicted['seconds']:6.1f} s)",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
