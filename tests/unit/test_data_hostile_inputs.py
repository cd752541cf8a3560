"""Inputs that used to crash or hang the data stage: each is now a reject with a reason or a clear DataError."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.config import DataSpec, load_recipe
from lmforge.data import documents
from lmforge.data.inputs import expand_source, files_to_fingerprint
from lmforge.data.stage import Prepared, prepare_records
from lmforge.errors import ConfigError

QA = '{"question": "What is the qualifying period?", "answer": "Fifteen years."}\n'


def prepare(path: Path | str, **source: Any) -> Prepared:
    """Prepare one source in memory and check that every record and reject is accounted for and writable."""
    spec = DataSpec.model_validate({"sources": [{"path": str(path), **source}]})
    prepared = prepare_records(spec, seed=0)
    for counts in prepared.stats.values():
        c = counts.as_dict()
        assert c["read"] == c["kept"] + c["deduplicated"] + sum(c["filtered"].values()) + sum(c["rejected"].values())
    assert len(prepared.rejects) == sum(sum(s.rejected.values()) for s in prepared.stats.values())
    for row in [*prepared.rejects, *(r for records in prepared.splits.values() for r in records)]:
        json.dumps(row, ensure_ascii=False, allow_nan=False).encode("utf-8")  # what the stage writes
    return prepared


def only_stats(prepared: Prepared) -> dict[str, Any]:
    (counts,) = prepared.stats.values()
    return counts.as_dict()


def kept(prepared: Prepared) -> list[dict[str, Any]]:
    return prepared.splits.get("train", [])


# ---------------------------------------------------------------- 1. lone surrogates


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json"])
def test_lone_surrogate_is_rejected_as_invalid_unicode_naming_the_field(tmp_path, name):
    bad = '{"question": "Half a pair: \\ud800.", "answer": "Fine."}'
    bad_meta = '{"question": "Meta?", "answer": "Broken meta.", "meta": {"note": ["ok", "\\udfff"]}}'
    lines = [bad, bad_meta, QA.strip()]
    content = "\n".join(lines) if name.endswith(".jsonl") else "[" + ",\n".join(lines) + "]"
    (tmp_path / name).write_text(content, encoding="utf-8")
    prepared = prepare(tmp_path / name)
    assert only_stats(prepared)["rejected"] == {"invalid unicode": 2}
    first, second = prepared.rejects
    assert first["source"]["line"] == 1 and "'question'" in first["detail"] and "U+D800" in first["detail"]
    assert second["source"]["line"] == 2 and "meta.note[1]" in second["detail"]
    assert [r["messages"][1]["content"] for r in kept(prepared)] == ["Fifteen years."]


# ---------------------------------------------------------------- 2. integers past the int-string limit


def test_integer_longer_than_pythons_limit_is_an_invalid_json_line(tmp_path):
    huge = '{"question": "How many?", "answer": ' + "9" * 5000 + "}"
    (tmp_path / "rows.jsonl").write_text(huge + "\n" + QA, encoding="utf-8")
    prepared = prepare(tmp_path / "rows.jsonl")
    assert only_stats(prepared)["rejected"] == {"invalid JSON": 1}
    assert prepared.rejects[0]["source"]["line"] == 1 and "5000 digits" in prepared.rejects[0]["detail"]
    assert len(kept(prepared)) == 1

    # in a JSON array only that row is lost: the rows after it are still read
    rows = [QA.strip(), huge, '{"question": "And after it?", "answer": "Still read."}']
    (tmp_path / "rows.json").write_text("[\n" + ",\n".join(rows) + "\n]", encoding="utf-8")
    prepared = prepare(tmp_path / "rows.json")
    assert only_stats(prepared)["rejected"] == {"invalid JSON": 1} and prepared.rejects[0]["source"]["line"] == 3
    assert [r["messages"][1]["content"] for r in kept(prepared)] == ["Fifteen years.", "Still read."]
    # a whole-file JSON object with one
    (tmp_path / "one.json").write_text(huge, encoding="utf-8")
    assert only_stats(prepare(tmp_path / "one.json"))["rejected"] == {"invalid JSON": 1}


# ---------------------------------------------------------------- 3. damaged containers


def _docx_bytes() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Benefits", level=1)
    document.add_paragraph("Sickness benefit is paid from day four. " * 20)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _rezip(data: bytes, change: dict[str, bytes]) -> bytes:
    """The same zip with some members' contents replaced (stored compressed, with valid CRCs)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for name in source.namelist():
            target.writestr(name, change.get(name, source.read(name)))
    return out.getvalue()


