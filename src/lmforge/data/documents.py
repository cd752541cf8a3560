"""Documents (Markdown, text, HTML, PDF, DOCX) -> blocks with their location -> sections or lines.

Every reader turns a file into a list of :class:`Block` (a heading or a paragraph, with its line,
or page for PDF). :func:`split_blocks` then makes the units that become ``text`` records: sections
(a heading and what follows it, or a PDF page, cut to a size), single lines, or whole documents.
Headings are written Markdown-style (``## Title``) whatever the input, so every section reads alike.

Locations: ``line`` is the 1-based source line for Markdown, text and HTML, the paragraph number
for DOCX and the line within the page for PDF with ``unit: line`` (and, read with ``pymupdf4llm``, the
line of the page's Markdown); ``page`` is 1-based; ``heading``
is the path of headings above the section (``Chapter 2 > Article 12``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.textio import FileReport, UnreadableFile, bad_byte_offset, decode_text

MARKDOWN_SUFFIXES = {".md", ".markdown"}
TEXT_SUFFIXES = {".txt", ".text", ".rst"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
DOCUMENT_SUFFIXES = MARKDOWN_SUFFIXES | TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx"}

HTML_DROP = [
    "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form",
    "iframe", "svg", "canvas", "button", "select", "object", "embed", "head",
]  # fmt: skip
HTML_DROP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "menu"}
HTML_BLOCKS = {
    "p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd", "blockquote", "tr",
    "table", "figure", "figcaption", "address", "details", "summary", "hr", "br",
}  # fmt: skip
HTML_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_SURROGATES = re.compile("[\ud800-\udfff]")
_SENTENCE_END = re.compile(r"(?<=[.!?;:。！？])\s+|\n+")


@dataclass
class Block:
    """A heading (``level`` 1-6) or a paragraph (``level`` 0) of a document."""

    text: str
    line: int | None = None
    page: int | None = None
    level: int = 0
    title: str = ""
    """Plain heading text (headings only)."""


def read_blocks(file: Path, encoding: str, report: FileReport, pdf_reader: str = "pdfium") -> list[Block]:
    """Read one document into blocks; PDFs with ``pdf_reader`` (``pdfium`` or ``pymupdf4llm``).

    Raises:
        UnreadableFile: the file is damaged, encrypted, or holds no text (a scanned PDF).
    """
    suffix = file.suffix.lower()
    if suffix == ".pdf":
        report.kind = "pdf"
        return _pdf_layout_blocks(file, report) if pdf_reader == "pymupdf4llm" else _pdf_blocks(file, report)
    if suffix == ".docx":
        report.kind = "docx"
        return _docx_blocks(file)
    text, report.encoding = decode_text(file.read_bytes(), encoding)
    if bad_byte_offset(text) is not None:
        bad = [n for n, line in enumerate(text.split("\n"), start=1) if bad_byte_offset(line) is not None]
        report.warnings.extend(f"line {n}: invalid UTF-8 bytes replaced with U+FFFD" for n in bad)
    elif not text.isascii() and _SURROGATES.search(text):  # codecs such as unicode_escape make lone surrogates
        report.warnings.append("lone surrogates (not characters) replaced with U+FFFD")
    text = without_surrogates(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if suffix in MARKDOWN_SUFFIXES:
        report.kind = "markdown"
        return _markdown_blocks(text)
    if suffix in HTML_SUFFIXES:
        report.kind = "html"
        return _html_blocks(text)
    report.kind = "text"
    return _text_blocks(text)


def without_surrogates(text: str) -> str:
    """``text`` with surrogates (invalid bytes kept by the decoder, or lone ones) replaced by U+FFFD, so that
    every section can be written as UTF-8."""
    return text if text.isascii() else _SURROGATES.sub("\ufffd", text)


def _markdown_blocks(text: str) -> list[Block]:
    """Top-level Markdown blocks with their source lines; headings inside code fences are not headings."""
    from markdown_it import MarkdownIt

    lines = text.split("\n")
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    blocks = []
    for i, token in enumerate(tokens):
        if token.level != 0 or token.nesting == -1 or token.map is None:
            continue
        start, end = token.map
        if token.type == "heading_open":
            title = tokens[i + 1].content.strip()
            blocks.append(Block(f"{'#' * int(token.tag[1])} {title}", start + 1, level=int(token.tag[1]), title=title))
        else:
            body = "\n".join(lines[start:end]).strip("\n")
            if body.strip():
                blocks.append(Block(body, start + 1))
    return blocks


def _text_blocks(text: str) -> list[Block]:
    """Paragraphs separated by blank lines, each with its first line."""
    blocks = []
    current: list[str] = []
    first = 1
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            if not current:
                first = number
            current.append(line)
        elif current:
            blocks.append(Block("\n".join(current), first))
            current = []
    if current:
        blocks.append(Block("\n".join(current), first))
    return blocks


def _html_blocks(text: str) -> list[Block]:
    """Main text of a page: navigation, scripts, styles and forms dropped; headings kept as headings."""
    import warnings

    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, NavigableString

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(text, "html.parser")
    for tag in soup.find_all(HTML_DROP):
        tag.decompose()
    for tag in soup.find_all(lambda t: t.get("role") in HTML_DROP_ROLES or t.get("aria-hidden") == "true"):
        tag.decompose()
    root = soup.find("main") or soup.find(attrs={"role": "main"}) or soup.find("article") or soup.body or soup
    captured: dict[int, Block] = {}
    for tag in root.find_all([*HTML_HEADINGS, "pre"]):
        if tag.name == "pre":
            captured[id(tag)] = Block(tag.get_text().strip("\n"), tag.sourceline)
        else:
            title = " ".join(tag.get_text(" ").split())
            level = int(tag.name[1])
            captured[id(tag)] = Block(f"{'#' * level} {title}", tag.sourceline, level=level, title=title)
        tag.clear()  # its text is captured; the walk below must not add it again

    blocks: list[Block] = []
    buffer: list[str] = []
    line: int | None = None

    def flush() -> None:
        joined = "\n".join(" ".join(part.split()) for part in "".join(buffer).split("\n"))
        if joined.strip():
            blocks.append(Block(joined.strip(), line))
        buffer.clear()

    for node in root.descendants:
        if type(node) is NavigableString:  # not comments, doctypes or CDATA (subclasses)
            if not buffer:
                line = getattr(node.parent, "sourceline", None)
            buffer.append(str(node))
        elif id(node) in captured:
            flush()
            if captured[id(node)].text.strip():
                blocks.append(captured[id(node)])
        elif getattr(node, "name", None) == "br":
            buffer.append("\n")
        elif getattr(node, "name", None) in HTML_BLOCKS:
            flush()
        elif getattr(node, "name", None) in ("td", "th"):
            buffer.append(" ")
    flush()
    return blocks


def _pdf_blocks(file: Path, report: FileReport) -> list[Block]:
    """One block per page with a text layer; a PDF without any text is unreadable (scanned, needs OCR)."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(file))
    except (pdfium.PdfiumError, OSError, ValueError) as exc:
        raise UnreadableFile("unreadable file", f"not a readable PDF ({exc})") from None
    try:
        blocks, empty = _pdf_pages(pdf)
    except Exception as exc:  # pdfium fails in many ways on a damaged page (PdfiumError, UnicodeDecodeError...)
        raise UnreadableFile("unreadable file", f"a damaged PDF ({type(exc).__name__}: {exc})") from None
    finally:
        pdf.close()
    return _with_text(blocks, len(empty), empty, report)


