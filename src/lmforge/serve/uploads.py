"""Reading an uploaded document for ``/v1/extract`` without letting it take the server down.

An upload is untrusted bytes. Before any reader library sees them:

* **the type is sniffed from the content**, not taken from the file name: a PDF starts with ``%PDF-``,
  a DOCX is a zip holding ``word/document.xml``, text is UTF-8 (or Latin-1) without NUL bytes; a name
  whose suffix disagrees with the content is refused (415);
* **a DOCX's zip directory is checked**: at most ``max_zip_entries`` entries, at most
  ``max_uncompressed_bytes`` once expanded, no entry expanding more than ``max_zip_ratio`` times (a zip
  bomb expands a thousand times in memory): 413 otherwise.

Then the document is read in a child process (spawned, so it shares nothing with the server's
threads) with an address-space cap (``read_memory_mb``) and a time limit (``read_timeout_s``, then
the child is killed); a PDF of more than ``max_pages`` pages is refused before its pages are read.
Every refusal has a fixed message naming the limit and the option that raises it, never a library's
exception text or a temporary path.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import zipfile
from dataclasses import dataclass
from typing import Any

from lmforge.serve.protocol import APIError


@dataclass(frozen=True)
class UploadLimits:
    max_uncompressed_bytes: int = 100_000_000
    max_zip_ratio: float = 100.0
    max_zip_entries: int = 2000
    max_pages: int = 500
    read_timeout_s: float = 30.0
    read_memory_mb: int = 2048


def sniff(data: bytes) -> str:
    """``pdf``, ``docx``, ``zip`` (another zip), ``binary`` or ``text``: what the bytes are."""
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return "docx" if "word/document.xml" in archive.namelist() else "zip"
        except zipfile.BadZipFile:
            return "binary"
    head = data[:65536]
    if b"\x00" in head:
        return "binary"
    return "text"


def check_type(data: bytes, suffix: str, shown: str) -> str:
    """The sniffed type when it agrees with the name's ``suffix``; 415 otherwise."""
    found = sniff(data)
    expected = {".pdf": "pdf", ".docx": "docx"}.get(suffix, "text")
    if found != expected:
        described = {"pdf": "a PDF", "docx": "a DOCX document", "text": "text"}[expected]
        raise APIError(
            415,
            f"file {shown!r}: its name says {described}, but its content is not (the type is checked on the bytes)",
            param="file",
            code="unsupported_media_type",
        )
    return found


def check_zip(data: bytes, limits: UploadLimits, shown: str) -> None:
    """413 when the zip would expand beyond the limits (entries, total size, ratio of any entry)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
    total = sum(info.file_size for info in infos)
    worst = max((info.file_size / max(info.compress_size, 1) for info in infos), default=0.0)
    if len(infos) > limits.max_zip_entries or total > limits.max_uncompressed_bytes or worst > limits.max_zip_ratio:
        raise APIError(
            413,
            f"file {shown!r} would expand beyond this server's limits (at most {limits.max_zip_entries} parts, "
            f"{limits.max_uncompressed_bytes:,} bytes expanded, {limits.max_zip_ratio:g}x compression per part); "
            "a server operator raises them with --max-uncompressed-bytes",
            param="file",
            code="document_too_large",
        )


def read_upload(data: bytes, suffix: str, shown: str, limits: UploadLimits) -> str:
    """The text of an uploaded document, read in a child process under ``limits`` (run it off the event loop).

    Raises:
        APIError: 415 (type), 413 (size, pages), 422 (unreadable, empty, too slow or too big to read).
    """
    kind = check_type(data, suffix, shown)
    if kind == "docx":
        check_zip(data, limits, shown)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(data, suffix, limits, sender), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(limits.read_timeout_s):
            raise _refusal(shown, "timeout", limits)
        outcome, value = receiver.recv()
    except EOFError:  # the child died: out of memory under its cap, or killed
        raise _refusal(shown, "crashed", limits) from None
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join(5)
    if outcome != "text":
        raise _refusal(shown, value, limits)
    if not value.strip():
        raise APIError(422, f"file {shown!r} holds no text (a scanned PDF?)", param="file", code="empty_document")
    return value


def _refusal(shown: str, reason: str, limits: UploadLimits) -> APIError:
    if reason == "pages":
        return APIError(
            413,
            f"file {shown!r} has more than {limits.max_pages} pages, this server's limit (--max-upload-pages)",
            param="file",
            code="document_too_large",
        )
    messages = {
        "timeout": f"reading file {shown!r} took longer than {limits.read_timeout_s:g} s, this server's limit",
        "crashed": f"file {shown!r} could not be read within this server's memory limit for one document",
        "memory": f"file {shown!r} could not be read within this server's memory limit for one document",
        "scanned": f"file {shown!r} has no text layer (a scanned PDF?); run OCR on it first, e.g. with ocrmypdf",
    }
    message = messages.get(reason, f"file {shown!r} could not be read (damaged, encrypted or not what it claims)")
    return APIError(422, message, param="file", code="unreadable_file")


def _child(data: bytes, suffix: str, limits: UploadLimits, sender: Any) -> None:
    """In the child: cap the address space, write the bytes to a private folder, read them; send one outcome."""
    import resource
    import tempfile
    from pathlib import Path

    cap = limits.read_memory_mb * 1024 * 1024
    with contextlib.suppress(ValueError, OSError):  # a hard limit already lower: keep it
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        with tempfile.TemporaryDirectory(prefix="lmforge-upload-") as folder:
            path = Path(folder) / f"document{suffix}"
            path.write_bytes(data)
            if suffix == ".pdf" and _pages(path) > limits.max_pages:
                sender.send(("refused", "pages"))
                return
            sender.send(("text", _text(path)))
    except MemoryError:
        sender.send(("refused", "memory"))
    except Exception as exc:  # the reason stays here: the client gets a fixed message
        sender.send(("refused", "scanned" if "OCR" in str(exc) else "unreadable"))
    finally:
        sender.close()


def _pages(path: Any) -> int:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    try:
        return len(pdf)
    finally:
        pdf.close()


def _text(path: Any) -> str:
    from lmforge.data.documents import read_blocks
    from lmforge.data.textio import FileReport

    blocks = read_blocks(path, "auto", FileReport(kind="upload"))
    return "\n\n".join(block.text for block in blocks if block.text.strip())