def _broken_deflate(data: bytes, member: str) -> bytes:
    """The zip with garbage in the middle of one member's compressed stream."""
    zipped = bytearray(_rezip(data, {}))
    info = zipfile.ZipFile(io.BytesIO(bytes(zipped))).getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 8
    zipped[start : start + 64] = bytes(64 * [0xA5])
    return bytes(zipped)


def _damaged(kind: str) -> tuple[str, bytes]:
    if kind.startswith("docx"):
        good = _docx_bytes()
        document = zipfile.ZipFile(io.BytesIO(good)).read("word/document.xml")
        styles = zipfile.ZipFile(io.BytesIO(good)).read("word/styles.xml")
        damaged = {
            "docx-not-a-zip": b"This is a text file with a .docx name.",
            "docx-truncated-zip": good[: len(good) // 2],
            "docx-truncated-xml": _rezip(good, {"word/document.xml": document[: len(document) // 2]}),
            "docx-truncated-styles": _rezip(good, {"word/styles.xml": styles[: len(styles) // 2]}),
            "docx-broken-deflate": _broken_deflate(good, "word/document.xml"),
        }
        return "file.docx", damaged[kind]
    if kind == "pdf-truncated":
        import pypdfium2 as pdfium

        pdf = pdfium.PdfDocument.new()
        pdf.new_page(200, 200)
        buffer = io.BytesIO()
        pdf.save(buffer)
        return "file.pdf", buffer.getvalue()[: len(buffer.getvalue()) // 2]
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    rows = [{"question": f"Question {i}?", "answer": f"Answer {i}."} for i in range(500)]
    pq.write_table(pa.Table.from_pylist(rows), buffer, compression="snappy")
    data = buffer.getvalue()
    if kind == "parquet-truncated":
        return "file.parquet", data[: len(data) // 2]
    middle = len(data) // 3  # garbage inside the column chunks, footer intact
    return "file.parquet", data[:middle] + bytes(200 * [0xA5]) + data[middle + 200 :]


@pytest.mark.parametrize(
    "kind",
    [
        "docx-not-a-zip",
        "docx-truncated-zip",
        "docx-truncated-xml",
        "docx-truncated-styles",
        "docx-broken-deflate",
        "pdf-truncated",
        "parquet-truncated",
        "parquet-corrupt-pages",
    ],
)
def test_damaged_container_is_an_unreadable_file_reject(tmp_path, kind):
    name, data = _damaged(kind)
    (tmp_path / name).write_bytes(data)
    prepared = prepare(tmp_path / name)
    assert only_stats(prepared)["rejected"] == {"unreadable file": 1}
    assert prepared.rejects[-1]["source"] == {"path": name} and prepared.rejects[-1]["detail"]


# ---------------------------------------------------------------- 4. non-JSON values and NaN


def test_parquet_values_that_are_not_json_types_become_json_safe(tmp_path):
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    moment = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    answers = pa.array(["At noon.", "nan", None, None], pa.string())
    columns = {
        "question": pa.array(["When?", "Why?", "How?", "Who?"]),
        "answer": answers,
        "at": pa.array([moment] * 4, pa.timestamp("us", tz="UTC")),
        "day": pa.array([datetime.date(2024, 5, 1)] * 4, pa.date32()),
        "blob": pa.array([b"\x00\xffraw"] * 4, pa.binary()),
        "price": pa.array([decimal.Decimal("12.50")] * 4, pa.decimal128(6, 2)),
        "score": pa.array([float("nan"), 1.5, 2.0, float("-inf")], pa.float64()),
    }
    pq.write_table(pa.table(columns), tmp_path / "rows.parquet")
    mapping = {"user": "question", "assistant": "answer", "meta": ["at", "day", "blob", "price", "score"]}
    prepared = prepare(tmp_path / "rows.parquet", columns=mapping)
    first = kept(prepared)[0]
    assert first["meta"] == {
        "at": "2024-05-01T12:30:00+00:00",
        "day": "2024-05-01",
        "blob": base64.b64encode(b"\x00\xffraw").decode(),
        "price": "12.50",
        "score": None,  # NaN: JSON has no such number
    }
    assert only_stats(prepared)["rejected"] == {"missing field": 2}  # the null answers


def test_nan_and_infinity_are_never_texts_nor_written_as_invalid_json(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"question": ["Ratio?", "Limit?", "Fine?"], "answer": [float("nan"), float("inf"), 0.5]}
    pq.write_table(pa.table(rows), tmp_path / "floats.parquet")
    prepared = prepare(tmp_path / "floats.parquet")
    assert only_stats(prepared)["rejected"] == {"invalid number": 2}
    assert "'answer'" in prepared.rejects[0]["detail"]
    assert [r["messages"][1]["content"] for r in kept(prepared)] == ["0.5"]

    # JSON's non-standard NaN / Infinity literals, as answers and inside meta
    lines = [
        '{"question": "Ratio?", "answer": NaN}',
        '{"question": "Max?", "answer": -Infinity}',
        '{"question": "Meta?", "answer": "Kept.", "meta": {"score": NaN, "top": [Infinity, 1]}}',
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines), encoding="utf-8")
    prepared = prepare(tmp_path / "rows.jsonl")
    assert only_stats(prepared)["rejected"] == {"invalid number": 2}
    assert kept(prepared)[0]["meta"] == {"score": None, "top": [None, 1]}


def test_decimal_answers_are_written_out_exactly():
    import decimal

    from lmforge.data import formats

    row = {"question": "Price?", "answer": decimal.Decimal("12.50")}
    record = formats.to_record(row, "qa", None, {"path": "prices.parquet", "row": 1}, None)
    assert record["messages"][1]["content"] == "12.50"


# ---------------------------------------------------------------- 5. glob characters and markup in names


@pytest.mark.parametrize("name", ["a[1].jsonl", "what?.jsonl", "star*.jsonl", "[x]"])
def test_existing_paths_with_glob_characters_are_read_literally(tmp_path, name):
    path = tmp_path / name
    if name == "[x]":  # a folder
        path.mkdir()
        (path / "in[1]").mkdir()
        path = path / "in[1]"
        (path / "qa.jsonl").write_text(QA, encoding="utf-8")
        shown = "in[1]/qa.jsonl"
    else:
        path.write_text(QA, encoding="utf-8")
        shown = name
    prepared = prepare(path)
    assert only_stats(prepared)["read"] == 1 and kept(prepared)[0]["source"]["path"] == shown


def test_a_glob_inside_a_folder_with_brackets_in_its_name(tmp_path):
    folder = tmp_path / "exports [2024]"
    folder.mkdir()
    (folder / "a.jsonl").write_text(QA, encoding="utf-8")
    (folder / "b.jsonl").write_text('{"question": "Other?", "answer": "Yes."}\n', encoding="utf-8")
    prepared = prepare(f"{folder}/*.jsonl")
    assert only_stats(prepared)["read"] == 2
    shown = sorted(r["source"]["path"] for r in kept(prepared))
    assert shown == ["exports [2024]/a.jsonl", "exports [2024]/b.jsonl"]  # as a folder source shows them


def test_file_names_that_are_not_utf8_are_shown_with_escapes_and_written(tmp_path):
    from lmforge.data.stage import stats_document

    folder = tmp_path / "in"
    folder.mkdir()
    (Path(os.fsdecode(bytes(folder) + b"/caf\xe9.jsonl"))).write_text(QA, encoding="utf-8")
    (Path(os.fsdecode(bytes(folder) + b"/notes\xff.xyz"))).write_text("skipped", encoding="utf-8")
    prepared = prepare(folder)
    assert kept(prepared)[0]["source"]["path"] == "in/caf\\xe9.jsonl"
    stats = stats_document(prepared)
    json.dumps(stats, ensure_ascii=False).encode("utf-8")
    assert only_stats(prepared)["skipped_files"] == ["notes\\xff.xyz"]


def test_inspect_table_shows_markup_like_names_as_they_are(tmp_path):
    folder = tmp_path / "in"
    (folder / "[").mkdir(parents=True)
    (folder / "[bold]x[-bold].jsonl").write_text(QA, encoding="utf-8")
    (folder / "[" / "].jsonl").write_text('{"question": "Other?", "answer": "Yes."}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "inspect", str(folder)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "[bold]x[-bold].jsonl" in result.output and "[/].jsonl" in result.output


# ---------------------------------------------------------------- 6. missing paths and non-text codecs


def test_inspect_on_a_missing_path_is_a_clear_error_with_exit_code_2(tmp_path):
    missing = tmp_path / "nowhere" / "qa.jsonl"
    result = CliRunner().invoke(app, ["data", "inspect", str(missing)])
    assert result.exit_code == 2
    assert "no such file or folder" in result.output and str(missing) in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("encoding", ["base64", "zlib", "rot13", "undefined", "idna"])
def test_an_encoding_that_is_not_a_text_codec_is_refused_naming_the_key(tmp_path, encoding):
    """Refused when the recipe is loaded (ConfigError, exit 2), before any file is opened."""
    (tmp_path / "qa.jsonl").write_text(QA, encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: t\nrun_dir: {tmp_path / 'runs'}\nstages: [data]\n"
        f"data:\n  sources:\n    - {{path: qa.jsonl, encoding: {encoding}}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=rf"data\.sources\.0\.encoding: .*{encoding}"):
        load_recipe(recipe)
    result = CliRunner().invoke(app, ["data", "inspect", str(recipe)])
    assert result.exit_code == 2 and "encoding" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- 7. devices, endless streams, cycles

_READ_IN_A_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a reader that slurps /dev/zero dies, not the machine
from lmforge.config import DataSpec
from lmforge.data.stage import prepare_records
from lmforge.data.inputs import expand_source, files_to_fingerprint
spec = DataSpec.model_validate({"sources": [{"path": sys.argv[1]}]})
(stats,) = prepare_records(spec, seed=0).stats.values()
found, _ = expand_source(sys.argv[1])
assert files_to_fingerprint(found) == [p for p in found if p.name == "qa.jsonl"], found
print(json.dumps(stats.as_dict()))
"""


@pytest.mark.timeout(120)
def test_devices_fifos_and_links_to_them_are_refused_not_read(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "qa.jsonl").write_text(QA, encoding="utf-8")
    (folder / "zero.jsonl").symlink_to("/dev/zero")
    (folder / "dangling.jsonl").symlink_to(folder / "gone.jsonl")
    os.mkfifo(folder / "pipe.jsonl")
    for target in (str(folder), "/dev/zero"):
        child = subprocess.run(
            [sys.executable, "-c", _READ_IN_A_CHILD, target], capture_output=True, text=True, timeout=50
        )
        assert child.returncode == 0, child.stderr[-2000:]
        stats = json.loads(child.stdout)
        refused = 1 if target == "/dev/zero" else 3
        assert stats["rejected"] == {"not a regular file": refused} and stats["kept"] == 1 - (refused == 1)


@pytest.mark.timeout(60)
def test_symlink_cycles_are_not_followed_forever_and_each_file_is_read_once(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "qa.jsonl").write_text(QA, encoding="utf-8")
    (folder / "sub" / "more.jsonl").write_text('{"question": "Other?", "answer": "Yes."}\n', encoding="utf-8")
    for name in ("loop", "again"):  # two cycles: following them doubles the paths at every level
        (folder / name).symlink_to(folder, target_is_directory=True)
        (folder / "sub" / name).symlink_to(folder, target_is_directory=True)
    (folder / "alias.jsonl").symlink_to(folder / "qa.jsonl")
    for path in (f"{folder}/**/*.jsonl", f"{folder}/*/*.jsonl", str(folder)):
        found, _ = expand_source(path)
        assert len({p.resolve() for p in found}) == len(found), found
    assert only_stats(prepare(folder))["read"] == 2
    assert only_stats(prepare(f"{folder}/**/*.jsonl"))["read"] == 2


# ---------------------------------------------------------------- 8. pathological documents


def _time_markdown(path: Path, headings: int) -> float:
    path.write_text("# h\n" * headings, encoding="utf-8")
    start = time.perf_counter()
    blocks = documents._markdown_blocks(path.read_text(encoding="utf-8"))
    pieces = list(documents.split_blocks(blocks, "section", 4000))
    assert pieces
    return time.perf_counter() - start


@pytest.mark.timeout(120)
def test_markdown_with_tens_of_thousands_of_headings_stays_linear(tmp_path):
    small = min(_time_markdown(tmp_path / "small.md", 5_000) for _ in range(3))
    large = _time_markdown(tmp_path / "large.md", 50_000)
    # 10x the headings: linear work takes ~10x (0.8 s here); the old quadratic grouping took ~100x (30 s).
    assert large < max(15 * small, 6.0), (small, large)
    stats = only_stats(prepare(tmp_path / "large.md"))
    assert stats["read"] == stats["kept"] + stats["deduplicated"] >= 1


# ---------------------------------------------------------------- 9. CSV, late legacy bytes, JSON splits


def test_csv_starting_with_blank_lines_uses_the_first_non_blank_row_as_header(tmp_path):
    (tmp_path / "qa.csv").write_text("\n\nquestion,answer\nWhat is it?,A pension.\n", encoding="utf-8")
    prepared = prepare(tmp_path / "qa.csv")
    assert only_stats(prepared)["rejected"] == {}
    assert kept(prepared)[0]["messages"][1]["content"] == "A pension."
    assert kept(prepared)[0]["source"]["line"] == 4


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_cp1252_bytes_only_past_the_first_megabyte_are_read_as_cp1252(tmp_path, suffix):
    head = {
        ".jsonl": b'{"question": "Filler question?", "answer": "Filler answer."}\n',
        ".csv": b"Filler question?,Filler answer.\n",
        ".txt": b"Filler paragraph of plain text.\n\n",
    }[suffix]
    tail = {
        ".jsonl": b'{"question": "Caf\xe9?", "answer": "Cr\xe8me br\xfbl\xe9e."}\n',
        ".csv": b"Caf\xe9?,Cr\xe8me br\xfbl\xe9e.\n",
        ".txt": b"Caf\xe9 and Cr\xe8me br\xfbl\xe9e.\n",
    }[suffix]
    start = b"question,answer\n" if suffix == ".csv" else b""
    (tmp_path / f"late{suffix}").write_bytes(start + head * ((1 << 20) // len(head) + 10) + tail)
    prepared = prepare(tmp_path / f"late{suffix}", unit="line")
    stats = only_stats(prepared)
    assert stats["rejected"] == {} and stats["files"][f"late{suffix}"]["encoding"] == "cp1252"
    last = kept(prepared)[-1]
    assert "Crème brûlée." in (last.get("text") or last["messages"][1]["content"])


def test_json_object_of_splits_accounts_for_values_that_are_not_rows(tmp_path):
    rows = [{"question": "What is it?", "answer": "A pension."}, {"question": "And this?", "answer": "A fund."}]
    (tmp_path / "splits.json").write_text(
        json.dumps({"train": rows, "meta": [1, 2], "version": "1.0"}, indent=1), encoding="utf-8"
    )
    prepared = prepare(tmp_path / "splits.json")
    stats = only_stats(prepared)
    assert stats["read"] == 5 and stats["kept"] == 2
    assert stats["rejected"] == {"not an object": 2, "not a list of rows": 1}
    assert "'version'" in prepared.rejects[-1]["detail"]


def test_a_row_with_a_list_of_objects_is_still_one_row(tmp_path):
    row = {"question": "What is it?", "answer": "A pension.", "tags": [{"name": "pensions"}]}
    (tmp_path / "row.json").write_text(json.dumps(row), encoding="utf-8")
    prepared = prepare(tmp_path / "row.json")
    assert only_stats(prepared)["kept"] == 1 and kept(prepared)[0]["messages"][1]["content"] == "A pension."


def test_fingerprinted_files_are_regular_files_only(tmp_path):
    (tmp_path / "qa.jsonl").write_text(QA, encoding="utf-8")
    os.mkfifo(tmp_path / "pipe.jsonl")
    found, _ = expand_source(str(tmp_path))
    assert [p.name for p in found] == ["pipe.jsonl", "qa.jsonl"]
    assert [p.name for p in files_to_fingerprint(found)] == ["qa.jsonl"]
