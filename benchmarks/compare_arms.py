"""Compare finished runs (arms) on the same questions: each arm's score per set and variant, and its
paired difference to a reference arm with a 95% bootstrap interval.

    python benchmarks/compare_arms.py runs/demo runs/demo-docqa runs/demo-docqa-full --reference runs/demo

Reads each run's ``eval/predictions.jsonl`` (one line per question and variant, with ``correct``);
questions are matched by set and id, so arms must have evaluated the same sets. Prints a Markdown
table (one row per arm, set and variant) for docs/TRAINING.md; ``--json`` writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from lmforge.evaluate.stats import Sample, paired_difference, score_interval


def read_correct(run: Path) -> dict[tuple[str, str], dict[str, float]]:
    """``(set, variant) -> {question id: 1.0 or 0.0}`` from a run's predictions."""
    found: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    with (run / "eval" / "predictions.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            for variant, answer in (row.get("answers") or {}).items():
                if "correct" in answer:
                    found[(row["set"], variant)][row["id"]] = float(bool(answer["correct"]))
    return found


def seconds(run: Path, stage: str) -> float | None:
    manifest = run / stage / "manifest.json"
    if not manifest.is_file():
        return None
    metrics = json.loads(manifest.read_text(encoding="utf-8")).get("metrics", {})
    return metrics.get("train_runtime") or metrics.get("seconds")


def labels(runs: list[Path]) -> dict[Path, str]:
    """A name per run: its folder's name, with as many parent folders as it takes to tell runs apart (several
    runs of one recipe are all called after it, e.g. ``arm-a/debian`` and ``arm-b/debian``)."""
    depth = 1
    while depth < max((len(run.parts) for run in runs), default=1):
        names = ["/".join(run.parts[-depth:]) for run in runs]
        if len(set(names)) == len(set(runs)):
            break
        depth += 1
    return {run: "/".join(run.parts[-depth:]) for run in runs}


def compare(runs: list[Path], reference: Path) -> list[dict]:
    base = read_correct(reference)
    named = labels([*runs, reference])
    rows = []
    for run in runs:
        arm = read_correct(run)
        for key in sorted(arm):
            ids = sorted(arm[key])
            mine = Sample([arm[key][i] for i in ids], [1.0] * len(ids))
            row = {
                "arm": named[run],
                "path": str(run),
                "set": key[0],
                "variant": key[1],
                "n": len(ids),
                "score": mine.value(),
                "ci": score_interval(mine),
            }
            if run != reference and key in base and set(base[key]) == set(ids):
                other = Sample([base[key][i] for i in ids], [1.0] * len(ids))
                row["vs_reference"] = paired_difference(mine, other)
            rows.append(row)
    return rows


def within(runs: list[Path], first: str, second: str) -> list[dict]:
    """Per run and set: variant ``first`` minus variant ``second`` on the same questions (e.g. tuned+rag - base+rag)."""
    named = labels(runs)
    rows = []
    for run in runs:
        found = read_correct(run)
        for set_name in sorted({key[0] for key in found}):
            a, b = found.get((set_name, first)), found.get((set_name, second))
            if not a or not b or set(a) != set(b):
                continue
            ids = sorted(a)
            pair = [Sample([x[i] for i in ids], [1.0] * len(ids)) for x in (a, b)]
            rows.append({"arm": named[run], "set": set_name, "n": len(ids), "first": pair[0].value(),
                         "second": pair[1].value(), "difference": paired_difference(*pair)})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--reference", type=Path, help="the arm the others are paired with (default: the first)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--within", nargs=2, metavar=("A", "B"), help="variant A - variant B inside each run")
    args = parser.parse_args()
    if args.within:
        first, second = args.within
        print(f"| arm | set | n | {first} | {second} | {first} - {second} [95% CI] |")
        print("|---|---|---|---|---|---|")
        for row in within(args.runs, first, second):
            d = row["difference"]
            low, high = d["ci"]
            print(f"| {row['arm']} | {row['set']} | {row['n']} | {row['first']:.1%} | {row['second']:.1%} | "
                  f"{d['delta'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}] |")  # fmt: skip
        return
    reference = args.reference or args.runs[0]
    rows = compare(args.runs, reference)
    reference_label = labels([*args.runs, reference])[reference]
    print(f"| arm | set | variant | n | score [95% CI] | vs {reference_label} [95% CI] | sft s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        low, high = row["ci"]
        versus = row.get("vs_reference")
        paired = (
            f"{versus['delta'] * 100:+.1f} [{versus['ci'][0] * 100:+.1f}, {versus['ci'][1] * 100:+.1f}]"
            if versus
            else "-"
        )
        took = seconds(Path(row["path"]), "sft")
        print(
            f"| {row['arm']} | {row['set']} | {row['variant']} | {row['n']} | {row['score'] * 100:.1f}% "
            f"[{low * 100:.1f}, {high * 100:.1f}] | {paired} | {took:.0f} |"
            if took
            else f"| {row['arm']} | {row['set']} | {row['variant']} | {row['n']} | {row['score'] * 100:.1f}% "
            f"[{low * 100:.1f}, {high * 100:.1f}] | {paired} | - |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
