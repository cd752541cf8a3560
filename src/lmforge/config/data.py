"""Recipe models of the ``data`` stage: sources, column maps, cleaning, filters, deduplication."""

# Mutable field defaults are safe here: pydantic copies them per instance; ruff only sees that
# when the BaseModel subclass is defined in the same file, and Strict lives in base.py.
# ruff: noqa: RUF012

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from lmforge.config.base import Strict, resolve_path

DataFormat = Literal[
    "auto",
    "canonical",
    "messages",
    "sharegpt",
    "alpaca",
    "qa",
    "prompt_response",
    "prompt_completion",
    "preference",
    "preference_implicit",
    "kto",
    "text",
    "columns",
]
"""Row formats of datasets; ``auto`` detects one per file from its first rows."""

HUB_SCHEME = "hf://"
"""Prefix of a Hugging Face hub dataset id in a source path, e.g. ``hf://org/name`` (needs network)."""


class ColumnMap(Strict):
    """Which columns of a dataset hold which part of a record (for formats lmforge does not know)."""

    user: str | None = None
    """Column with the user turn (question, prompt, instruction)."""
    input: str | None = None
    """Column appended to the user turn after a blank line (alpaca-style context)."""
    assistant: str | None = None
    """Column with the assistant turn (answer, response, output)."""
    system: str | None = None
    """Column with a system prompt."""
    text: str | None = None
    """Column with raw text; makes ``text`` records (use instead of user/assistant)."""
    domain: str | None = None
    """Column with a domain tag for the row."""
    meta: list[str] = []
    """Columns copied into the record's ``meta`` (e.g. an answer key for evaluation)."""

    @field_validator("text")
    @classmethod
    def _text_or_chat(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and (info.data.get("user") or info.data.get("assistant")):
            raise ValueError("map either 'text' or 'user'/'assistant', not both")
        return value


class SourceSpec(Strict):
    """One input: a file, a folder, a glob, a ``load_from_disk`` folder or a hub dataset."""

    path: str
    """File, folder or glob; relative to the recipe, ``lmforge://`` for packaged files, ``hf://org/name``
    for a hub dataset (only with network; offline, save it with ``save_to_disk`` and give that folder)."""
    split: str | None = None
    """Put every record of this source in this split (e.g. ``train``, ``test``, ``known``); default ``train``."""
    domain: str | None = None
    """Domain tag for records that carry none."""
    format: DataFormat = "auto"
    """Row format of datasets; ``auto`` detects it per file. Documents are always ``text``."""
    columns: ColumnMap | None = None
    """Explicit column mapping; implies ``format: columns``."""
    weight: float = Field(1.0, ge=0.0)
    """Mixing weight in the ``train`` split: 2.0 repeats every record twice, 0.5 keeps a seeded half."""
    encoding: str = "auto"
    """Text encoding; ``auto``: UTF-8 (BOM stripped, bad lines reported), or cp1252/latin-1 for files
    with no UTF-8 at all. Any Python codec name forces that encoding."""
    unit: Literal["section", "line", "document"] = "section"
    """How documents become records: ``section`` (split at headings, PDF by page, then chunked to
    ``data.chunk_chars``), ``line`` (one record per non-empty line) or ``document`` (one record per file)."""
    pdf_reader: Literal["pdfium", "pymupdf4llm"] = "pdfium"
    """How PDFs are read. ``pdfium``: each page's text layer as one paragraph (outline entries as headings);
    ``pymupdf4llm``: headings from font sizes, paragraphs, lists and tables as Markdown (the optional extra
    ``lmforge[pdf]``; PyMuPDF is AGPL-3.0 licensed). See docs/RAG.md for the comparison."""
    dataset_split: str | None = None
    """Split to read from a hub dataset or a saved ``DatasetDict`` (default: its only split, or ``train``)."""

    @field_validator("pdf_reader")
    @classmethod
    def _reader_installed(cls, value: str) -> str:
        import importlib.util

        if value == "pymupdf4llm" and importlib.util.find_spec("pymupdf4llm") is None:
            raise ValueError("pdf_reader 'pymupdf4llm' needs the package: pip install 'lmforge[pdf]'")
        return value

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str, info: ValidationInfo) -> str:
        base_dir = (info.context or {}).get("base_dir")
        if base_dir is None or value.startswith(HUB_SCHEME):
            return value
        resolved = resolve_path(value, Path(base_dir))
        has_glob = any(ch in value for ch in "*?[")
        if has_glob:
            parent = resolved
            while any(ch in parent.name for ch in "*?[") and parent != parent.parent:
                parent = parent.parent
            if not parent.exists():
                raise ValueError(f"no such folder {str(parent)!r} for glob {value!r}")
        elif not resolved.exists():
            raise ValueError(f"file not found: {str(resolved)!r}")
        return str(resolved)

    @field_validator("weight")
    @classmethod
    def _weight_on_train(cls, value: float, info: ValidationInfo) -> float:
        split = info.data.get("split")
        if value != 1.0 and split not in (None, "train"):
            raise ValueError(f"weights mix the train split only; this source goes to split {split!r}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        if value != "auto":
            expected = "expected 'auto' or a text codec such as utf-8, cp1252"
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}; {expected}") from None
            try:  # base64, zlib, rot13 exist but refuse bytes.decode; idna, undefined cannot decode bytes
                b"x\xff".decode(value, errors="replace")
            except (LookupError, ValueError):
                raise ValueError(
                    f"{value!r} is not a text encoding (it does not decode bytes to text); {expected}"
                ) from None
        return value

    @field_validator("columns")
    @classmethod
    def _columns_need_format(cls, value: ColumnMap | None, info: ValidationInfo) -> ColumnMap | None:
        fmt = info.data.get("format", "auto")
        if value is not None and fmt not in ("auto", "columns"):
            raise ValueError(f"a column mapping needs format 'columns' (or 'auto'), got {fmt!r}")
        if value is not None and not (value.text or value.assistant):
            raise ValueError("map 'assistant' (and 'user') for chat records, or 'text' for text records")
        return value


