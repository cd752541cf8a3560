"""Read inputs (see ``inputs.py`` for which ones a source names) into raw items, each with its location.

A raw item is one unit read from an input: a row of a dataset (a dict, or whatever the JSON held)
or a section of a document (a string), with the file, line, page, row and heading it came from.
An input that cannot be read becomes an item that carries the reason instead of a value, so every
line, row or file is accounted for downstream. Readers never raise on bad content.

Encodings: ``auto`` reads UTF-8 (a BOM is dropped, CRLF is fine) and reports each line with invalid
UTF-8; a file that holds no valid multi-byte UTF-8 but does hold bytes above 0x7F is a legacy 8-bit
file and is read as cp1252 (latin-1 for the five bytes cp1252 leaves undefined), wherever in the
file those bytes are.

Only regular files are read: a device, a FIFO or a broken link is a reject (``not a regular file``),
never opened, since reading ``/dev/zero`` or a pipe would never end. A file that cannot be read at all
(a damaged container, an I/O error) is one reject (``unreadable file``) after whatever was read before.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import SourceSpec
from lmforge.data import documents, formats
from lmforge.data.inputs import SUPPORTED_SUFFIXES, hub_id, is_saved_dataset, not_regular_file
from lmforge.data.textio import (
    BAD_BYTES,
    FileReport,
    UnreadableFile,
    bad_byte_offset,
    decode_text,
    is_legacy_8bit,
)
from lmforge.errors import DataError

SNIFF_BYTES = 1 << 20
PROGRESS_EVERY = 1 << 20
ProgressFn = Callable[[int], None]


@dataclass
class RawItem:
    """One unit read from an input: a value, or the reason it could not be read."""

    source: dict[str, Any]
    """Location: ``path`` and, where known, ``line``, ``page``, ``row`` (1-based) and ``heading``."""
    value: Any = None
    reason: str | None = None
    """Category of the problem (a key of the ``rejected`` counts), None when the item was read."""
    detail: str = ""


# ---------------------------------------------------------------- reading


def read_items(
    file: Path, shown: str, spec: SourceSpec, chunk_chars: int, report: FileReport, progress: ProgressFn | None = None
) -> Iterator[RawItem]:
    """Yield the raw items of one input, choosing the reader by file type.

    A file that cannot be read at all (a device or a FIFO, a damaged container, an undecodable
    encoding, an I/O error) ends as one item with the reason, after the items read before the problem.
    """
    reported = 0

    def advance(count: int) -> None:
        nonlocal reported
        reported += count
        if progress:
            progress(count)

    if hub_id(file):
        yield from _read_hub(hub_id(file), shown, spec)
        return
    problem = None if file.is_dir() else not_regular_file(file)
    if problem:
        yield RawItem({"path": shown}, reason="not a regular file", detail=problem)
        return
    try:
        yield from _read_local(file, shown, spec, chunk_chars, report, advance)
    except UnreadableFile as exc:
        yield RawItem({"path": shown}, reason=exc.reason, detail=exc.detail)
    except OSError as exc:  # a permission problem or an I/O error while reading
        yield RawItem({"path": shown}, reason="unreadable file", detail=f"{type(exc).__name__}: {exc.strerror or exc}")
    if file.is_file():
        advance(file.stat().st_size - reported)


def _read_local(
    file: Path, shown: str, spec: SourceSpec, chunk_chars: int, report: FileReport, advance: ProgressFn
) -> Iterator[RawItem]:
    suffix = file.suffix.lower()
    if is_saved_dataset(file):
        yield from _read_saved_dataset(file, shown, spec)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(file, shown, spec.encoding, report, advance)
    elif suffix == ".json":
        yield from _read_json(file, shown, spec.encoding, report)
    elif suffix in (".csv", ".tsv"):
        yield from _read_csv(file, shown, spec.encoding, report, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        yield from _read_parquet(file, shown)
    elif suffix in documents.DOCUMENT_SUFFIXES:
        blocks = documents.read_blocks(file, spec.encoding, report, spec.pdf_reader)
        for text, where in documents.split_blocks(blocks, spec.unit, chunk_chars):
            yield RawItem({"path": shown, **where}, value=text)
    else:
        expected = ", ".join(sorted(SUPPORTED_SUFFIXES))
        yield RawItem({"path": shown}, reason="unsupported file type", detail=f"{suffix or 'no suffix'}; {expected}")


def sniff_encoding(sample: bytes) -> str:
    """``utf-8`` (or ``utf-16`` with a BOM) unless the sample has invalid UTF-8 and no valid multi-byte UTF-8."""
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":  # the sample cut a character in half
            return "utf-8"
    return "cp1252" if is_legacy_8bit(sample.decode("utf-8", errors="surrogateescape")) else "utf-8"


def _read_jsonl(file: Path, shown: str, encoding: str, report: FileReport, progress: ProgressFn) -> Iterator[RawItem]:
    """JSON Lines, streamed when UTF-8; a legacy 8-bit file (found at its first bad byte) is read as cp1252."""
    report.encoding = sniff_encoding(_head(file)) if encoding == "auto" else encoding
    if report.encoding != "utf-8":
        text, report.encoding = decode_text(file.read_bytes(), report.encoding)
        yield from _json_lines(text, shown, first=1)
        return
    done = 0
    settled = encoding != "auto"  # auto: a bad byte may yet turn out to mean a legacy 8-bit file
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            done += len(raw)
            if done >= PROGRESS_EVERY:
                progress(done)
                done = 0
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if not settled:
                    settled = True
                    position = handle.tell()
                    rest = raw + handle.read()
                    if is_legacy_8bit(rest.decode("utf-8", errors="surrogateescape")):
                        text, report.encoding = decode_text(rest, "cp1252")
                        yield from _json_lines(text, shown, first=number)
                        return
                    handle.seek(position)
                yield RawItem({"path": shown, "line": number}, reason="invalid UTF-8", detail=f"byte {exc.start + 1}")
                continue
            settled = settled or not line.isascii()  # valid multi-byte UTF-8: a UTF-8 file
            if number == 1:
                line = line.removeprefix("\ufeff")
            if line.strip():
                yield _json_line(line, shown, number)


def _json_lines(text: str, shown: str, first: int) -> Iterator[RawItem]:
    """Items of JSON Lines text whose first line is line ``first`` of the file (lines end at ``\\n`` only:
    U+2028 and the like may sit inside JSON strings)."""
    for number, line in enumerate(text.split("\n"), start=first):
        if line.strip():
            yield _json_line(line, shown, number)


def _json_line(line: str, shown: str, number: int) -> RawItem:
    where = {"path": shown, "line": number}
    try:
        return RawItem(where, value=json.loads(line))
    except (ValueError, RecursionError) as exc:
        return RawItem(where, reason="invalid JSON", detail=_json_problem(exc, column=True))


def _json_problem(exc: Exception, column: bool = False) -> str:
    """What is wrong with a JSON text, from the exception ``json`` raised."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (column {exc.colno})" if column else exc.msg
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    # ValueError: an integer longer than Python converts (sys.get_int_max_str_digits, 4300 by default)
    return f"a number too long to read ({str(exc).split(';')[0]}); write it as a string"


