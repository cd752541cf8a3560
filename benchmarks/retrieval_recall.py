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

from lmforge.config import IndexSpec
from lmforge.rag.retrieve import open_retriever
from lmforge.rag.stage import evaluate_retrieval
from lmforge.records import read_records
from lmforge.rundir import StageDir


def run_scores(run: Path, ks: list[int]) -> dict[str, dict[str, dict[str, float]]]:
    """The index stage's own retrieval evaluation (``evaluate_retrieval``) of each of the run's eval sets,
    at ``ks``."""
    retriever, _ = open_retriever(run)
    recipe = json.loads((run / "recipe.json").read_text(encoding="utf-8"))
    spec = IndexSpec.model_validate(recipe["index"]).model_copy(update={"eval_k": ks})
    splits = StageDir.open(run, "data").manifest["outputs"]["splits"]
    found: dict[str, dict[str, dict[str, float]]] = {}
    for name in recipe["eval"]["sets"]:
        if name in splits:
            evaluate_retrieval(name, list(read_records(splits[name])), retriever, None, spec, max(ks), found)
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
