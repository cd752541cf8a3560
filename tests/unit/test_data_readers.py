"""Readers: every file type, with its encodings and broken inputs, down to the line, page and heading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import make_pdf, pdf_file

from lmforge.config import DataSpec
from lmforge.data.stage import Prepared, prepare_records
from lmforge.errors import DataError


def prepare(path: Path, **source: Any) -> Prepared:
    """Run the data stage's work (no files written) on one source with default settings."""
    data_keys = {k: source.pop(k) for k in list(source) if k in DataSpec.model_fields}
    spec = DataSpec.model_validate({"sources": [{"path": str(path), **source}], **data_keys})
    prepared = prepare_records(spec, seed=0)
    assert_accounted(prepared)
    return prepared


def assert_accounted(prepared: Prepared) -> None:
    """read == kept + deduplicated + filtered + rejected per source, and every reject is listed."""
    for counts in prepared.stats.values():
        c = counts.as_dict()
        assert c["read"] == c["kept"] + c["deduplicated"] + sum(c["filtered"].values()) + sum(c["rejected"].values())
    assert len(prepared.rejects) == sum(sum(s.rejected.values()) for s in prepared.stats.values())


def records(prepared: Prepared, split: str = "train") -> list[dict]:
    return prepared.splits.get(split, [])


def only_stats(prepared: Prepared) -> dict[str, Any]:
    (counts,) = prepared.stats.values()
    return counts.as_dict()


def qa(question: str, answer: str) -> str:
    return json.dumps({"question": question, "answer": answer}, ensure_ascii=False)


# ---------------------------------------------------------------- JSON Lines


def test_jsonl_bom_crlf_blank_malformed_and_invalid_utf8_lines(tmp_path):
    lines = [
        b"\xef\xbb\xbf" + qa("What is the fund?", "The Reserve Fund.").encode() + b"\r\n",
        b"\r\n",
        b'{"question": "broken",\r\n',
        qa("Caf\u00e9 hours?", "Nine to five.").encode()[:-20] + b"\xff\xfe" + b'five."}\n',
        qa("Who pays?", "The employer pays.").encode() + b"\n",
        b"[1, 2]\n",
    ]
    path = tmp_path / "qa.jsonl"
    path.write_bytes(b"".join(lines))
    prepared = prepare(path)
    stats = only_stats(prepared)
    assert stats["read"] == 5  # the blank line is not a record
    assert stats["kept"] == 2
    assert stats["rejected"] == {"invalid JSON": 1, "invalid UTF-8": 1, "not an object": 1}
    where = {(r["source"]["line"], r["reason"]) for r in prepared.rejects}
    assert where == {(3, "invalid JSON"), (4, "invalid UTF-8"), (6, "not an object")}
    first = records(prepared)[0]
    assert first["messages"][0]["content"] == "What is the fund?"
    assert first["source"] == {"path": "qa.jsonl", "line": 1}
    assert stats["files"]["qa.jsonl"]["format"] == "qa"


def test_jsonl_latin1_file_is_decoded_as_cp1252(tmp_path):
    path = tmp_path / "legacy.jsonl"
    path.write_bytes(qa("Où est le café ?", "À côté de la gare.").encode("cp1252") + b"\n")
    prepared = prepare(path)
    assert records(prepared)[0]["messages"][1]["content"] == "À côté de la gare."
    assert only_stats(prepared)["files"]["legacy.jsonl"]["encoding"] == "cp1252"


def test_jsonl_huge_line_is_read_and_can_be_filtered(tmp_path):
    huge = "word " * 400_000  # 2 MB on one line
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": huge}) + "\n" + json.dumps({"text": "short text"}) + "\n", encoding="utf-8")
    assert only_stats(prepare(path))["kept"] == 2
    stats = only_stats(prepare(path, filters={"max_chars": 10_000}))
    assert stats["filtered"] == {"too long (characters)": 1}
    assert stats["kept"] == 1


# ---------------------------------------------------------------- JSON


