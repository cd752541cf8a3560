"""Processes x threads on one CPU machine: the demo's sft as 1 process x all cores vs N processes x 1.

Runs ``lmforge run recipes/demo.yaml`` (data and sft only, ``--steps`` optimizer steps) once per
layout and round, alternating the layouts so a machine whose speed drifts favours neither, and
reports the sft stage's tokens/s (from its manifest), its wall time and the peak resident memory of
the whole process tree (launcher and every training process, summed, sampled every 0.2 s). Both
layouts train on the same global batch (``distributed.global_batch: keep``), so they do the same
work and log the same losses.

    .venv/bin/python benchmarks/process_layout.py --steps 20 --rounds 2 --out runs/bench-layout

Name the CPU and its ISA next to any figure published from this (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of ``root`` and all its descendants now."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def run_layout(nproc: int, steps: int, run_dir: Path, overrides: list[str]) -> dict:
    """One run of the demo's data + sft stages with ``nproc`` processes; its speed and peak memory."""
    command = [sys.executable, "-m", "lmforge", "run", str(ROOT / "recipes" / "demo.yaml"), "--run-dir", str(run_dir)]
    command += ["--set", "stages=[data,sft]", "--set", f"sft.max_steps={steps}", "--set", "sft.report_to=[]"]
    command += [arg for item in overrides for arg in ("--set", item)]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    watched = psutil.Process(process.pid)

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss(watched))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{nproc} process(es) failed:\n{output[-3000:]}")
    manifest = json.loads((run_dir / "demo" / "sft" / "manifest.json").read_text(encoding="utf-8"))
    metrics = manifest["metrics"]
    return {
        "processes": nproc,
        "threads_per_process": metrics["threads"],
        "steps": metrics["steps"],
        "tokens_per_s": metrics["tokens_per_s"],
        "sft_seconds": metrics["seconds"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak[0] / 2**20),
        "final_loss": metrics["final_loss"],
    }


def cpu_name() -> str:
    """The CPU model and its widest matmul ISA, as lscpu names them."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    isa = "AMX" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "AVX2"
    return f"{fields.get('Model name', '?').strip()} ({isa}); ISA caps: {os.environ.get('ATEN_CPU_CAPABILITY', 'none')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of sft per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per layout (alternating)")
    parser.add_argument("--nproc", type=int, default=psutil.cpu_count(logical=False) or 2, help="processes of layout B")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="folder for layout.json (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="lmforge-layout-"))
    rows = []
    for round_ in range(args.rounds):
        for nproc in (1, args.nproc):
            row = run_layout(nproc, args.steps, out / f"r{round_}-p{nproc}", args.overrides)
            rows.append(row)
            print(json.dumps(row))
    result = {"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"), "overrides": args.overrides, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "layout.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{result['cpu']} {args.overrides}")
    print(f"{'processes':>9} {'threads':>7} {'tokens/s':>9} {'sft s':>6} {'peak RSS MB':>11} loss")
    for row in rows:
        print(
            f"{row['processes']:>9} {row['threads_per_process']:>7} {row['tokens_per_s']:>9} {row['sft_seconds']:>6} "
            f"{row['peak_rss_mb']:>11} {row['final_loss']}"
        )


if __name__ == "__main__":
    main()
