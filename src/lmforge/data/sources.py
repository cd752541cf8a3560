"""Expand recipe sources into files and read them into raw items, each with its location.

A raw item is one unit read from an input: a row of a dataset (a dict, or whatever the JSON held)
or a section of a document (a string), with the file, line, page, row and heading it came from.
An input that cannot be read becomes an item that carries the reason instead of a value, so every
line, row or file is accounted for downstream. Readers never raise on bad content.

Encodings: ``auto`` reads UTF-8 (a BOM is dropped, CRLF is fine) and reports each line with invalid
UTF-8; a file that holds no valid multi-byte UTF-8 but does hold bytes above 0x7F is a legacy 8-bit
file and is read as cp1252 (latin-1 for the five bytes cp1252 leaves undefined).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import HUB_SCHEME, SourceSpec
from lmforge.data import documents
from lmforge.errors import DataError

DATASET_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"}
SUPPORTED_SUFFIXES = DATASET_SUFFIXES | documents.DOCUMENT_SUFFIXES
SNIFF_BYTES = 1 << 20
PROGRESS_EVERY = 1 << 20
_NOT_ASCII_OR_BAD = re.compile("[^\x00-\x7f\udc80-\udcff]")
_BAD_BYTES = re.compile("[\udc80-\udcff]")

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


@dataclass
class FileReport:
    """What reading one file found; shown per file in ``stats.json``."""

    kind: str
    encoding: str | None = None
    format: str | None = None
    items: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "read": self.items}
        if self.encoding:
            out["encoding"] = self.encoding
        if self.format:
            out["format"] = self.format
        if self.warnings:
            out["warnings"] = self.warnings[:20] + ([f"... {len(self.warnings) - 20} more"] * (len(self.warnings) > 20))
        return out


# ---------------------------------------------------------------- finding files


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def hub_id(item: Path) -> str | None:
    """The dataset id when an input names a hub dataset (``hf://org/name``, which Path folds to ``hf:/``)."""
    text = str(item)
    return text.split(":/", 1)[1].lstrip("/") if text.startswith(HUB_SCHEME[:-1]) else None


def expand_source(path: str) -> tuple[list[Path], list[str]]:
    """Inputs named by a source path, sorted, and the files of a folder that were skipped (unsupported).

    A file names itself (whatever its type: an unsupported one is reported when read); a folder names
    its supported files and saved datasets, recursively; a glob names its matching files.
    """
    if path.startswith(HUB_SCHEME):
        return [Path(path)], []
    if any(ch in path for ch in "*?["):
        found = [Path(p) for p in glob.glob(path, recursive=True)]
        return sorted(p for p in found if p.is_file() or is_saved_dataset(p)), []
    root = Path(path)
    if not root.is_dir() or is_saved_dataset(root):
        return [root], []
    inputs: list[Path] = []
    skipped: list[str] = []
    for folder, subdirs, names in os.walk(root):
        here = Path(folder)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for sub in list(subdirs):
            if is_saved_dataset(here / sub):
                inputs.append(here / sub)
                subdirs.remove(sub)
        for name in names:
            if name.startswith("."):
                continue
            file = here / name
            if file.suffix.lower() in SUPPORTED_SUFFIXES:
                inputs.append(file)
            else:
                skipped.append(str(file.relative_to(root)))
    return sorted(inputs), sorted(skipped)


def files_to_fingerprint(inputs: list[Path]) -> list[Path]:
    """The files whose bytes decide a source's content (a saved dataset's files included)."""
    files: list[Path] = []
    for item in inputs:
        if hub_id(item):
            continue
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file()))
        else:
            files.append(item)
    return files


def display_path(file: Path, source_path: str) -> str:
    """A short, machine-independent name: relative to the source folder's parent when inside it."""
    if source_path.startswith(HUB_SCHEME):
        return source_path
    root = Path(source_path)
    if any(ch in source_path for ch in "*?["):
        root = Path(re.split(r"[*?\[]", source_path)[0]).parent
    anchor = root.parent if root.is_dir() or root == file else root
    try:
        return str(file.relative_to(anchor))
    except ValueError:
        return file.name


# ---------------------------------------------------------------- reading


