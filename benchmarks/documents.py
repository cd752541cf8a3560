"""Document readers, chunkers and JSON repair: lmforge's own against the kept libraries (issue 17, item 6).

    python benchmarks/documents.py readers    # PDF and HTML readers: text fidelity and headings
    python benchmarks/documents.py chunkers   # chunkers: answer recall of hybrid retrieval on the QA domains
    python benchmarks/documents.py json       # synth's JSON repair on damaged teacher replies

``readers`` reads a real document Debian ships in three forms, the Shared MIME-info Database
specification (``/usr/share/doc/shared-mime-info``: DocBook XML, the PDF and the HTML made from it): the
XML's paragraphs and titles are the truth. A sentence (5 words or more) counts as kept when its letters
and digits appear in that order in the reader's output (spaces, quotes and hyphens aside), so a page
header dropped into a sentence or columns read across lose it; a title counts when the output has it as
a heading. ``--pdf``/``--html`` add files of your own (sentence counts need the XML, so only sizes and
headings are shown for them).

``chunkers`` prepares the documents of ``recipes/demo-rag.yaml`` and the two real domains in
``benchmarks/realdocs``, cuts them with each chunker at the same token budget (the embedder's tokens),
indexes each with the recipe's hybrid retrieval (and lmforge's chunks also with BM25:dense fused 1:1, BM25
alone and dense alone) and asks the held-out questions: *answer recall@k* is the
share of questions whose gold answer is written in one of the first k passages; *document recall@k*
the share with a passage of the gold document.

``json`` damages valid replies of the ``qa_from_docs`` task in the ways teachers do (code fences, prose
around the JSON, trailing commas, smart quotes, single quotes, a reply cut off mid-list, missing commas,
comments) and counts the question/answer pairs each parser gets back.

The optional libraries are imported when present and reported as missing otherwise
(``pip install pymupdf4llm markitdown trafilatura semchunk semantic-text-splitter json-repair``).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import random
import re
import shutil
import tempfile
import time
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEC = Path("/usr/share/doc/shared-mime-info")


# ---------------------------------------------------------------- readers


def letters(text: str) -> str:
    """Lower-case letters and digits only: what must survive a reader whatever its spacing and punctuation."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).lower() if ch.isalnum())


def docbook_truth(path: Path) -> tuple[list[str], list[str]]:
    """(sentences of 5+ words, section titles) of a DocBook XML file; citations read as ``[X]``, as rendered."""
    raw = gzip.decompress(path.read_bytes()).decode("utf-8") if path.suffix == ".gz" else path.read_text("utf-8")
    raw = re.sub(r"<citation>(.*?)</citation>", r"[\1]", raw)
    root = ET.fromstring(raw.encode("utf-8"))
    sentences: list[str] = []
    for para in root.iter("para"):
        if para.find(".//para") is not None:  # a wrapper (list item): its inner paragraphs count
            continue
        text = " ".join("".join(para.itertext()).split())
        sentences += [s for s in re.split(r"(?<=[.!?:])\s+(?=[A-Z])", text) if len(s.split()) >= 5]
    sections = [node for kind in ("sect1", "sect2") for node in root.iter(kind)]
    titles = [" ".join("".join(node.find("title").itertext()).split()) for node in sections]
    return sentences, [t for t in titles if t]


def builtin_blocks(path: Path) -> tuple[str, list[str], int]:
    """lmforge's reader: (text, heading titles, blocks)."""
    from lmforge.data.documents import read_blocks
    from lmforge.data.textio import FileReport

    blocks = read_blocks(path, "utf-8", FileReport(kind="?"))
    return "\n\n".join(b.text for b in blocks), [b.title for b in blocks if b.level], len(blocks)


def markdown_result(markdown: str) -> tuple[str, list[str], int]:
    """(text, heading titles, paragraphs) of a library's Markdown output, read by lmforge's Markdown reader."""
    from lmforge.data.documents import _markdown_blocks

    blocks = _markdown_blocks(markdown)
    titles = [re.sub(r"[*_`]", "", b.title).strip() for b in blocks if b.level]
    return markdown, titles, len(blocks)


def pdf_readers() -> dict[str, Any]:
    readers: dict[str, Any] = {"lmforge (pypdfium2)": builtin_blocks}
    try:
        import pymupdf4llm

        readers["pymupdf4llm"] = lambda p: markdown_result(pymupdf4llm.to_markdown(str(p), show_progress=False))
    except ImportError:
        readers["pymupdf4llm"] = None
    try:
        from markitdown import MarkItDown

        readers["markitdown (pdfminer)"] = lambda p: markdown_result(MarkItDown().convert(str(p)).text_content)
    except ImportError:
        readers["markitdown (pdfminer)"] = None
    return readers