def test_json_array_rows_keep_their_lines(tmp_path):
    rows = [{"instruction": f"Say {i}", "output": f"{i}!"} for i in range(3)]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    prepared = prepare(path)
    assert [r["source"]["line"] for r in records(prepared)] == [2, 6, 10]
    assert only_stats(prepared)["files"]["rows.json"]["format"] == "alpaca"


def test_json_object_of_arrays_and_columnar_and_single_object(tmp_path):
    nested = tmp_path / "nested.json"
    nested.write_text(
        json.dumps({"version": 2, "train": [{"text": "alpha one"}], "extra": [{"text": "beta two"}]}, indent=1),
        encoding="utf-8",
    )
    assert [r["text"] for r in records(prepare(nested))] == ["alpha one", "beta two"]
    assert [r["source"]["line"] for r in records(prepare(nested))] == [4, 9]

    columnar = tmp_path / "columnar.json"
    columnar.write_text(json.dumps({"question": ["Q one?", "Q two?"], "answer": ["A one.", "A two."]}))
    got = records(prepare(columnar))
    assert [r["messages"][1]["content"] for r in got] == ["A one.", "A two."]
    assert got[1]["source"] == {"path": "columnar.json", "row": 2}

    single = tmp_path / "single.json"
    single.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    )
    assert len(records(prepare(single))) == 1