class CleanSpec(Strict):
    """Normalisation applied to every text before filtering and deduplication."""

    unicode: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normal form; NFKC also folds compatibility characters (ligatures, full-width forms)."""
    whitespace: bool = True
    """CRLF -> LF, no-break and odd spaces -> space, control and zero-width characters removed,
    trailing spaces and runs of 3+ newlines trimmed, ends stripped. Indentation is kept."""


class FilterSpec(Strict):
    """Quality and length filters; what they remove is counted per reason in ``stats.json``."""

    min_chars: int = Field(1, ge=0)
    """Drop texts and answers shorter than this (after cleaning); 1 drops empty ones."""
    max_chars: int | None = Field(None, ge=1)
    """Drop records whose content is longer than this many characters."""
    max_tokens: int | Literal["sft"] | None = None
    """Drop records longer than this many tokens after the chat template, counted with the recipe
    model's tokenizer; ``sft`` uses ``sft.max_length``. Off by default (it loads the tokenizer)."""
    min_letter_ratio: float = Field(0.25, ge=0.0, le=1.0)
    """Drop records where letters are fewer than this share of non-space characters (tables of
    numbers, binary junk, mojibake); 0 turns it off."""


class DedupSpec(Strict):
    """Duplicate removal across all sources; the first occurrence (in source order) is kept."""

    exact: bool = True
    """Drop records whose cleaned content is identical to an earlier one."""
    near_threshold: float | None = Field(None, gt=0.0, le=1.0)
    """Also drop near-duplicates: estimated Jaccard similarity of word n-grams at or above this
    (MinHash LSH; 0.8-0.9 is typical). Off by default: it also catches paraphrases with equal answers."""
    ngram: int = Field(5, ge=1)
    """Words per shingle for near-duplicate detection."""
    num_perm: int = Field(64, ge=16)
    """MinHash permutations: more is more precise and slower."""