def html_readers() -> dict[str, Any]:
    readers: dict[str, Any] = {"lmforge (BeautifulSoup)": builtin_blocks}
    try:
        import trafilatura

        def with_trafilatura(path: Path) -> tuple[str, list[str], int]:
            html = path.read_text("utf-8", errors="replace")
            out = trafilatura.extract(html, output_format="markdown", include_tables=True, favor_recall=True)
            return markdown_result(out or "")

        readers["trafilatura"] = with_trafilatura
    except ImportError:
        readers["trafilatura"] = None
    try:
        from markitdown import MarkItDown

        readers["markitdown (markdownify)"] = lambda p: markdown_result(MarkItDown().convert(str(p)).text_content)
    except ImportError:
        readers["markitdown (markdownify)"] = None
    return readers


def score_reader(read: Any, files: list[Path], truth: tuple[list[str], list[str]] | None) -> dict[str, Any]:
    started = time.perf_counter()
    texts, titles, blocks = [], [], 0
    for file in files:
        text, found, count = read(file)
        texts.append(text)
        titles += found
        blocks += count
    row: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 2), "chars": sum(map(len, texts))}
    row["blocks"] = blocks
    row["headings"] = len(titles)
    if truth is not None:
        sentences, truth_titles = truth
        whole = letters(" ".join(texts))
        kept = [s for s in sentences if letters(s) in whole]
        heading_set = {letters(t) for t in titles}
        row["sentences_kept"] = f"{len(kept)}/{len(sentences)}"
        row["sentences_kept_pct"] = round(100 * len(kept) / len(sentences), 1)
        numbered = sum(any(h.endswith(letters(t)) for h in heading_set) for t in truth_titles)  # "2.1. Title"
        row["titles_as_headings"] = f"{numbered}/{len(truth_titles)}"
        row["lost_examples"] = [s[:90] for s in sentences if s not in kept][:3]
    return row


def readers(args: argparse.Namespace) -> dict[str, Any]:
    xml = SPEC / "shared-mime-info-spec.xml.gz"
    truth = docbook_truth(xml) if xml.exists() else None
    pages = sorted((SPEC / "shared-mime-info-spec.html").glob("*.html"))
    cases = [
        ("pdf", "shared-mime-info-spec.pdf", [SPEC / "shared-mime-info-spec.pdf"], truth, pdf_readers()),
        ("html", "shared-mime-info-spec.html/*.html", pages, truth, html_readers()),
    ]
    cases += [("pdf", p, [Path(p)], None, pdf_readers()) for p in args.pdf]
    cases += [("html", p, [Path(p)], None, html_readers()) for p in args.html]
    results: dict[str, Any] = {}
    for kind, name, files, gold, candidates in cases:
        if not files or not all(f.exists() for f in files):
            print(f"{name}: not on this machine, skipped")
            continue
        told = f" (truth: {len(gold[0])} sentences, {len(gold[1])} titles)" if gold else ""
        print(f"\n{kind.upper()} {name}{told}")
        for reader, read in candidates.items():
            if read is None:
                print(f"  {reader:26s} not installed")
                continue
            row = score_reader(read, files, gold)
            results[f"{name} | {reader}"] = row
            shown = {k: v for k, v in row.items() if k not in ("lost_examples", "sentences_kept_pct")}
            print(f"  {reader:26s} {shown}")
            for lost in row.get("lost_examples", []):
                print(f"      lost: {lost!r}")
    return results


# ---------------------------------------------------------------- chunkers

DOMAINS = {
    "demo": ("recipes/demo-rag.yaml", ["test", "docs_only"], []),
    "licenses": ("benchmarks/realdocs/licenses.yaml", ["test"], []),
    "debian": ("benchmarks/realdocs/debian/debian.yaml", ["test", "docs_only"], []),
    "pdf": ("benchmarks/realdocs/pdf/pdf.yaml", ["test"], []),
    "pdf-layout": ("benchmarks/realdocs/pdf/pdf.yaml", ["test"], ["data.sources.1.pdf_reader=pymupdf4llm"]),
}
"""Domain -> (recipe, question sets, overrides); ``pdf-layout`` reads the PDF with pymupdf4llm."""


def gold_answer(record: dict[str, Any]) -> str:
    meta = record.get("meta") or {}
    if isinstance(meta.get("answer"), str):
        return meta["answer"]
    return next(m["content"] for m in reversed(record["messages"]) if m["role"] == "assistant")


