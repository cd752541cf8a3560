"""Cleaning: text normalisation, quality and length filters, exact and near-duplicate removal.

Every function here decides about one record at a time (or one batch, in order), so that the
caller can count what happened to each record: kept, filtered (with a reason) or deduplicated.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lmforge.config import CleanSpec, DedupSpec, FilterSpec
from lmforge.records import Record, chat_record, text_record

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
# C0/C1 controls (not tab/newline), soft hyphen, zero-width space, word joiner, BOM. ZWJ/ZWNJ stay:
# they carry meaning in emoji and in Persian or Indic scripts.
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff]")
_TRAILING_SPACE = re.compile("[ \t]+\n")
_BLANK_RUNS = re.compile("\n{3,}")
_ASCII_NOT_LETTERS = bytes(b for b in range(128) if not chr(b).isalpha())
_ASCII_SPACES = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
RATIO_SAMPLE = 20_000
"""Characters looked at for the letter ratio (enough to judge; keeps huge records cheap)."""


def normalize_text(text: str, spec: CleanSpec) -> str:
    """Unicode normal form, then whitespace: see :class:`~lmforge.config.CleanSpec`.

    Idempotent: cleaning a cleaned text changes nothing, so a record's content id is stable.
    """
    ascii_only = text.isascii()  # ASCII is already in every normal form and has no odd spaces
    if spec.unicode != "none" and not ascii_only and not unicodedata.is_normalized(spec.unicode, text):
        text = unicodedata.normalize(spec.unicode, text)
    if spec.whitespace:
        text = _normalize_whitespace(text, ascii_only)
        # a removed control or zero-width character may have stood between a letter and its accent
        if spec.unicode != "none" and not ascii_only and not unicodedata.is_normalized(spec.unicode, text):
            text = unicodedata.normalize(spec.unicode, text)
    return text


def _normalize_whitespace(text: str, ascii_only: bool) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not ascii_only:
        text = _ODD_SPACES.sub(" ", text)
    text = _INVISIBLE.sub("", text)
    if " \n" in text or "\t\n" in text:
        text = _TRAILING_SPACE.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def clean_record(record: Record, spec: CleanSpec) -> Record:
    """The record with normalised content and its content id (the same record when nothing changed)."""
    meta = record.get("meta")
    if record["kind"] == "text":
        text = normalize_text(record["text"], spec)
        return record if text == record["text"] else text_record(text, record["source"], record.get("domain"), meta)
    messages = [{"role": m["role"], "content": normalize_text(m["content"], spec)} for m in record["messages"]]
    if isinstance((meta or {}).get("rejected"), str):  # a preference pair's rejected answer, cleaned alike
        meta = {**meta, "rejected": normalize_text(meta["rejected"], spec)}  # type: ignore[dict-item]
    if messages == record["messages"] and meta == record.get("meta"):
        return record
    return chat_record(messages, record["source"], record.get("domain"), meta)  # type: ignore[arg-type]


def with_system_prompt(record: Record, system_prompts: dict[str, str]) -> Record:
    """Add the record's domain system prompt to a chat record that has no system message."""
    prompt = system_prompts.get(record.get("domain") or "")
    if not prompt or record["kind"] != "chat" or record["messages"][0]["role"] == "system":
        return record
    messages = [{"role": "system", "content": prompt}, *record["messages"]]
    return chat_record(messages, record["source"], record.get("domain"), record.get("meta"))  # type: ignore[arg-type]


def content_text(record: Record, with_system: bool = True) -> str:
    """The words of a record: its text, or its messages' contents joined by newlines (and a preference
    pair's rejected answer, so pairs that differ only there are not near-duplicates)."""
    if record["kind"] == "text":
        return record["text"]
    words = "\n".join(m["content"] for m in record["messages"] if with_system or m["role"] != "system")
    rejected = (record.get("meta") or {}).get("rejected")
    return f"{words}\n{rejected}" if isinstance(rejected, str) else words


