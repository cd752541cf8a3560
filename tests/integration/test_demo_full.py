"""The whole demo, as `make demo` runs it: the tuned model must beat the base model as the README says."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_meets_its_targets(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "demo", "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "eval" / "summary.json").read_text())
    sets = summary["sets"]
    # Within the recipe's 15-minute budget: 50.0% on a CPU with native bf16, 20.2% with the CPU capped to AVX2
    # (fp32, 93 of 219 steps; docs/TRAINING.md, "A time budget"); the full schedule reaches 64.5%.
    assert sets["test"]["tuned"]["accuracy"] >= sets["test"]["base"]["accuracy"] + 0.15
    assert "budget: the run took" in completed.stdout
    assert sets["known"]["tuned"]["accuracy"] >= sets["known"]["base"]["accuracy"] - 0.05
    assert "lmforge eval" in completed.stdout