def library_chunks(documents: list[dict[str, Any]], splitter: Any) -> list[Any]:
    """Chunks of a library splitter, with the same ids, paths and heading of the record as lmforge's."""
    from lmforge.rag.chunk import Chunk, document_key

    chunks = []
    for record in documents:
        if record["kind"] != "text":
            continue
        source, key = record["source"], document_key(record)
        heading = source.get("heading") or (record.get("meta") or {}).get("heading") or ""
        for n, text in enumerate(t for t in splitter(record["text"]) if t.strip()):
            line = int(source.get("line") or 1)
            chunks.append(Chunk(f"{key}#{n}", key, source["path"], line, source.get("page"), heading, text))
    return chunks


def candidate_chunkers(documents: list[dict[str, Any]], embedder: Any, budget: int, overlap: int) -> dict[str, Any]:
    """Chunker name -> a function making the chunks, at the same budget of the embedder's tokens."""
    from lmforge.rag.chunk import chunk_records

    made: dict[str, Any] = {"lmforge": lambda: chunk_records(documents, budget, overlap, embedder.count_tokens)}
    try:
        import semchunk

        cut = semchunk.chunkerify(embedder.count_tokens, budget)
        made["semchunk"] = lambda: library_chunks(documents, lambda text: cut(text, overlap=overlap))
    except ImportError:
        print("semchunk: not installed")
    try:
        from semantic_text_splitter import MarkdownSplitter

        counter = copy.deepcopy(embedder.model.tokenizer.backend_tokenizer)
        counter.no_truncation()  # the embedder's tokenizer cuts at 256 tokens: every text would "fit"
        split = MarkdownSplitter.from_huggingface_tokenizer(counter, budget, overlap)
        made["semantic-text-splitter (Markdown)"] = lambda: library_chunks(documents, split.chunks)
    except ImportError:
        print("semantic-text-splitter: not installed")
    return made


def answer_recall(
    chunks: list[Any], embedder: Any, questions: list[dict[str, Any]], mode: str, where: Path, keyword_weight: float
) -> dict:
    """Answer recall@1/3/5 and document recall@1 of ``mode`` retrieval over ``chunks``."""
    from lmforge.rag.quality import first_hit, gold_document
    from lmforge.rag.retrieve import LanceRetriever
    from lmforge.rag.store import LanceStore

    store = LanceStore(where)
    store.sync(chunks, {c.doc_key: "x" for c in chunks}, embedder.embed)
    retriever = LanceRetriever(store, embedder, keyword_weight=keyword_weight)
    ranked = retriever.search([r["messages"][-2]["content"] for r in questions], 5, mode)
    answers = [letters(gold_answer(r)) for r in questions]
    row: dict[str, Any] = {}
    for k in (1, 3, 5):
        hits = [any(a in letters(p["text"]) for p in ps[:k]) for a, ps in zip(answers, ranked, strict=True)]
        row[f"answer@{k}"] = round(100 * sum(hits) / len(hits), 1)
    golds = [gold_document(r.get("meta"), "article") for r in questions]
    firsts = [first_hit(p, g) for p, g in zip(ranked, golds, strict=True) if g]
    row["document@1"] = round(100 * sum(1 for d in firsts if d == 1) / max(1, len(firsts)), 1)
    return row