def _head(file: Path) -> bytes:
    with file.open("rb") as handle:
        return handle.read(SNIFF_BYTES)


_WS = re.compile(r"[ \t\n\r]*")
_LENIENT = json.JSONDecoder(parse_int=len)
"""Finds where a JSON value ends when it holds an integer too long for ``int()`` (its value is not used)."""


def _read_json(file: Path, shown: str, encoding: str, report: FileReport) -> Iterator[RawItem]:
    """A JSON array of rows, an object of arrays of rows, a columnar object (``{col: [values]}``) or one row."""
    text, report.encoding = decode_text(file.read_bytes(), encoding)
    if bad_byte_offset(text) is not None:
        text = BAD_BYTES.sub("\ufffd", text)
        report.warnings.append("invalid UTF-8 bytes replaced with U+FFFD")
    start = _WS.match(text).end()
    if start == len(text):
        report.warnings.append("empty file")
        return
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError) as exc:
        if text[start] == "[":  # keep the rows around the error
            yield from _array_rows(text, start, shown, "")
        elif type(exc) is ValueError and _is_object_of_splits(_lenient_whole(text)):  # a too-long integer
            yield from _object_rows(text, start, shown)
        else:
            line = exc.lineno if isinstance(exc, json.JSONDecodeError) else text.count("\n", 0, start) + 1
            yield RawItem(
                {"path": shown, "line": line}, reason="invalid JSON", detail=f"{_json_problem(exc)} (whole file)"
            )
        return
    if isinstance(whole, list):
        yield from _array_rows(text, start, shown, "")
    elif isinstance(whole, dict) and _is_columnar(whole):
        columns = list(whole)
        for index, values in enumerate(zip(*whole.values(), strict=True), start=1):
            yield RawItem({"path": shown, "row": index}, value=dict(zip(columns, values, strict=True)))
    elif _is_object_of_splits(whole):
        yield from _object_rows(text, start, shown)
    else:
        yield RawItem({"path": shown, "line": text.count("\n", 0, start) + 1}, value=whole)