def read_items(
    file: Path, shown: str, spec: SourceSpec, chunk_chars: int, report: FileReport, progress: ProgressFn | None = None
) -> Iterator[RawItem]:
    """Yield the raw items of one input, choosing the reader by file type."""
    reported = 0

    def advance(count: int) -> None:
        nonlocal reported
        reported += count
        if progress:
            progress(count)

    suffix = file.suffix.lower()
    if hub_id(file):
        yield from _read_hub(hub_id(file), shown, spec)
    elif is_saved_dataset(file):
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
        yield from _read_document(file, shown, spec, chunk_chars, report)
    else:
        expected = ", ".join(sorted(SUPPORTED_SUFFIXES))
        yield RawItem({"path": shown}, reason="unsupported file type", detail=f"{suffix or 'no suffix'}; {expected}")
    if not hub_id(file) and file.is_file():
        advance(file.stat().st_size - reported)


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
    text = sample.decode("utf-8", errors="surrogateescape")
    return "utf-8" if _NOT_ASCII_OR_BAD.search(text) else "cp1252"


def decode_text(data: bytes, encoding: str) -> tuple[str, str]:
    """Decode a whole file; invalid UTF-8 bytes stay as surrogates (``\\udc80``..) for the caller to report."""
    used = sniff_encoding(data[:SNIFF_BYTES]) if encoding == "auto" else encoding
    if used.replace("_", "-").lower() in ("utf-8", "utf8"):
        return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape"), "utf-8"
    if used == "cp1252":
        try:
            return data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            return data.decode("latin-1"), "latin-1"
    text = data.decode(used, errors="replace")
    return text.removeprefix("\ufeff"), used


def bad_byte_offset(text: str) -> int | None:
    """Column of the first invalid byte left by :func:`decode_text`, or None."""
    found = _BAD_BYTES.search(text)
    return found.start() + 1 if found else None


def _read_jsonl(file: Path, shown: str, encoding: str, report: FileReport, progress: ProgressFn) -> Iterator[RawItem]:
    report.encoding = sniff_encoding(_head(file)) if encoding == "auto" else encoding
    if report.encoding != "utf-8":
        text, report.encoding = decode_text(file.read_bytes(), report.encoding)
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield _json_line(line, shown, number)
        return
    done = 0
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            done += len(raw)
            if done >= PROGRESS_EVERY:
                progress(done)
                done = 0
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawItem({"path": shown, "line": number}, reason="invalid UTF-8", detail=f"byte {exc.start + 1}")
                continue
            if number == 1:
                line = line.removeprefix("\ufeff")
            if line.strip():
                yield _json_line(line, shown, number)


def _json_line(line: str, shown: str, number: int) -> RawItem:
    where = {"path": shown, "line": number}
    try:
        return RawItem(where, value=json.loads(line))
    except json.JSONDecodeError as exc:
        return RawItem(where, reason="invalid JSON", detail=f"{exc.msg} (column {exc.colno})")
    except RecursionError:
        return RawItem(where, reason="invalid JSON", detail="nested too deeply")


def _head(file: Path) -> bytes:
    with file.open("rb") as handle:
        return handle.read(SNIFF_BYTES)


_WS = re.compile(r"[ \t\n\r]*")


def _read_json(file: Path, shown: str, encoding: str, report: FileReport) -> Iterator[RawItem]:
    """A JSON array of rows, an object of arrays of rows, a columnar object (``{col: [values]}``) or one row."""
    text, report.encoding = decode_text(file.read_bytes(), encoding)
    if bad_byte_offset(text) is not None:
        text = _BAD_BYTES.sub("\ufffd", text)
        report.warnings.append("invalid UTF-8 bytes replaced with U+FFFD")
    start = _WS.match(text).end()
    if start == len(text):
        report.warnings.append("empty file")
        return
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        if text[start] == "[":  # keep the rows before the error
            yield from _array_rows(text, start, shown, "")
            return
        yield RawItem({"path": shown, "line": exc.lineno}, reason="invalid JSON", detail=f"{exc.msg} (whole file)")
        return
    except RecursionError:
        yield RawItem({"path": shown}, reason="invalid JSON", detail="nested too deeply")
        return
    if isinstance(whole, list):
        yield from _array_rows(text, start, shown, "")
    elif isinstance(whole, dict) and _is_columnar(whole):
        columns = list(whole)
        for index, values in enumerate(zip(*whole.values(), strict=True), start=1):
            yield RawItem({"path": shown, "row": index}, value=dict(zip(columns, values, strict=True)))
    elif isinstance(whole, dict) and _row_lists(whole):
        yield from _object_rows(text, start, shown, set(_row_lists(whole)))
    else:
        yield RawItem({"path": shown, "line": text.count("\n", 0, start) + 1}, value=whole)


