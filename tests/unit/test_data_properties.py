"""Property-based: random bytes and random JSON into every reader never crash, and every record is accounted for."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.config import DataSpec
from lmforge.data.stage import Prepared, prepare_records

SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".parquet", ".md", ".txt", ".html", ".pdf", ".docx"]
SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
# Rows that look like the known formats, with random (often wrong) field types.
FIELDS = [
    "instruction",
    "input",
    "output",
    "question",
    "answer",
    "prompt",
    "response",
    "completion",
    "text",
    "messages",
    "conversations",
]
FIELDS += ["system", "role", "content", "from", "value", "meta", "domain", "id", "kind"]
format_like_rows = st.dictionaries(st.sampled_from(FIELDS), json_values | st.text(max_size=30), max_size=5)


def prepare_file(name: str, content: bytes, chunk_chars: int = 4000, **options) -> Prepared:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        source = {"path": str(path), **options}
        spec = DataSpec.model_validate(
            {"sources": [source], "chunk_chars": chunk_chars, "dedup": {"near_threshold": 0.8}}
        )
        prepared = prepare_records(spec, seed=0)
    (stats,) = prepared.stats.values()
    counts = stats.as_dict()
    accounted = counts["kept"] + counts["deduplicated"] + sum(counts["filtered"].values())
    assert counts["read"] == accounted + sum(counts["rejected"].values())
    assert len(prepared.rejects) == sum(counts["rejected"].values())
    assert all(r["reason"] and r["source"]["path"] for r in prepared.rejects)
    assert sum(len(records) for records in prepared.splits.values()) == counts["kept"]
    return prepared


@SETTINGS
@given(suffix=st.sampled_from(SUFFIXES), content=st.binary(max_size=2000))
def test_random_bytes_never_crash_any_reader(suffix, content):
    prepare_file(f"random{suffix}", content)


@SETTINGS
@given(suffix=st.sampled_from(SUFFIXES), content=st.binary(max_size=600))
def test_random_bytes_after_a_valid_start_never_crash(suffix, content):
    starts = {".pdf": b"%PDF-1.4\n", ".docx": b"PK\x03\x04", ".parquet": b"PAR1", ".json": b"[", ".html": b"<html>"}
    prepare_file(f"random{suffix}", starts.get(suffix, b"") + content)


@SETTINGS
@given(values=st.lists(json_values | format_like_rows, max_size=12))
def test_random_json_lines_are_each_read_once(values):
    lines = [json.dumps(v) for v in values]
    prepared = prepare_file("rows.jsonl", "\n".join(lines).encode())
    (stats,) = prepared.stats.values()
    assert stats.read == len(values)


@SETTINGS
@given(
    value=st.lists(format_like_rows, max_size=8)
    | json_values
    | st.dictionaries(st.text(max_size=5), st.lists(format_like_rows, max_size=4), max_size=3)
)
def test_random_json_documents_are_accounted_for(value):
    prepare_file("rows.json", json.dumps(value, indent=1).encode())


@SETTINGS
@given(
    rows=st.lists(st.lists(st.text(max_size=20), min_size=1, max_size=4), max_size=10),
    header=st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4),
)
def test_random_csv_rows_are_each_read_once(rows, header):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    prepared = prepare_file("rows.csv", buffer.getvalue().encode())
    (stats,) = prepared.stats.values()
    assert stats.read == sum(any(cell.strip() for cell in row) for row in rows)


@SETTINGS
@given(text=st.text(max_size=3000), unit=st.sampled_from(["section", "line", "document"]))
def test_random_text_documents_keep_every_non_blank_line(text, unit):
    prepared = prepare_file("doc.txt", text.encode("utf-8", errors="surrogatepass"), unit=unit, chunk_chars=200)
    if unit == "line" and not prepared.rejects:
        (stats,) = prepared.stats.values()
        lines = [ln for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if ln.strip()]
        assert stats.read == len(lines)
