"""Fuzzing the data stage: generated files of every type, rows and texts never crash it, and every input is
accounted for.

Each property runs in two tiers: ``fast`` (30 examples, in the default test run) and ``slow``
(``pytest -m slow``: ``SLOW_EXAMPLES`` each, over 10,000 cases in all). Every generated file goes
through :func:`prepare_records`, which must not raise, must keep ``read == kept + deduplicated +
filtered + rejected``, and must hand over only records and rejects that can be written as strict
JSON (``allow_nan=False``) in UTF-8. The rows, the format detector and the cleaner are fuzzed on
their own too.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.config import CleanSpec, ColumnMap, DataSpec, FilterSpec
from lmforge.data import clean, formats
from lmforge.data.stage import Prepared, prepare_records
from lmforge.errors import DataError
from lmforge.records import chat_record, record_problem, text_record

pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")  # unicode_escape on junk

FAST_EXAMPLES = 30
SLOW_EXAMPLES = 1200
TIERS = [
    pytest.param(FAST_EXAMPLES, id="fast"),
    pytest.param(SLOW_EXAMPLES, id="slow", marks=pytest.mark.slow),
]


def run_property(examples: int, strategy: st.SearchStrategy, check: Callable[[Any], None]) -> None:
    """Run ``check`` on ``examples`` values drawn from ``strategy`` (no deadline: the machine is shared)."""
    tier = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )

    def body(value: Any) -> None:
        check(value)

    tier(given(strategy)(body))()


# ---------------------------------------------------------------- building blocks

# Every character, lone surrogates included (JSON can carry them as \ud800 escapes).
any_char = st.characters(exclude_categories=())
texts = st.text(any_char, max_size=40) | st.text(max_size=40) | st.sampled_from(["", " ", "nan", "\u2028", "a\r\nb"])
FIELDS = ["instruction", "input", "output", "question", "answer", "prompt", "response", "completion", "text"]
FIELDS += ["messages", "conversations", "system", "role", "content", "from", "value", "meta", "domain", "id", "kind"]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: json.dumps writes NaN / Infinity, which json.loads reads
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | texts, children, max_size=4)
    ),
    max_leaves=12,
)
turns = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "human", "gpt", "tool", "x"]), "content": json_values}
    ),
    max_size=4,
)
rows = st.dictionaries(st.sampled_from(FIELDS) | texts, json_values | turns | texts, max_size=6)
HUGE_INT = "9" * 5000


def encoded(text: str, codec: str) -> bytes:
    """``text`` in ``codec``; lone surrogates become the (invalid) bytes UTF-8 would give them."""
    if codec == "utf-8":
        return text.encode("utf-8", errors="surrogatepass")
    return text.encode(codec, errors="replace")


codecs = st.sampled_from(["utf-8", "utf-8", "utf-8", "cp1252", "utf-16"])
encodings = st.sampled_from(["auto", "auto", "auto", "utf-8", "cp1252", "latin-1", "utf-16", "unicode_escape", "utf-7"])


def prepare_bytes(folder: Path, name: str, content: bytes, **source: Any) -> Prepared:
    """Write one file, prepare it, and check the accounting and that everything handed over is writable."""
    path = folder / name
    path.write_bytes(content)
    chunk_chars = source.pop("chunk_chars", 4000)
    near = source.pop("near", None)
    spec = DataSpec.model_validate(
        {"sources": [{"path": str(path), **source}], "chunk_chars": chunk_chars, "dedup": {"near_threshold": near}}
    )
    prepared = prepare_records(spec, seed=0)
    assert_accounted(prepared)
    return prepared


def assert_accounted(prepared: Prepared) -> None:
    """``read == kept + deduplicated + filtered + rejected``; rejects listed; records canonical and writable."""
    (stats,) = prepared.stats.values()
    counts = stats.as_dict()
    filtered, rejected = sum(counts["filtered"].values()), sum(counts["rejected"].values())
    assert counts["read"] == counts["kept"] + counts["deduplicated"] + filtered + rejected, counts
    assert len(prepared.rejects) == rejected
    assert sum(len(records) for records in prepared.splits.values()) == counts["kept"]
    for reject in prepared.rejects:
        assert reject["reason"] and reject["source"]["path"], reject
        json.dumps(reject, ensure_ascii=False, allow_nan=False).encode("utf-8")
    for records in prepared.splits.values():
        for record in records:
            assert record_problem(record) is None, record
            json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8")


# ---------------------------------------------------------------- JSON Lines and JSON


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    """Lines of rows (ASCII-escaped or raw, with NaN, huge integers, surrogates), junk and raw bytes."""
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["row", "row", "row", "value", "huge", "junk", "bytes", "blank"]))
        if kind in ("row", "value"):
            value = draw(rows if kind == "row" else json_values)
            lines.append(encoded(json.dumps(value, ensure_ascii=draw(st.booleans())), draw(codecs)))
        elif kind == "huge":
            lines.append(f'{{"question": "How many?", "answer": {HUGE_INT}}}'.encode())
        elif kind == "junk":
            lines.append(encoded(draw(texts), "utf-8"))
        elif kind == "bytes":
            lines.append(draw(st.binary(max_size=40)))
        else:
            lines.append(b"  ")
    bom = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf"]))
    return bom + draw(st.sampled_from([b"\n", b"\r\n"])).join(lines)


@st.composite
def json_files(draw: st.DrawFn) -> bytes:
    """Arrays of rows, objects of splits (some values not rows), columnar objects, single rows, any JSON,
    sometimes cut short or holding a huge integer."""
    shape = draw(st.sampled_from(["array", "splits", "columns", "row", "any"]))
    if shape == "array":
        value: Any = draw(st.lists(rows | json_values, max_size=8))
    elif shape == "splits":
        value = draw(st.dictionaries(texts, st.lists(rows, max_size=4) | json_values, min_size=1, max_size=4))
    elif shape == "columns":
        size = draw(st.integers(1, 4))
        value = draw(st.dictionaries(st.sampled_from(FIELDS), st.lists(json_scalars, min_size=size, max_size=size)))
    else:
        value = draw(rows if shape == "row" else json_values)
    text = json.dumps(value, indent=draw(st.sampled_from([None, 1])), ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = draw(st.sampled_from([text[:at], text[:at] + HUGE_INT + text[at:], text[:at] + "\n" + text[at:]]))
    return encoded(text, draw(codecs))


@pytest.mark.parametrize("examples", TIERS)
def test_fuzz_jsonl_files(tmp_path, examples):
    strategy = st.tuples(jsonl_files(), encodings)
    run_property(examples, strategy, lambda case: prepare_bytes(tmp_path, "rows.jsonl", case[0], encoding=case[1]))


@pytest.mark.parametrize("examples", TIERS)
def test_fuzz_json_files(tmp_path, examples):
    strategy = st.tuples(json_files(), encodings)
    run_property(examples, strategy, lambda case: prepare_bytes(tmp_path, "rows.json", case[0], encoding=case[1]))


# ---------------------------------------------------------------- CSV and TSV

cells = texts | st.sampled_from(['"', '""', ",", "\t", "\n", "\r", "\x00", "a,b", 'say "hi"']) | st.just(HUGE_INT)


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """Header and rows of odd cells (quotes, delimiters, newlines, NULs), blank lines first, any encoding,
    sometimes with raw bytes appended."""
    suffix = draw(st.sampled_from([".csv", ".tsv"]))
    buffer = io.StringIO()
    buffer.write("\n" * draw(st.integers(0, 2)))
    writer = csv.writer(buffer, delimiter="\t" if suffix == ".tsv" else ",")
    writer.writerow(draw(st.lists(st.sampled_from(FIELDS) | texts, min_size=1, max_size=4)))
    writer.writerows(draw(st.lists(st.lists(cells, max_size=5), max_size=8)))
    content = encoded(buffer.getvalue(), draw(codecs))
    return suffix, content + draw(st.sampled_from([b"", b"", b"\xe9\xff\n", b'"unclosed']))


@pytest.mark.parametrize("examples", TIERS)
def test_fuzz_csv_and_tsv_files(tmp_path, examples):
    strategy = st.tuples(csv_files(), encodings)
    run_property(
        examples, strategy, lambda case: prepare_bytes(tmp_path, f"rows{case[0][0]}", case[0][1], encoding=case[1])
    )


# ---------------------------------------------------------------- Parquet


def _arrow_columns() -> dict[str, tuple[Any, st.SearchStrategy]]:
    """Arrow type -> a strategy for its Python values (None allowed everywhere)."""
    import pyarrow as pa

    plain_text = st.text(max_size=30)  # Arrow strings are valid UTF-8: no lone surrogates
    return {
        "string": (pa.string(), plain_text),
        "int": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
        "float": (pa.float64(), st.floats()),
        "bool": (pa.bool_(), st.booleans()),
        "timestamp": (pa.timestamp("us", tz="UTC"), st.datetimes(timezones=st.just(datetime.UTC))),
        "naive-timestamp": (pa.timestamp("ms"), st.datetimes()),
        "date": (pa.date32(), st.dates()),
        "time": (pa.time64("us"), st.times()),
        "duration": (pa.duration("s"), st.timedeltas(min_value=datetime.timedelta(days=-9999))),
        "binary": (pa.binary(), st.binary(max_size=20)),
        "decimal": (pa.decimal128(12, 3), st.decimals(allow_nan=False, allow_infinity=False, places=3).filter(
            lambda d: abs(d) < 10**8
        )),
        "list": (pa.list_(pa.string()), st.lists(plain_text, max_size=3)),
        "struct": (
            pa.struct([("a", pa.string()), ("b", pa.float64())]),
            st.fixed_dictionaries({"a": plain_text, "b": st.floats()}),
        ),
        "map": (pa.map_(pa.string(), pa.int64()), st.dictionaries(plain_text, st.integers(0, 9), max_size=2).map(
            lambda d: list(d.items())
        )),
    }  # fmt: skip


@st.composite
def parquet_files(draw: st.DrawFn) -> tuple[bytes, dict[str, Any] | None]:
    """Tables with columns named like the formats' fields, of every Arrow type (a ``meta`` struct of them
    too), sometimes damaged; and a column mapping that carries some of them into ``meta``, or None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = _arrow_columns()
    size = draw(st.integers(0, 6))
    name = st.sampled_from(FIELDS) | st.text(min_size=1, max_size=8)
    names = draw(st.lists(name, min_size=1, max_size=5, unique=True))
    columns = {}
    for name in names:
        arrow_type, values = kinds[draw(st.sampled_from(sorted(kinds)))]
        columns[name] = pa.array(draw(st.lists(st.none() | values, min_size=size, max_size=size)), arrow_type)
    if draw(st.booleans()):  # a meta struct whose fields have every Arrow type
        fields = draw(st.lists(st.sampled_from(sorted(kinds)), min_size=1, max_size=6, unique=True))
        struct = pa.struct([(kind, kinds[kind][0]) for kind in fields])
        members = st.fixed_dictionaries({kind: st.none() | kinds[kind][1] for kind in fields})
        columns["meta"] = pa.array(draw(st.lists(members, min_size=size, max_size=size)), struct)
    mapping = None
    if draw(st.booleans()):  # rows that convert, so every column type reaches a record's meta
        others = st.lists(st.sampled_from(sorted(columns)), unique=True)
        mapping = {"user": "lmforge-q", "assistant": "lmforge-a", "meta": draw(others)}
        words = st.text("abcdefghij ", min_size=1, max_size=20)
        for name in ("lmforge-q", "lmforge-a"):
            columns[name] = pa.array(draw(st.lists(words, min_size=size, max_size=size)), pa.string())
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer, row_group_size=draw(st.sampled_from([2, 1000])))
    return damaged(draw, buffer.getvalue()), mapping


