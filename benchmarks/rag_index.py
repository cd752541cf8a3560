"""Time the ``index`` stage of recipes/demo-rag.yaml: a full build, a re-run with one changed document.

    python benchmarks/rag_index.py              # the demo corpus (42 articles)
    python benchmarks/rag_index.py --copies 20  # the articles 20 times over (distinct texts), for throughput

Runs the data and index stages in a temporary run directory and prints, for each run: wall and
CPU seconds of the stage, chunks, chunks embedded and embedding throughput (chunks/s), and
hybrid recall@5 on the ``test`` set.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from lmforge.config import load_recipe, package_dir, shipped_recipe
from lmforge.data import stage as prepare
from lmforge.rag import stage as index


def copy_articles(target: Path, copies: int) -> None:
    """The demo articles ``copies`` times, each copy's text made distinct so deduplication keeps it."""
    source = package_dir() / "demo" / "articles"
    for k in range(copies):
        for article in sorted(source.glob("*.md")):
            text = article.read_text(encoding="utf-8")
            suffix = "" if k == 0 else f"-copy{k}"
            marker = "" if k == 0 else f"\n\n(Consolidated copy {k}.)\n"
            (target / f"{article.stem}{suffix}.md").write_text(text + marker, encoding="utf-8")


def timed_index(recipe) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    result = index.run(recipe)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    m = result.metrics
    return {
        "stage_wall_s": round(wall, 1),
        "stage_cpu_s": round(cpu, 1),
        "index_s": m["index_seconds"],
        "chunks": m["chunks"],
        "embedded": m["embedded_chunks"],
        "embed_s": m["embed_seconds"],
        "chunks_per_s": m["chunks_per_s"],
        "hybrid_recall@5_test": m["retrieval"].get("test", {}).get("hybrid", {}).get("recall@5"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=1, help="copies of the 42 demo articles to index")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmforge-rag-bench-"))
    try:
        articles = work / "articles"
        articles.mkdir()
        copy_articles(articles, args.copies)
        overrides = [f"run_dir={work / 'runs'}", "stages=[data, index]", f"data.sources.5.path={articles}"]
        recipe = load_recipe(shipped_recipe("demo-rag"), overrides)
        prepare.run(recipe)
        first = timed_index(recipe)
        print("full build:", json.dumps(first))
        changed = sorted(articles.glob("*.md"))[0]
        changed.write_text(changed.read_text(encoding="utf-8") + "\n(Amended.)\n", encoding="utf-8")
        prepare.run(recipe)
        print("one document changed:", json.dumps(timed_index(recipe)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
