"""Retrieval quality of finished runs' indexes on their evaluation sets, side by side: recall@k of the passage
holding the answer (answer_recall@k) and of the source document (recall@k), per retrieval mode.

    python benchmarks/retrieval_recall.py runs/general/demo-rag runs/tuned/demo-rag [--k 1 3 5]

Each run is read as lmforge reads it (its index's retriever, its embedder: the tuned one when the index stage
tuned it); the sets are the run's ``eval.sets`` as the data stage wrote them. Nothing is trained or written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmforge.rag.quality import gold_document, retrieval_scores
from lmforge.rag.raft import last_questions
from lmforge.rag.retrieve import MODES, open_retriever
from lmforge.records import read_records, short_answer
from lmforge.rundir import StageDir


def run_scores(run: Path, ks: list[int]) -> dict[str, dict[str, dict[str, float]]]:
    retriever, _ = open_retriever(run)
    recipe = json.loads((run / "recipe.json").read_text(encoding="utf-8"))
    gold_key = recipe["index"]["gold_key"]
    splits = StageDir.open(run, "data").manifest["outputs"]["splits"]
    found: dict[str, dict[str, dict[str, float]]] = {}
    for name in recipe["eval"]["sets"]:
        if name not in splits:
            continue
        records = [r for r in read_records(splits[name]) if gold_document(r.get("meta"), gold_key)]
        if not records:
            continue
        targets = [gold_document(r.get("meta"), gold_key) or "" for r in records]
        answers = [short_answer(r) for r in records]
        found[name] = {}
        for mode in MODES:
            ranked = retriever.search(last_questions(records), max(ks), mode)
            found[name][mode] = retrieval_scores(ranked, targets, ks, answers)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--k", nargs="+", type=int, default=[1, 3, 5])
    parser.add_argument("--json", type=Path, help="Also write the scores here.")
    args = parser.parse_args()
    everything = {}
    print("| run | set | mode | n | " + " | ".join(f"answer@{k}" for k in args.k) + " | document@1 |")
    print("|---|---|---|---|" + "---|" * (len(args.k) + 1))
    for run in args.runs:
        scores = run_scores(run, args.k)
        everything[str(run)] = scores
        for name, modes in scores.items():
            for mode, s in modes.items():
                cells = " | ".join(f"{s.get(f'answer_recall@{k}', float('nan')):.3f}" for k in args.k)
                print(f"| {run} | {name} | {mode} | {s.get('answer_n', 0)} | {cells} | {s['recall@1']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