def chunkers(args: argparse.Namespace) -> dict[str, Any]:
    from lmforge.config import load_recipe
    from lmforge.data import stage as prepare
    from lmforge.rag.embed import load_embedder
    from lmforge.records import read_records

    results: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="lmforge-chunkers-"))
    try:
        for domain in args.domains:
            path, sets, overrides = DOMAINS[domain]
            if "pdf" in domain and not SPEC.exists():
                print(f"{domain}: {SPEC} is not on this machine, skipped")
                continue
            recipe = load_recipe(ROOT / path, [f"run_dir={work / domain}", *overrides])
            prepare.run(recipe)
            splits = recipe.run_path() / "data" / "splits"
            documents = [r for s in recipe.index.documents for r in read_records(splits / f"{s}.jsonl")]
            questions = [r for s in sets for r in read_records(splits / f"{s}.jsonl") if r["kind"] == "chat"]
            embedder = load_embedder(recipe.index.embedding.model)
            budget = min(recipe.index.chunk.max_tokens, embedder.max_tokens - 2)
            overlap = recipe.index.chunk.overlap
            print(
                f"\n{domain}: {len(documents)} document records, {len(questions)} questions ({', '.join(sets)}), "
                f"budget {budget} tokens, overlap {overlap}"
            )
            for name, make in candidate_chunkers(documents, embedder, budget, overlap).items():
                started = time.perf_counter()
                chunks = make()
                seconds = time.perf_counter() - started
                tokens = sum(embedder.count_tokens(c.text) for c in chunks) / max(1, len(chunks))
                weight = recipe.index.keyword_weight
                modes = list(dict.fromkeys([("hybrid", weight), ("hybrid", 1.0), ("bm25", 0), ("dense", 0)]))
                for mode, w in modes if name == "lmforge" else modes[:1]:
                    row: dict[str, Any] = {"chunks": len(chunks), "seconds": round(seconds, 2)}
                    row["mean_tokens"] = round(tokens, 1)
                    row |= answer_recall(chunks, embedder, questions, mode, work / f"store-{len(results)}", w)
                    shown = f"{mode} {w:g}:1" if mode == "hybrid" else mode
                    results[f"{domain} | {name} | {shown}"] = row
                    print(f"  {name:34s} {shown:10s} {row}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


# ---------------------------------------------------------------- JSON repair


def damaged_replies(seed: int = 0, count: int = 200) -> list[tuple[str, str, int]]:
    """(kind of damage, reply, pairs a perfect parser recovers)."""
    rng = random.Random(seed)
    words = ["the", "code", "states", "benefit", "period", "shall", "days", "notice", "claim", "employer", "person"]

    def pair(i: int) -> dict[str, str]:
        q = " ".join(rng.choice(words) for _ in range(rng.randint(5, 10)))
        a = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        return {"question": f"{q.capitalize()} ({i})?", "answer": f"{a.capitalize()}."}

    damages = ["fence", "prose", "trailing comma", "smart quotes", "single quotes", "truncated", "missing comma"]
    damages.append("comment")
    out = []
    for n in range(count):
        kind = damages[n % len(damages)]
        pairs = [pair(i) for i in range(rng.randint(3, 6))]
        body = json.dumps({"pairs": pairs}, indent=2, ensure_ascii=False)
        recoverable = len(pairs)
        if kind == "fence":
            body = f"```json\n{body}\n```"
        elif kind == "prose":
            body = f"Here are the pairs you asked for:\n{body}\nLet me know if you need more."
        elif kind == "trailing comma":
            body = re.sub(r"}\s*\]", "},\n  ]", body, count=1)
        elif kind == "smart quotes":
            body = body.replace('"question"', "\u201cquestion\u201d")
        elif kind == "single quotes":
            body = body.replace('"', "'")
        elif kind == "truncated":
            body = body[: body.rfind("{") + rng.randint(5, 30)]
            recoverable = len(pairs) - 1
        elif kind == "missing comma":
            body = re.sub(r"},\s*{", "}\n    {", body, count=1)
        elif kind == "comment":
            body = body.replace('"pairs": [', '"pairs": [\n    // generated from the passage', 1)
        out.append((kind, body, recoverable))
    return out


def json_repair_bench(args: argparse.Namespace) -> dict[str, Any]:
    from lmforge.synth.tasks import parse_items

    parsers: dict[str, Any] = {"lmforge": lambda text: parse_items("qa_from_docs", text)[0]}
    try:
        import json_repair

        def with_library(text: str) -> list[dict[str, str]]:
            value = json_repair.loads(text)
            items = value.get("pairs", []) if isinstance(value, dict) else value if isinstance(value, list) else []
            return [i for i in items if isinstance(i, dict) and i.get("question") and i.get("answer")]

        parsers["json-repair"] = with_library
    except ImportError:
        print("json-repair: not installed")
    replies = damaged_replies()
    results: dict[str, Any] = {}
    for name, parse in parsers.items():
        by_kind: dict[str, list[int]] = {}
        for kind, text, recoverable in replies:
            try:
                got = len(parse(text))
            except ValueError:
                got = 0
            counted = by_kind.setdefault(kind, [0, 0])
            counted[0] += min(got, recoverable)
            counted[1] += recoverable
        total = [sum(v[0] for v in by_kind.values()), sum(v[1] for v in by_kind.values())]
        results[name] = {k: f"{v[0]}/{v[1]}" for k, v in by_kind.items()} | {"all": f"{total[0]}/{total[1]}"}
        print(f"  {name:12s} {results[name]}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["readers", "chunkers", "json"])
    parser.add_argument("--pdf", action="append", default=[], help="another PDF to read (sizes and headings only)")
    parser.add_argument("--html", action="append", default=[], help="another HTML page to read")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    run = {"readers": readers, "chunkers": chunkers, "json": json_repair_bench}[args.what]
    results = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
