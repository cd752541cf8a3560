"""``benchmarks/gpu_check.py``: it refuses to run without CUDA, and its result table shows every row's values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_gpu_check() -> ModuleType:
    """The script as a module (benchmarks/ is not a package); importing it runs nothing."""
    return load_script("gpu_check")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(cuda_available(), reason="with CUDA the script runs the real GPU checks (minutes)")
def test_without_cuda_it_says_a_gpu_is_needed_and_exits_2():
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr
    assert "make test" in done.stderr
    assert done.stdout == ""


def test_table_shows_ok_skipped_and_failed_rows():
    gpu_check = load_gpu_check()
    rows = [
        {
            "name": "sft-bf16",
            "processes": 1,
            "status": "ok",
            "tokens_per_s": 51234.6,
            "peak_gpu_mb": 4321,
            "first_loss": 2.34567,
            "last_loss": 0.98765,
            "eval": "test 40.6% (n=32)",
        },
        {"name": "ddp", "processes": 1, "status": "skipped: needs 2+ GPUs (found 1)"},
        {"name": "fsdp", "processes": 2, "status": "failed: sft: RuntimeError: " + "x" * 200},
    ]
    text = gpu_check.format_table(rows)
    header, rule, ok, skipped, failed = text.splitlines()
    for column in gpu_check.COLUMNS:
        assert column in header
    for value in ("sft-bf16", "51235", "4321", "2.3457", "0.9877", "test 40.6% (n=32)"):
        assert value in ok
    assert "skipped: needs 2+ GPUs (found 1)" in skipped and skipped.endswith("-")
    assert "failed: sft: RuntimeError: xxx" in failed and "..." in failed  # long statuses are cut in the text table
    # aligned: every row's status starts under the header's, numbers end under theirs
    assert ok.index("ok") == skipped.index("skipped") == header.index("status")
    assert ok.index("51235") + len("51235") == header.index("tokens/s") + len("tokens/s")
    assert set(rule) == {"-", " "}

    markdown = gpu_check.format_markdown(rows).splitlines()
    assert markdown[0].startswith("| row | processes | status |") and len(markdown) == 2 + len(rows)
    assert "x" * 200 in markdown[-1]


def test_first_error_prefers_the_failing_rank_then_the_exception():
    gpu_check = load_gpu_check()
    launcher = "error: rank 1 (pid 42) exited with code 1 during stage 'sft'"
    assert gpu_check.first_error(f"noise\n[rank1]: error (rank 1): CUDA out of memory\n{launcher}\n") == (
        "error (rank 1): CUDA out of memory"
    )
    traceback = "Traceback (most recent call last):\n  File 'x.py'\nRuntimeError: NCCL error\n"
    assert gpu_check.first_error(traceback + launcher) == "RuntimeError: NCCL error"
    recipe = "error: demo.yaml: 1 problem\n  - sft.lr: got 'fast'; expected a valid number\n"
    assert gpu_check.first_error(recipe) == "error: demo.yaml: 1 problem - sft.lr: got 'fast'; expected a valid number"
    assert gpu_check.first_error("") is None