def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` as it is, cut short, or with a stretch of it overwritten (a damaged download or disk)."""
    how = draw(st.sampled_from(["intact", "intact", "cut", "overwrite"]))
    if how == "intact" or not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if how == "cut":
        return data[:at]
    return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at + 64 :]


@pytest.mark.parametrize("examples", TIERS)
def test_fuzz_parquet_files(tmp_path, examples):
    def check(case: tuple[bytes, dict[str, Any] | None]) -> None:
        content, mapping = case
        prepare_bytes(tmp_path, "rows.parquet", content, **({"columns": mapping} if mapping else {}))

    run_property(examples, parquet_files(), check)


# ---------------------------------------------------------------- Markdown, text, HTML

MARKUP = [
    "# ", "## ", "###### ", "#", "\n", "\n\n", "```", "~~~", "> ", "- ", "1. ", "| a | b |\n|---|---|", "***",
    "<h1>", "</h1>", "<h3>", "<p>", "</p>", "<main>", "<nav>", "<script>", "</script>", "<pre>", "<br>", "<table>",
    "<td>", "<div aria-hidden='true'>", "&#xD800;", "&amp;", "<!--", "-->", "<![CDATA[", "]]>", ". ", "? ", "\r\n",
]  # fmt: skip
words = st.sampled_from(
    ["Article", "pension", "fund", "Kestria", "15", "years", "é", "日本", "\u200b", "\x00", "\ud800"]
)


