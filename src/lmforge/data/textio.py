"""Reading a file's bytes as text, and what reading one file found: shared by the readers of datasets
(``sources.py``) and of documents (``documents.py``), which otherwise would import each other."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_NOT_ASCII_OR_BAD = re.compile("[^\x00-\x7f\udc80-\udcff]")
BAD_BYTES = re.compile("[\udc80-\udcff]")
"""The bytes UTF-8 could not decode, kept by ``surrogateescape`` as U+DC80..U+DCFF."""
_UTF8_BOM = b"\xef\xbb\xbf"


class UnreadableFile(Exception):
    """A file that yields nothing (damaged, undecodable, or a PDF without text); ``reason`` is the category
    counted in ``stats.json``, ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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


def is_legacy_8bit(text: str) -> bool:
    """True when ``text`` (decoded as UTF-8 with ``surrogateescape``) has invalid bytes and no valid multi-byte
    UTF-8 at all: a legacy 8-bit file (cp1252) rather than a UTF-8 file with a few bad bytes."""
    return bool(BAD_BYTES.search(text)) and not _NOT_ASCII_OR_BAD.search(text)


def decode_text(data: bytes, encoding: str) -> tuple[str, str]:
    """Decode a whole file; invalid UTF-8 bytes stay as surrogates (``\\udc80``..) for the caller to report.

    ``auto`` looks at the whole file, so legacy 8-bit bytes far into it still make it cp1252.

    Raises:
        UnreadableFile: a forced encoding fails on these bytes even with ``errors="replace"``.
    """
    used = encoding
    if encoding == "auto":
        used = "utf-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8"
    if used.replace("_", "-").lower() in ("utf-8", "utf8"):
        body = data.removeprefix(_UTF8_BOM)
        try:
            return body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text = body.decode("utf-8", errors="surrogateescape")
        if encoding != "auto" or not is_legacy_8bit(text):
            return text, "utf-8"
        used = "cp1252"
    if used == "cp1252":
        try:
            return data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            return data.decode("latin-1"), "latin-1"
    try:
        text = data.decode(used, errors="replace")
    except UnicodeError as exc:
        raise UnreadableFile("unreadable file", f"cannot decode it as {used}: {exc}") from None
    return text.removeprefix("\ufeff"), used


def bad_byte_offset(text: str) -> int | None:
    """Column of the first invalid byte left by :func:`decode_text`, or None."""
    found = BAD_BYTES.search(text)
    return found.start() + 1 if found else None