def test_json_truncated_array_keeps_earlier_rows_and_reports_the_rest(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[\n {"text": "first text"},\n {"text": "second text"},\n {"text": "thi', encoding="utf-8")
    prepared = prepare(path)
    assert [r["text"] for r in records(prepared)] == ["first text", "second text"]
    assert prepared.rejects[0]["reason"] == "invalid JSON"
    assert prepared.rejects[0]["source"]["line"] == 4


def test_json_not_json_is_one_reject(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{this is not json", encoding="utf-8")
    prepared = prepare(path)
    assert only_stats(prepared)["rejected"] == {"invalid JSON": 1}


# ---------------------------------------------------------------- CSV / TSV / Parquet


def test_csv_multiline_fields_wrong_columns_and_case_insensitive_headers(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text(
        'Question,Answer\r\n"Two\nlines?",Yes.\r\nonly one column\r\n"Fine?","Fine, thanks."\r\n', encoding="utf-8"
    )
    prepared = prepare(path)
    got = records(prepared)
    assert [r["messages"][0]["content"] for r in got] == ["Two\nlines?", "Fine?"]
    assert [r["source"]["line"] for r in got] == [2, 5]
    assert prepared.rejects == [
        {"source": {"path": "faq.csv", "line": 4}, "reason": "wrong number of columns", "detail": "expected 2, got 1"}
    ]


def test_tsv_latin1_and_a_field_longer_than_the_csv_default_limit(tmp_path):
    path = tmp_path / "faq.tsv"
    long_answer = "très long " * 20_000  # 200 kB, above csv's 128 kB default field limit
    path.write_bytes(f"prompt\tresponse\nQuelle durée ?\t{long_answer}\n".encode("cp1252"))
    got = records(prepare(path))
    assert got[0]["messages"][1]["content"].startswith("très long")
    assert len(got[0]["messages"][1]["content"]) > 190_000


def test_csv_invalid_utf8_row_is_rejected_alone(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes("text\nvalid ü text\n".encode() + b"bad \xff byte\n" + b"fine again\n")
    prepared = prepare(path)
    assert [r["text"] for r in records(prepared)] == ["valid ü text", "fine again"]
    assert prepared.rejects[0]["reason"] == "invalid UTF-8" and prepared.rejects[0]["source"]["line"] == 3


def test_parquet_rows_and_a_damaged_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "P1?", "completion": "C1."}, {"prompt": "P2?", "completion": "C2."}]), path
    )
    got = records(prepare(path))
    assert [r["messages"][1]["content"] for r in got] == ["C1.", "C2."]
    assert got[1]["source"] == {"path": "qa.parquet", "row": 2}

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 definitely not parquet")
    assert only_stats(prepare(broken))["rejected"] == {"unreadable file": 1}


# ---------------------------------------------------------------- Hugging Face datasets


def test_saved_dataset_and_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"question": f"Q{i}?", "answer": f"Answer {i}."} for i in range(3)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    got = records(prepare(tmp_path / "ds"))
    assert len(got) == 3 and got[0]["source"] == {"path": "ds", "row": 1}

    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert len(records(prepare(tmp_path / "dd"))) == 3  # train by default
    assert len(records(prepare(tmp_path / "dd", dataset_split="test"))) == 1
    with pytest.raises(DataError, match="splits"):
        prepare(tmp_path / "dd", dataset_split="validation")


def test_hub_dataset_offline_fails_fast_and_says_how_to_work_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = DataSpec.model_validate({"sources": [{"path": "hf://org/some-dataset"}]})
    with pytest.raises(DataError, match="save_to_disk"):
        prepare_records(spec, seed=0)


# ---------------------------------------------------------------- documents


MARKDOWN = """# Code

Preamble paragraph.

## Article 1

First paragraph
continues here.

```
# not a heading
```

## Article 2
### Definitions

Text of article two.
"""


def test_markdown_sections_carry_heading_path_and_line(tmp_path):
    path = tmp_path / "code.md"
    path.write_text(MARKDOWN, encoding="utf-8")
    got = records(prepare(path))
    assert [(r["source"]["line"], r["source"]["heading"]) for r in got] == [
        (1, "Code"),
        (5, "Code > Article 1"),
        (14, "Code > Article 2 > Definitions"),
    ]
    assert got[1]["text"] == "## Article 1\n\nFirst paragraph\ncontinues here.\n\n```\n# not a heading\n```"
    assert got[2]["text"].startswith("## Article 2\n\n### Definitions\n\nText")


def test_text_units_line_and_document(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\nsecond line\n\n\nthird line\n", encoding="utf-8")
    by_line = records(prepare(path, unit="line"))
    assert [(r["text"], r["source"]["line"]) for r in by_line] == [
        ("first line", 1),
        ("second line", 2),
        ("third line", 5),
    ]
    whole = records(prepare(path, unit="document"))
    assert [r["text"] for r in whole] == ["first line\nsecond line\n\nthird line"]


def test_long_sections_are_chunked_with_their_start_lines(tmp_path):
    paragraphs = [f"Paragraph {i}. " + "Some words here. " * 30 for i in range(6)]  # ~520 chars each
    path = tmp_path / "long.md"
    path.write_text("# Long\n\n" + "\n\n".join(paragraphs) + "\n", encoding="utf-8")
    got = records(prepare(path, chunk_chars=1200))
    assert len(got) >= 3
    assert all(len(r["text"]) <= 1200 for r in got)
    assert got[0]["source"]["line"] == 1
    assert [r["source"]["line"] for r in got[1:]] == sorted(r["source"]["line"] for r in got[1:])
    assert all(r["source"]["heading"] == "Long" for r in got)
    joined = " ".join(r["text"] for r in got)
    assert all(p.split(".")[0] in joined for p in paragraphs)


HTML = """<!doctype html>
<html><head><title>T</title><style>body {color: red}</style></head>
<body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<header>Site banner</header>
<main>
<h1>Pension rules</h1>
<p>The pension age is <b>64</b>.</p>
<script>var tracking = 1;</script>
<h2>Early retirement</h2>
<p>Possible from 61,<br>with a reduction.</p>
<ul><li>Item one</li><li>Item two</li></ul>
</main>
<footer>Copyright</footer>
</body></html>
"""


def test_html_main_text_without_navigation_or_scripts(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(HTML, encoding="utf-8")
    got = records(prepare(path))
    text = "\n".join(r["text"] for r in got)
    for junk in ("Home", "Site banner", "tracking", "Copyright", "color: red"):
        assert junk not in text
    assert got[0]["text"] == "# Pension rules\n\nThe pension age is 64."
    assert got[0]["source"] == {"path": "page.html", "line": 7, "heading": "Pension rules"}
    assert got[1]["source"]["heading"] == "Pension rules > Early retirement"
    assert "Possible from 61,\nwith a reduction." in got[1]["text"]
    assert "Item one\n\nItem two" in got[1]["text"]


def test_pdf_pages_are_kept_and_a_page_without_text_is_reported(tmp_path):
    path = make_pdf(
        tmp_path / "code.pdf", ["Article 1\nThe fund pays pensions.", None, "Article 2\nAppeals (within 45 days)."]
    )
    prepared = prepare(path)
    got = records(prepared)
    assert [r["source"]["page"] for r in got] == [1, 3]
    assert "The fund pays pensions." in got[0]["text"]
    assert "Appeals (within 45 days)." in got[1]["text"]
    report = only_stats(prepared)["files"]["code.pdf"]
    assert report["kind"] == "pdf" and "[2]" in report["warnings"][0]


def test_scanned_pdf_is_rejected_with_an_ocr_hint_not_crashed_on(tmp_path):
    prepared = prepare(make_pdf(tmp_path / "scan.pdf", [None, None]))
    assert only_stats(prepared)["rejected"] == {"no text layer": 1}
    assert "OCR" in prepared.rejects[0]["detail"]
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"%PDF-1.4 this is not really a pdf")
    assert only_stats(prepare(garbage))["rejected"] == {"unreadable file": 1}


def make_layout_pdf(path: Path, pages: list[list[tuple[int, str]]]) -> Path:
    """A PDF whose pages hold ``(font size, line)`` pairs top-down, each page with a running header and a
    page number at its foot, as typeset manuals have."""
    streams = []
    for i, lines in enumerate(pages):
        shown, y = ["BT /F1 9 Tf 72 760 Td (The Kestrian Code, annotated) Tj ET"], 720
        for size, line in lines:
            shown.append(f"BT /F1 {size} Tf 72 {y} Td ({line}) Tj ET")
            y -= size + 14
        shown.append(f"BT /F1 9 Tf 300 40 Td (Page {i + 1}) Tj ET")
        stream = "\n".join(shown).encode("latin-1")
        streams.append(stream)
    path.write_bytes(pdf_file(streams))
    return path


LAYOUT_PAGES = [
    [(20, "Article 1"), (11, "The fund pays old-age pensions."), (20, "Article 2"), (11, "Appeals go to the board.")],
    [(20, "Article 3"), (11, "Sickness benefit starts on day four.")],
    [(20, "Article 4"), (11, "The board meets every month.")],
]


@pytest.mark.parametrize("reader", ["pdfium", "pymupdf4llm"])
def test_pdf_running_headers_and_page_numbers_are_dropped(tmp_path, reader):
    got = records(prepare(make_layout_pdf(tmp_path / "code.pdf", LAYOUT_PAGES), pdf_reader=reader))
    text = "\n".join(r["text"] for r in got)
    assert "Kestrian Code, annotated" not in text and "Page 2" not in text
    for line in ("The fund pays old-age pensions.", "Appeals go to the board.", "The board meets every month."):
        assert line in text


def test_the_layout_pdf_reader_finds_headings_and_sections_within_a_page(tmp_path):
    from lmforge.rag.chunk import document_key

    got = records(prepare(make_layout_pdf(tmp_path / "code.pdf", LAYOUT_PAGES), pdf_reader="pymupdf4llm"))
    headings = [r["source"].get("heading") for r in got]
    assert headings == ["Article 1", "Article 2", "Article 3", "Article 4"]
    assert [r["source"]["page"] for r in got] == [1, 1, 2, 3]
    assert "Appeals go to the board." in got[1]["text"] and "pensions" not in got[1]["text"]
    assert len({document_key(r) for r in got}) == len(got)  # two sections of page 1: two index documents
    plain = records(prepare(make_layout_pdf(tmp_path / "plain.pdf", LAYOUT_PAGES)))  # pdfium: a page each
    assert [r["source"]["page"] for r in plain] == [1, 2, 3] and "heading" not in plain[0]["source"]


def test_running_lines_need_most_pages_and_only_leave_the_page_edges():
    from lmforge.data.documents import without_running_lines

    pages = [f"Manual v2\nArticle {n}\nBody {n} says Manual v2 matters.\nPage {n} of 4" for n in range(1, 5)]
    kept = without_running_lines(pages)
    assert kept[0] == "Article 1\nBody 1 says Manual v2 matters."  # numbered headings differ: kept
    assert without_running_lines(pages[:2]) == pages[:2]  # two pages: nothing is "running" yet
    once = ["Preface\nText a.", "Chapter\nText b.", "Index\nText c."]
    assert without_running_lines(once) == once
    # A header that carries the page number (texinfo manuals), on the pages of one chapter only.
    pages = ["Preface\nBody a.", *[f"Chapter 2: Setup {n + 5}\nBody {n}.\nMore {n}." for n in range(1, 5)]]
    assert without_running_lines(pages)[1:] == [f"Body {n}.\nMore {n}." for n in range(1, 5)]
    # ... also when the printed number equals the page's index (no offset).
    pages = [f"Chapter 3: Use {n}\nBody {n}." for n in range(4)]
    assert without_running_lines(pages) == [f"Body {n}." for n in range(4)]
    # ... or prints it on a line of its own, above the number.
    pages = ["Preface\nBody a.", "Intro\nBody b.", *[f"Chapter 2: Setup\n{n}\nBody {n}.\nMore {n}." for n in range(3)]]
    assert without_running_lines(pages)[2:] == [f"Body {n}.\nMore {n}." for n in range(3)]


def test_the_layout_pdf_reader_must_be_installed_to_be_chosen(monkeypatch):
    import importlib.util

    from pydantic import ValidationError

    from lmforge.config import SourceSpec

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pymupdf4llm" else real(name, *a))
    with pytest.raises(ValidationError, match=r"lmforge\[pdf\]"):
        SourceSpec.model_validate({"path": "a.pdf", "pdf_reader": "pymupdf4llm"})


def test_docx_headings_paragraphs_and_tables(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("Benefits", level=1)
    document.add_paragraph("Sickness benefit is paid from day four.")
    document.add_heading("Rates", level=2)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Benefit", "Rate"
    table.cell(1, 0).text, table.cell(1, 1).text = "Sickness", "70%"
    path = tmp_path / "guide.docx"
    document.save(str(path))
    got = records(prepare(path))
    assert [r["source"]["heading"] for r in got] == ["Benefits", "Benefits > Rates"]
    assert got[0]["text"] == "# Benefits\n\nSickness benefit is paid from day four."
    assert "Benefit | Rate\nSickness | 70%" in got[1]["text"]
    assert got[1]["source"]["line"] == 3  # paragraph number

    broken = tmp_path / "broken.docx"
    broken.write_bytes(b"PK\x03\x04 not a zip")
    assert only_stats(prepare(broken))["rejected"] == {"unreadable file": 1}


def test_folder_skips_unsupported_files_and_lists_them(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nAlpha text.\n", encoding="utf-8")
    (tmp_path / "docs" / "logo.png").write_bytes(b"\x89PNG")
    prepared = prepare(tmp_path / "docs")
    assert len(records(prepared)) == 1
    assert only_stats(prepared)["skipped_files"] == ["logo.png"]
    # named directly, an unsupported file is a reject, not a silent skip
    assert only_stats(prepare(tmp_path / "docs" / "logo.png"))["rejected"] == {"unsupported file type": 1}


def test_document_with_invalid_utf8_is_kept_with_a_warning_per_line(tmp_path):
    path = tmp_path / "notes.md"
    path.write_bytes("# Notes\n\nGood line with ü.\n".encode() + b"Bad \xff line.\n")
    prepared = prepare(path)
    assert "Bad \ufffd line." in records(prepared)[0]["text"]
    assert only_stats(prepared)["files"]["notes.md"]["warnings"] == ["line 4: invalid UTF-8 bytes replaced with U+FFFD"]
