"""benchmarks/compare_arms.py: runs of one recipe share a folder name and must still be told apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_arms.py"


def load() -> ModuleType:
    return load_script("compare_arms")


def fake_run(root: Path, arm: str, correct: list[bool], seconds: float) -> Path:
    run = root / arm / "debian"
    (run / "eval").mkdir(parents=True)
    (run / "sft").mkdir()
    rows = [{"set": "test", "id": f"q{i}", "answers": {"tuned": {"correct": ok}}} for i, ok in enumerate(correct)]
    (run / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (run / "sft" / "manifest.json").write_text(json.dumps({"metrics": {"seconds": seconds}}), encoding="utf-8")
    return run


def test_runs_named_alike_keep_their_own_label_and_time(tmp_path):
    arms = load()
    first = fake_run(tmp_path, "arm-a", [True, False, False, False], 100.0)
    second = fake_run(tmp_path, "arm-b", [True, True, True, False], 250.0)
    assert arms.labels([first, second]) == {first: "arm-a/debian", second: "arm-b/debian"}
    assert arms.labels([first]) == {first: "debian"}
    rows = arms.compare([second], first)
    assert [(r["arm"], r["score"]) for r in rows] == [("arm-b/debian", 0.75)]
    assert rows[0]["vs_reference"]["delta"] == 0.5
    printed = subprocess.run(
        [sys.executable, str(SCRIPT), str(first), str(second)], capture_output=True, text=True, check=True
    ).stdout
    assert "| arm-a/debian | test | tuned | 4 | 25.0%" in printed and printed.rstrip().endswith("| 250 |")
    assert "vs arm-a/debian" in printed