def _with_text(blocks: list[Block], pages: int, empty: list[int], report: FileReport) -> list[Block]:
    """``blocks``, once a PDF is known to have a text layer; pages without one are reported.

    Raises:
        UnreadableFile: no page has text (a scanned PDF).
    """
    if not any(b.level == 0 for b in blocks):
        raise UnreadableFile(
            "no text layer",
            f"none of its {pages} pages has text (a scanned PDF?); run OCR first, e.g. `ocrmypdf in.pdf out.pdf`",
        )
    if empty:
        report.warnings.append(f"pages without a text layer (scanned?): {empty[:50]}")
    return blocks


def _pdf_layout_blocks(file: Path, report: FileReport) -> list[Block]:
    """Headings (from font sizes), paragraphs, lists and tables of each page, by pymupdf4llm's Markdown."""
    import pymupdf4llm  # the optional extra lmforge[pdf]; the recipe check names it when missing

    try:
        pages = pymupdf4llm.to_markdown(str(file), page_chunks=True, show_progress=False)
    except Exception as exc:  # MuPDF reports a damaged or encrypted file in several exception types
        raise UnreadableFile("unreadable file", f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    blocks: list[Block] = []
    empty: list[int] = []
    texts = without_running_lines([without_surrogates(page.get("text") or "") for page in pages])
    for number, text in enumerate(texts, start=1):
        found = _markdown_blocks(text)
        if not any(b.level == 0 for b in found):
            empty.append(number)
        for block in found:
            block.page = number  # block.line: the line in the page's Markdown
            if block.level:  # "## **2.1. Title**": the emphasis is layout, not part of the title
                block.title = re.sub(r"[*_`]+", "", block.title).strip()
                block.text = f"{'#' * block.level} {block.title}"
            if block.text.strip("#* _"):
                blocks.append(block)
    return _with_text(blocks, len(pages), empty, report)


def _pdf_pages(pdf: Any) -> tuple[list[Block], list[int]]:
    """The blocks of an open PDF's pages (an outline title above its page's text), and the pages without text."""
    titles = _pdf_outline(pdf)
    blocks: list[Block] = []
    empty: list[int] = []
    texts = []
    for index in range(len(pdf)):
        page = pdf[index]
        textpage = page.get_textpage()
        texts.append(without_surrogates(textpage.get_text_range()).replace("\r\n", "\n").replace("\r", "\n"))
        textpage.close()
        page.close()
    for index, text in enumerate(without_running_lines(texts)):
        text = text.strip()
        if not text:
            empty.append(index + 1)
            continue
        if index in titles:
            blocks.append(Block(f"# {titles[index]}", page=index + 1, level=1, title=titles[index]))
        blocks.append(Block(text, page=index + 1))
    return blocks, empty


PAGE_NUMBER = re.compile(
    r"[\W_]*(?:page|p\.|pg\.?|seite|p\u00e1gina|pagina)?\s*\d+(?:\s*(?:/|of|de|von)\s*\d+)?[\W_]*", re.I
)
"""A line that only numbers its page: ``7``, ``- 7 -``, ``Page 7 of 12``, ``7/12``."""


_NUMBERED = re.compile(r"(\d{1,4})\s+(\S.*)|(.*\S)\s+(\d{1,4})")
"""A line that starts or ends with a number: ``Chapter 4: Function reference 9``, ``8 Introduction``."""


def without_running_lines(pages: list[str], edge: int = 2) -> list[str]:
    """Page texts without their running headers and footers, among the first and last ``edge`` non-empty lines
    of each page: a line that recurs verbatim there on at least half the pages (three at least), a page
    number, a line that carries the page's number (``Chapter 4: Function reference 9``: the same two or
    more words, and a number that grows with the page, on three pages or more), and a first or last line of
    three words or more found first or last on three pages (a chapter's running title on that chapter's
    pages). Left in, each page's header would become a tiny passage that matches every question, or be
    printed into a sentence across a page break."""
    if len(pages) < 3:
        return pages

    def plain(line: str) -> str:
        return " ".join(line.split()).strip("*_ ")

    def keys(line: str, page: int) -> list[tuple[Any, ...]]:
        """What a line counts as: ``("line", text)``, ``("page number",)``, ``("numbered", words, offset)``."""
        text = plain(line)
        if PAGE_NUMBER.fullmatch(text):
            return [("page number",)]
        numbered = _NUMBERED.fullmatch(text)
        if numbered is None:
            return [("line", text)]
        number, words = (numbered[1], numbered[2]) if numbered[1] else (numbered[4], numbered[3])
        if len(words.split()) < 2:  # "Article 5" atop page 5: a heading that happens to follow the pages
            return [("line", text)]
        return [("line", text), ("numbered", words, page - int(number))]  # same words, same page offset

    def edges(lines: list[str]) -> list[int]:
        filled = [i for i, line in enumerate(lines) if line.strip()]
        return sorted(set(filled[:edge] + filled[-edge:]))

    def outermost(lines: list[str]) -> set[tuple[Any, ...]]:
        """The first and last non-empty lines, when they have three words or more (a chapter's running title)."""
        filled = [plain(line) for line in lines if line.strip()]
        return {("outer", line) for line in filled[:1] + filled[-1:] if len(line.split()) >= 3}

    split = [page.split("\n") for page in pages]
    counts: dict[tuple[Any, ...], int] = {}
    for page, lines in enumerate(split):
        for found in {k for i in edges(lines) for k in keys(lines[i], page)} | outermost(lines):
            counts[found] = counts.get(found, 0) + 1
    pages_needed = {"line": max(3, len(pages) // 2), "page number": max(3, len(pages) // 2), "numbered": 3, "outer": 3}
    running = {
        ("line", found[1]) if found[0] == "outer" else found  # a running title is dropped at any page edge
        for found, n in counts.items()
        if found != ("line", "") and n >= pages_needed[found[0]]
    }
    if not running:
        return pages
    kept = []
    for page, lines in enumerate(split):
        drop = {i for i in edges(lines) if running.intersection(keys(lines[i], page))}
        kept.append("\n".join(line for i, line in enumerate(lines) if i not in drop))
    return kept


def _pdf_outline(pdf: Any) -> dict[int, str]:
    """Page index -> title of the first outline (bookmark) entry that starts on it."""
    titles: dict[int, str] = {}
    try:
        for item in pdf.get_toc():
            if item.page_index is not None and item.title:
                titles.setdefault(item.page_index, without_surrogates(item.title.strip()))
    except Exception:  # a broken outline must not cost the text
        return {}
    return titles


def _docx_blocks(file: Path) -> list[Block]:
    """Paragraphs and tables in document order; ``Heading N`` and ``Title`` styles are headings."""
    try:
        return _docx_read(file)
    except Exception as exc:  # a damaged package fails anywhere: zip, deflate, XML, a part parsed when first used
        raise UnreadableFile("unreadable file", f"not a readable DOCX file ({type(exc).__name__}: {exc})") from None


def _docx_read(file: Path) -> list[Block]:
    import docx
    from docx.table import Table

    document = docx.Document(str(file))
    blocks = []
    for number, item in enumerate(document.iter_inner_content(), start=1):
        if isinstance(item, Table):
            rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in item.rows]
            text = "\n".join(r for r in rows if r.strip(" |"))
            if text:
                blocks.append(Block(text, number))
            continue
        text = item.text.strip()
        if not text:
            continue
        style = (item.style.name if item.style is not None else "") or ""
        level = _docx_heading_level(style)
        if level:
            blocks.append(Block(f"{'#' * level} {text}", number, level=level, title=text))
        else:
            blocks.append(Block(text, number))
    return blocks


def _docx_heading_level(style: str) -> int:
    if style == "Title":
        return 1
    if style.startswith("Heading"):
        digits = style.removeprefix("Heading").strip()
        return min(int(digits), 6) if digits.isdigit() else 1
    return 0


# ---------------------------------------------------------------- units


def split_blocks(blocks: list[Block], unit: str, chunk_chars: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (text, location) units: ``section`` (cut to ``chunk_chars``), ``line`` or ``document``."""
    if not blocks:
        return
    if unit == "document":
        yield "\n\n".join(b.text for b in blocks), _where(blocks[0].line, blocks[0].page, "")
        return
    if unit == "line":
        for block in blocks:
            for offset, line in enumerate(block.text.split("\n")):
                if line.strip():
                    number = (block.line or 1) + offset
                    yield line.strip(), _where(number, block.page, "")
        return
    for heading, section in _sections(blocks):
        parts = [(b.text, b.line) for b in section]
        for text, line in chunk_parts(parts, chunk_chars):
            yield text, _where(line, section[0].page, heading)


def _where(line: int | None, page: int | None, heading: str) -> dict[str, Any]:
    where: dict[str, Any] = {}
    if page is not None:
        where["page"] = page
    if line is not None:
        where["line"] = line
    if heading:
        where["heading"] = heading
    return where


def _sections(blocks: list[Block]) -> Iterator[tuple[str, list[Block]]]:
    """Group blocks into sections: a new one at each heading and each new PDF page once the current one has
    body text (so a heading directly above another heading stays with it)."""
    path: list[tuple[int, str]] = []
    current: list[Block] = []
    has_body = False  # a flag, not a scan of `current`: thousands of headings in a row stay linear
    heading = ""
    for block in blocks:
        new_page = bool(current) and block.page is not None and block.page != current[-1].page
        if (block.level or new_page) and has_body:
            yield heading, current
            current, has_body = [], False
        has_body = has_body or block.level == 0
        if block.level:
            path = [(level, title) for level, title in path if level < block.level]
            path.append((block.level, block.title))
            heading = " > ".join(title for _, title in path)
        current.append(block)
    if current:
        yield heading, current


def chunk_parts(parts: list[tuple[str, int | None]], limit: int) -> list[tuple[str, int | None]]:
    """Join paragraphs into chunks of at most ``limit`` characters, cutting long paragraphs at sentences.

    Each chunk keeps the line of its first paragraph (a cut paragraph: the line its piece starts on).
    """
    pieces: list[tuple[str, int | None]] = []
    for text, line in parts:
        if len(text) <= limit:
            pieces.append((text, line))
        else:
            pieces.extend((piece, None if line is None else line + newlines) for piece, newlines in _cut(text, limit))
    chunks: list[tuple[str, int | None]] = []
    current: list[tuple[str, int | None]] = []
    size = 0
    for text, line in pieces:
        if current and size + 2 + len(text) > limit:
            chunks.append(("\n\n".join(t for t, _ in current), current[0][1]))
            current, size = [], 0
        current.append((text, line))
        size += len(text) + (2 if size else 0)
    if current:
        chunks.append(("\n\n".join(t for t, _ in current), current[0][1]))
    return chunks


def _cut(text: str, limit: int) -> Iterator[tuple[str, int]]:
    """Pieces of at most ``limit`` characters, cut after sentence ends (else spaces, else anywhere),
    each with the number of newlines before it in ``text``."""
    start = 0
    newlines = 0
    while start < len(text):
        end = min(start + limit, len(text))
        if end < len(text):
            cuts = [m.end() for m in _SENTENCE_END.finditer(text, start, end) if m.end() > start + limit // 4]
            space = text.rfind(" ", start + limit // 4, end)
            end = cuts[-1] if cuts else (space + 1 if space > 0 else end)
        raw = text[start:end]
        lead = len(raw) - len(raw.lstrip())
        if raw.strip():
            yield raw.strip(), newlines + raw.count("\n", 0, lead)
        newlines += raw.count("\n")
        start = end