def _lenient_whole(text: str) -> Any:
    """The JSON value with too-long integers replaced (to learn its shape), or None when it is not valid JSON."""
    try:
        return _LENIENT.decode(text)
    except (ValueError, RecursionError):
        return None


def _lenient_end(text: str, pos: int) -> int | None:
    """Where the JSON value at ``pos`` ends, reading too-long integers leniently; None when it is not valid JSON."""
    try:
        return _LENIENT.raw_decode(text, pos)[1]
    except (ValueError, RecursionError):
        return None


def _is_columnar(obj: dict[str, Any]) -> bool:
    values = list(obj.values())
    if not values or not all(isinstance(v, list) and v for v in values):
        return False
    return len({len(v) for v in values}) == 1 and not any(isinstance(x, (dict, list)) for x in values[0])


def _is_object_of_splits(obj: Any) -> bool:
    """An object whose arrays hold rows (``{"train": [...], "test": [...]}``), not a row that has a list of
    objects in one field (``{"messages": [...]}``, ``{"question": ..., "tags": [{...}]}``)."""
    if not isinstance(obj, dict) or formats.row_format(obj) is not None:
        return False
    return any(isinstance(v, list) and v and all(isinstance(x, dict) for x in v) for v in obj.values())


def _array_rows(text: str, pos: int, shown: str, key: str) -> Iterator[RawItem]:
    """Rows of the JSON array starting at ``text[pos] == '['``, each with its line; stops at the first
    syntax error (a row with a too-long integer is rejected alone)."""
    decoder = json.JSONDecoder()
    line, seen = 1, 0
    pos = _WS.match(text, pos + 1).end()
    if pos < len(text) and text[pos] == "]":
        return
    rest = f"the rest of {key!r}" if key else "the rest of the array"
    while True:
        line += text.count("\n", seen, pos)
        seen = pos
        where: dict[str, Any] = {"path": shown, "line": line}
        try:
            value, end = decoder.raw_decode(text, pos)
            yield RawItem(where, value=value)
        except (ValueError, RecursionError) as exc:
            # a too-long integer in valid JSON costs only its row; after a syntax error the row's end is unknown
            skip_to = _lenient_end(text, pos) if type(exc) is ValueError else None
            if skip_to is None:
                yield RawItem(where, reason="invalid JSON", detail=f"{_json_problem(exc)}; {rest} is unread")
                return
            yield RawItem(where, reason="invalid JSON", detail=_json_problem(exc))
            end = skip_to
        pos = _WS.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
            continue
        if pos < len(text) and text[pos] == "]":
            return
        yield RawItem(where, reason="invalid JSON", detail=f"expected ',' or ']' after this row; {rest} is unread")
        return