@st.composite
def document_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """Markdown, text or HTML made of structural tokens, words and odd characters, in some encoding."""
    suffix = draw(st.sampled_from([".md", ".txt", ".html"]))
    pieces = draw(st.lists(st.sampled_from(MARKUP) | words | texts, max_size=60))
    text = " ".join(pieces) if draw(st.booleans()) else "".join(pieces)
    return suffix, encoded(text * draw(st.sampled_from([1, 1, 1, 40])), draw(codecs))


@pytest.mark.parametrize("examples", TIERS)
def test_fuzz_markdown_text_and_html_files(tmp_path, examples):
    options = st.fixed_dictionaries(
        {
            "unit": st.sampled_from(["section", "line", "document"]),
            "chunk_chars": st.sampled_from([200, 500, 4000]),
            "encoding": encodings,
            "near": st.sampled_from([None, 0.8]),
        }
    )

    def check(case: tuple[tuple[str, bytes], dict[str, Any]]) -> None:
        (suffix, content), source = case
        prepare_bytes(tmp_path, f"doc{suffix}", content, **source)

    run_property(examples, st.tuples(document_files(), options), check)


# ---------------------------------------------------------------- DOCX and PDF


def _valid_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Benefits", level=1)
    document.add_paragraph("Sickness benefit is paid from day four.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(1, 1).text = "Benefit", "70%"
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _valid_pdf() -> bytes:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument.new()
    pdf.new_page(200, 200)
    buffer = io.BytesIO()
    pdf.save(buffer)
    return buffer.getvalue()


@st.composite
def container_files(draw: st.DrawFn, valid: dict[str, bytes]) -> tuple[str, bytes]:
    """DOCX and PDF files: random bytes, valid ones damaged, and DOCX packages with a damaged member."""
    suffix = draw(st.sampled_from([".docx", ".pdf"]))
    how = draw(st.sampled_from(["random", "damaged", "damaged", "member"]))
    if how == "random":
        start = draw(st.sampled_from([b"", b"PK\x03\x04", b"%PDF-1.4\n"]))
        return suffix, start + draw(st.binary(max_size=2000))
    if how == "damaged" or suffix == ".pdf":
        return suffix, damaged(draw, valid[suffix])
    package = zipfile.ZipFile(io.BytesIO(valid[".docx"]))
    member = draw(st.sampled_from(package.namelist()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for name in package.namelist():
            target.writestr(name, damaged(draw, package.read(name)) if name == member else package.read(name))
    return suffix, out.getvalue()


@pytest.mark.parametrize("examples", TIERS)
def test_fuzz_docx_and_pdf_files(tmp_path, examples):
    valid = {".docx": _valid_docx(), ".pdf": _valid_pdf()}

    def check(case: tuple[str, bytes]) -> None:
        suffix, content = case
        prepare_bytes(tmp_path, f"doc{suffix}", content)

    run_property(examples, container_files(valid), check)


# ---------------------------------------------------------------- strict mode: a typed error or nothing


@pytest.mark.parametrize("examples", TIERS)
def test_fuzz_strict_mode_raises_only_a_data_error_with_the_file(tmp_path, examples):
    def check(content: bytes) -> None:
        path = tmp_path / "rows.jsonl"
        path.write_bytes(content)
        spec = DataSpec.model_validate({"sources": [{"path": str(path)}], "strict": True})
        try:
            assert_accounted(prepare_records(spec, seed=0))
        except DataError as exc:
            assert exc.path == "rows.jsonl" and str(exc)

    run_property(examples, jsonl_files(), check)


# ---------------------------------------------------------------- rows, the format detector, the cleaner


@pytest.mark.parametrize("examples", TIERS)
def test_fuzz_rows_convert_or_are_rejected_with_a_reason(examples):
    fmts = st.sampled_from([*formats.FORMAT_KEYS, "canonical"])
    mappings = st.none() | st.builds(
        ColumnMap,
        user=st.sampled_from(FIELDS),
        assistant=st.sampled_from(FIELDS),
        meta=st.lists(st.sampled_from(FIELDS)),
    )
    specs = st.tuples(
        st.builds(CleanSpec, whitespace=st.booleans()), st.builds(FilterSpec, min_letter_ratio=st.just(0))
    )

    def check(case: tuple[list[Any], str, ColumnMap | None, tuple[CleanSpec, FilterSpec]]) -> None:
        values, fmt, columns, (clean_spec, filter_spec) = case
        detected = formats.detect_format(values)
        assert detected is None or detected in formats.FORMAT_KEYS or detected == "canonical"
        for value in values:
            try:
                record = formats.to_record(value, detected or fmt, columns, {"path": "rows.jsonl", "line": 1}, None)
            except formats.Rejected as exc:
                assert exc.reason
                continue
            record = clean.clean_record(record, clean_spec)
            if clean.filter_reason(record, filter_spec) is None:  # what the stage hands over: canonical, writable
                assert record_problem(record) is None, record
                json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8")

    run_property(examples, st.tuples(st.lists(rows | json_values, max_size=6), fmts, mappings, specs), check)


huge_texts = st.tuples(st.text(any_char, max_size=30), st.sampled_from([1, 1, 1, 1000, 20_000])).map(
    lambda pair: pair[0] * pair[1]
)
control_texts = st.text(st.characters(codec=None, max_codepoint=0x3000, exclude_categories=()), max_size=200)
# What the cleaner changes, side by side: accents, invisibles, odd and compatibility spaces, ligatures, line ends.
TRICKY = [*"ae \n\t\r", "\u0301", "\u0308", "\u00ad", "\u200b", "\u2060", "\ufeff", "\x00", "\x85", "\u00a0", "\u3000"]
TRICKY += ["\u00a8", "\ufb01", "\uff21", "\u2028", "\u200d", "\ud800"]
tricky_texts = st.text(st.sampled_from(TRICKY), max_size=30)
clean_texts = huge_texts | control_texts | tricky_texts | st.text(any_char, max_size=100)


@pytest.mark.parametrize("examples", TIERS)
def test_fuzz_cleaner_on_any_text(examples):
    clean_specs = st.builds(CleanSpec, unicode=st.sampled_from(["NFC", "NFKC", "none"]), whitespace=st.booleans())
    filter_specs = st.builds(
        FilterSpec,
        min_chars=st.integers(0, 5),
        max_chars=st.none() | st.integers(1, 1000),
        min_letter_ratio=st.floats(0, 1),
    )

    def check(case: tuple[str, str, CleanSpec, FilterSpec]) -> None:
        text, answer, clean_spec, filter_spec = case
        source = {"path": "doc.txt"}
        messages = [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        for record in (text_record(text, source), chat_record(messages, source)):  # type: ignore[arg-type]
            cleaned = clean.clean_record(record, clean_spec)
            assert clean.clean_record(cleaned, clean_spec)["id"] == cleaned["id"]  # cleaning is idempotent
            reason = clean.filter_reason(cleaned, filter_spec)
            assert reason is None or isinstance(reason, str)
        assert 0.0 <= clean.letter_ratio(clean.normalize_text(text, clean_spec)) <= 1.0

    run_property(examples, st.tuples(clean_texts, clean_texts, clean_specs, filter_specs), check)


def test_fuzz_covers_more_than_ten_thousand_cases_in_the_slow_tier():
    slow_properties = [name for name in globals() if name.startswith("test_fuzz_") and "ten_thousand" not in name]
    assert len(slow_properties) * SLOW_EXAMPLES >= 10_000