class QuestionsSpec(Strict):
    """Questions written by rules about every fact of the documents (``lmforge.data.questions``): dates,
    amounts, durations, rates, names and definitions of every sentence, several wordings each, each
    answered by its sentence. Written to their own split, which sft trains on by default."""

    enabled: bool | Literal["auto"] = "auto"
    """``auto``: on when a source goes to one of ``from_splits``; ``false``: off."""
    from_splits: list[str] = Field(["documents"], min_length=1)
    """Splits whose ``text`` records (document sections) the questions are about."""
    split: str = "doc_qa"
    """Split the questions are written to."""
    wordings: int = Field(5, ge=1, le=12)
    """Questions per fact (fewer when the rules find fewer distinct wordings)."""
    held_out: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of document sections whose questions go to the split ``<split>_test`` instead (grouped by
    section, so a section is never on both sides): a held-out set for a recipe with no question file."""
    overlap_threshold: float = Field(0.8, gt=0.0, le=1.0)
    """A question whose words overlap an evaluation question's this much (Jaccard) is dropped (counted)."""


class DataSpec(Strict):
    """The ``data`` stage: sources in, canonical records and splits out."""

    sources: list[SourceSpec] = Field(min_length=1)
    """Inputs; at least one."""
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the ``train`` split held out as ``val`` (seeded, before mixing weights repeat records)."""
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the ``train`` split held out as ``test`` (seeded, before mixing weights repeat records)."""
    group_by: str | None = None
    """Dotted record key (``meta.fact``, ``source.path``) whose records stay together on one side of the
    val/test split, so the same fact or document never sits on both; records without it form their own group."""
    system_prompts: dict[str, str] = {}
    """System prompt per domain, added to that domain's chat records that have none (in every split,
    so training and evaluation see the same prompt)."""
    domain_weights: dict[str, float] = {}
    """Mixing weight per domain in the ``train`` split, multiplied with the source's ``weight``."""
    chunk_chars: int = Field(4000, ge=200)
    """Longest document section in characters; longer ones are cut at paragraph, then sentence, boundaries."""
    clean: CleanSpec = CleanSpec()
    """Text normalisation."""
    filters: FilterSpec = FilterSpec()
    """Length and quality filters."""
    dedup: DedupSpec = DedupSpec()
    """Exact and near-duplicate removal."""
    questions: QuestionsSpec = QuestionsSpec()
    """Questions about every fact of the documents, written by rules (see :class:`QuestionsSpec`)."""
    strict: bool = False
    """Fail on the first rejected record (with its file:line) instead of collecting rejects."""
    workers: int = Field(1, ge=1)
    """Processes that read, convert, clean and filter the files in parallel (a file each at a time).
    Deduplication, splitting and mixing stay in one process, in file order, so the outputs are
    byte-identical for any number of workers (which is why it is not part of the stage's
    fingerprint). Pays off on many or large files; ``strict`` reads in one process."""

    def writes_questions(self) -> bool:
        """Whether the data stage writes rule-made questions about the documents (``questions``)."""
        if self.questions.enabled == "auto":
            return any((source.split or "train") in self.questions.from_splits for source in self.sources)
        return bool(self.questions.enabled)

    @field_validator("test_fraction")
    @classmethod
    def _fractions_leave_training_data(cls, value: float, info: ValidationInfo) -> float:
        if value + info.data.get("val_fraction", 0.0) >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must be below 1, got {info.data['val_fraction']} + {value}")
        return value

    @field_validator("domain_weights")
    @classmethod
    def _weights_not_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = {k: v for k, v in value.items() if v < 0}
        if negative:
            raise ValueError(f"weights must be >= 0, got {negative}")
        return value