def letter_ratio(text: str) -> float:
    """Share of letters among the non-space characters (of the first ``RATIO_SAMPLE`` characters)."""
    sample = text[:RATIO_SAMPLE]
    if sample.isascii():  # bytes.translate counts in C; most text is ASCII
        raw = sample.encode("ascii")
        visible = len(raw.translate(None, _ASCII_SPACES))
        letters = len(raw.translate(None, _ASCII_NOT_LETTERS))
    else:
        visible = len("".join(sample.split()))
        letters = sum(map(str.isalpha, sample))
    return letters / visible if visible else 0.0


def filter_reason(record: Record, spec: FilterSpec) -> str | None:
    """Why a (cleaned) record is filtered out, or None to keep it. Token length is checked separately."""
    # strip(): with clean.whitespace off, a text of spaces is still empty
    if record["kind"] == "text":
        if not record["text"].strip():
            return "empty text"
        if len(record["text"]) < spec.min_chars:
            return "too short"
    else:
        messages = record["messages"]
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        if not answers[-1].strip():
            return "empty answer"
        if any(not m["content"].strip() for m in messages if m["role"] == "user"):
            return "empty question"
        if len(answers[-1]) < spec.min_chars:
            return "too short"
        rejected = (record.get("meta") or {}).get("rejected")
        if isinstance(rejected, str) and not rejected.strip():
            return "empty rejected answer"
    body = content_text(record)
    if spec.max_chars is not None and len(body) > spec.max_chars:
        return "too long (characters)"
    if spec.min_letter_ratio and letter_ratio(body) < spec.min_letter_ratio:
        return "mostly non-text"
    return None


# ---------------------------------------------------------------- token length


def token_lengths(tokenizer: PreTrainedTokenizerBase, records: list[Record], batch: int = 512) -> list[int]:
    """Tokens per record as training sees them: chat records through the tokenizer's chat template
    (a ``role: content`` transcript when it has none), text records as they are."""
    lengths: list[int] = []
    for start in range(0, len(records), batch):
        texts = [_rendered(tokenizer, r) for r in records[start : start + batch]]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths.extend(len(ids) for ids in encoded)
    return lengths


def _rendered(tokenizer: PreTrainedTokenizerBase, record: Record) -> str:
    if record["kind"] == "text":
        return record["text"]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(record["messages"], tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in record["messages"])


# ---------------------------------------------------------------- near duplicates


class NearDuplicates:
    """MinHash LSH over lower-cased word n-grams; of two near-duplicates the first one seen is kept.

    datasketch does the hashing and the banding; each LSH candidate is then checked against the
    threshold with its stored signature, so a banding false positive never costs a record.
    System prompts are left out of the comparison (a shared prompt would make short QA pairs alike).
    """

    def __init__(self, spec: DedupSpec):
        from datasketch import MinHashLSH

        assert spec.near_threshold is not None
        self.spec = spec
        self.threshold = spec.near_threshold
        # Verification drops false candidates, so the banding is tuned to miss few true ones.
        self.lsh = MinHashLSH(threshold=spec.near_threshold, num_perm=spec.num_perm, weights=(0.1, 0.9))
        self.signatures: list[Any] = []

    def shingles(self, text: str) -> list[bytes]:
        words = text.lower().split()
        n = self.spec.ngram
        if len(words) <= n:
            return [" ".join(words).encode("utf-8")]
        return [" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)]

    def find(self, records: list[Record], on_progress: Callable[[int], None] | None = None) -> list[bool]:
        """For each record in order: True when it nearly duplicates an earlier one (then it is not indexed)."""
        import numpy as np
        from datasketch import MinHash

        flags: list[bool] = []
        for start in range(0, len(records), 2048):
            chunk = records[start : start + 2048]
            signatures = MinHash.bulk(
                [self.shingles(content_text(r, with_system=False)) for r in chunk], num_perm=self.spec.num_perm
            )
            for signature in signatures:
                values = signature.hashvalues
                duplicate = any(
                    float(np.mean(values == self.signatures[key])) >= self.threshold
                    for key in self.lsh.query(signature)
                )
                if not duplicate:
                    self.lsh.insert(len(self.signatures), signature, check_duplication=False)
                    self.signatures.append(values)
                flags.append(duplicate)
            if on_progress:
                on_progress(len(chunk))
        return flags