def _is_columnar(obj: dict[str, Any]) -> bool:
    values = list(obj.values())
    if not values or not all(isinstance(v, list) and v for v in values):
        return False
    return len({len(v) for v in values}) == 1 and not any(isinstance(x, (dict, list)) for x in values[0])


def _row_lists(obj: dict[str, Any]) -> list[str]:
    """Keys of an object that hold lists of rows (not a single record such as ``{"messages": [...]}``)."""
    if "messages" in obj or "conversations" in obj:
        return []
    return [k for k, v in obj.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]


def _array_rows(text: str, pos: int, shown: str, key: str) -> Iterator[RawItem]:
    """Rows of the JSON array starting at ``text[pos] == '['``, each with its line; stops at the first error."""
    decoder = json.JSONDecoder()
    line, seen = 1, 0
    pos = _WS.match(text, pos + 1).end()
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        line += text.count("\n", seen, pos)
        seen = pos
        where: dict[str, Any] = {"path": shown, "line": line}
        try:
            value, end = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as exc:
            detail = getattr(exc, "msg", "nested too deeply")
            yield RawItem(where, reason="invalid JSON", detail=f"{detail}; the rest of {key or 'the array'} is unread")
            return
        yield RawItem(where, value=value)
        pos = _WS.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
            continue
        if pos < len(text) and text[pos] == "]":
            return
        yield RawItem(where, reason="invalid JSON", detail="expected ',' or ']' after this row; the rest is unread")
        return


def _object_rows(text: str, pos: int, shown: str, keys: set[str]) -> Iterator[RawItem]:
    """Rows of the arrays held by ``keys`` in the (valid) JSON object starting at ``text[pos] == '{'``."""
    decoder = json.JSONDecoder()
    pos = _WS.match(text, pos + 1).end()
    while pos < len(text) and text[pos] != "}":
        key, pos = decoder.raw_decode(text, pos)
        pos = _WS.match(text, pos).end() + 1  # past ':'
        pos = _WS.match(text, pos).end()
        _, end = decoder.raw_decode(text, pos)
        if key in keys:
            yield from _array_rows(text, pos, shown, key)
        pos = _WS.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()


def _read_csv(file: Path, shown: str, encoding: str, report: FileReport, delimiter: str) -> Iterator[RawItem]:
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
        if header is None:
            header = [name.strip() for name in row]
            continue
        if not any(cell.strip() for cell in row):
            continue
        offset = bad_byte_offset(delimiter.join(row))
        if offset is not None:
            yield RawItem(where, reason="invalid UTF-8", detail=f"character {offset} of the row")
        elif len(row) != len(header):
            yield RawItem(where, reason="wrong number of columns", detail=f"expected {len(header)}, got {len(row)}")
        else:
            yield RawItem(where, value=dict(zip(header, row, strict=True)))


def _read_parquet(file: Path, shown: str) -> Iterator[RawItem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(file)
        batches = table.iter_batches(batch_size=4096)
        row = 0
        for batch in batches:
            for value in batch.to_pylist():
                row += 1
                yield RawItem({"path": shown, "row": row}, value=value)
    except (pa.ArrowException, OSError, ValueError) as exc:
        yield RawItem({"path": shown}, reason="unreadable file", detail=f"not a readable Parquet file: {exc}")


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


def _read_document(file: Path, shown: str, spec: SourceSpec, chunk_chars: int, report: FileReport) -> Iterator[RawItem]:
    try:
        blocks = documents.read_blocks(file, spec.encoding, report)
    except documents.UnreadableDocument as exc:
        yield RawItem({"path": shown}, reason=exc.reason, detail=exc.detail)
        return
    for text, where in documents.split_blocks(blocks, spec.unit, chunk_chars):
        yield RawItem({"path": shown, **where}, value=text)