def _object_rows(text: str, pos: int, shown: str) -> Iterator[RawItem]:
    """Rows of every array in the (valid) JSON object of splits starting at ``text[pos] == '{'``; a key whose
    value is not an array is one reject (``not a list of rows``), so nothing in the file goes unaccounted."""
    pos = _WS.match(text, pos + 1).end()
    while pos < len(text) and text[pos] != "}":
        key, pos = _LENIENT.raw_decode(text, pos)
        pos = _WS.match(text, pos).end() + 1  # past ':'
        pos = _WS.match(text, pos).end()
        value, end = _LENIENT.raw_decode(text, pos)
        if isinstance(value, list):
            yield from _array_rows(text, pos, shown, key)
        else:
            where = {"path": shown, "line": text.count("\n", 0, pos) + 1}
            detail = f"key {key!r} holds {_json_type(value)}; the other keys hold arrays of rows"
            yield RawItem(where, reason="not a list of rows", detail=detail)
        pos = _WS.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def _read_csv(file: Path, shown: str, encoding: str, report: FileReport, delimiter: str) -> Iterator[RawItem]:
    """A header row (the first row that is not blank), then one row per record."""
    text, report.encoding = decode_text(file.read_bytes(), encoding)
    # The default 128 KiB field limit would turn one long text into a crash; a row may be as long as the file.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield RawItem({"path": shown, "line": start}, reason="invalid CSV", detail=f"{exc}; the rest is unread")
            return
        where = {"path": shown, "line": start}
        start = reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [name.strip() for name in row]
            continue
        offset = bad_byte_offset(delimiter.join(row))
        if offset is not None:
            yield RawItem(where, reason="invalid UTF-8", detail=f"character {offset} of the row")
        elif len(row) != len(header):
            yield RawItem(where, reason="wrong number of columns", detail=f"expected {len(header)}, got {len(row)}")
        else:
            yield RawItem(where, value=dict(zip(header, row, strict=True)))


def _read_parquet(file: Path, shown: str) -> Iterator[RawItem]:
    """Every row, in batches; a damaged file ends with one ``unreadable file`` item after the rows read before."""
    import pyarrow.parquet as pq

    row = 0
    try:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=4096):
            values = batch.to_pylist()
            for value in values:
                row += 1
                yield RawItem({"path": shown, "row": row}, value=value)
    except Exception as exc:  # pyarrow raises many types (ArrowInvalid, OSError, OverflowError...) on damage
        where = f" after row {row}" if row else ""
        detail = f"not a readable Parquet file{where}: {type(exc).__name__}: {exc}"
        yield RawItem({"path": shown}, reason="unreadable file", detail=detail)


def _pick_split(dataset: Any, wanted: str | None, shown: str) -> Any:
    """One split of a DatasetDict: the one asked for, its only split, or ``train``."""
    if not hasattr(dataset, "keys"):
        return dataset
    names = sorted(dataset.keys())
    chosen = wanted or (names[0] if len(names) == 1 else "train")
    if chosen not in names:
        raise DataError(
            f"the dataset has splits {names}, not {chosen!r}", path=shown, hint="set dataset_split on this source"
        )
    return dataset[chosen]


def _read_saved_dataset(folder: Path, shown: str, spec: SourceSpec) -> Iterator[RawItem]:
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(folder))
    except Exception as exc:  # datasets raises many types for a damaged folder
        yield RawItem({"path": shown}, reason="unreadable file", detail=f"load_from_disk failed: {exc}")
        return
    for row, value in enumerate(_pick_split(dataset, spec.dataset_split, shown), start=1):
        yield RawItem({"path": shown, "row": row}, value=value)


def _read_hub(dataset_id: str, shown: str, spec: SourceSpec) -> Iterator[RawItem]:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    offline = any(os.environ.get(flag, "").lower() in ("1", "true", "yes") for flag in flags)
    if not offline:
        from lmforge.models import hub_reachable

        offline = not hub_reachable()
    if offline:
        raise DataError(
            f"the source names the hub dataset {dataset_id!r}, but the Hugging Face Hub cannot be reached",
            path=shown,
            hint="on a machine with network run datasets.load_dataset(ID).save_to_disk(FOLDER), copy FOLDER here "
            "and use it as the source path",
        )
    from datasets import load_dataset

    dataset = load_dataset(dataset_id, split=spec.dataset_split or "train")
    for row, value in enumerate(dataset, start=1):
        yield RawItem({"path": shown, "row": row}, value=value)
