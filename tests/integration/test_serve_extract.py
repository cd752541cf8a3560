"""`lmforge serve` on a seq2seq run: the extract-metadata recipe on a tiny T5, served as a real process.

A document goes in as JSON text and as an uploaded PDF (through the data readers); the fields come
back as a JSON object valid against the run's schema. Malformed uploads get 4xx with the OpenAI
error shape, never a 500; the API key is required as for chat servers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from conftest import make_pdf
from server_process import start_server, stop_server
from test_train_models import build_tiny_t5, letters, save_model
from test_train_recipes import run_cli

from lmforge.serve.extract import schema_problems

pytestmark = pytest.mark.integration
KEY = "extract-key"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    model_dir = save_model(*build_tiny_t5(), root / "t5")
    # Enough steps for a 2-layer T5 to write the JSON object's shape (its values are mostly wrong).
    run = run_cli(
        "extract-metadata",
        root,
        f"model.ref={model_dir}",
        "seq2seq.max_steps=300",
        "seq2seq.lr=1.0e-2",
        "seq2seq.max_input_length=256",
        "seq2seq.max_output_length=96",
        "seq2seq.precision=fp32",
        "seq2seq.compare_base=false",
    )
    env = {**os.environ, "LMFORGE_API_KEY": KEY}
    args = [str(run), "--threads", "1", "--max-upload-bytes", "1000000", "--max-uncompressed-bytes", "5000000"]
    process, url = start_server(args, env, root / "server.log")
    schema = json.loads((run / "seq2seq" / "schema.json").read_text(encoding="utf-8"))
    yield {"url": url, "schema": schema, "root": root, "log": root / "server.log", "run": run, "pid": process.pid}
    stop_server(process)


def post(served, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
    return httpx.post(f"{served['url']}/v1/extract", headers=headers, timeout=120, **kwargs)


def assert_schema_valid(reply: dict, schema: dict) -> None:
    assert reply["object"] == "extraction" and reply["valid"], (reply["raw"], reply.get("error"))
    assert isinstance(reply["fields"], dict) and reply["fields"] and schema_problems(reply["fields"], schema) == []
    assert reply["usage"]["input_tokens"] > 10 and reply["usage"]["output_tokens"] > 5


def test_a_text_and_an_uploaded_pdf_give_schema_valid_fields(served):
    letter = letters(1, offset=40)[0]["prompt"]
    by_text = post(served, json={"text": letter})
    assert by_text.status_code == 200, by_text.text
    assert_schema_valid(by_text.json(), served["schema"])
    pdf = make_pdf(served["root"] / "letter.pdf", [letter[:80], letter[80:]])
    by_file = post(served, files={"file": ("letter.pdf", pdf.read_bytes(), "application/pdf")})
    assert by_file.status_code == 200, by_file.text
    assert_schema_valid(by_file.json(), served["schema"])
    models = httpx.get(f"{served['url']}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert models["data"][0]["schema"] == served["schema"]


def test_requests_sent_together_are_extracted_in_batches(served):
    from concurrent.futures import ThreadPoolExecutor

    before = httpx.get(f"{served['url']}/health").json()["batches"]
    documents = [row["prompt"] for row in letters(6, offset=50)]
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda text: post(served, json={"text": text}), documents))
    assert all(r.status_code == 200 and r.json()["object"] == "extraction" for r in replies)
    after = httpx.get(f"{served['url']}/health").json()["batches"]
    assert after - before < len(documents)  # at least two of them shared a batch


@pytest.mark.parametrize(
    ("upload", "status", "code"),
    [
        (("letter.pdf", b"%PDF-1.4 this is not a PDF", "application/pdf"), 422, "unreadable_file"),
        (("scan.pdf", None, "application/pdf"), 422, "unreadable_file"),  # no text layer: the OCR hint
        (("blank.txt", b"  \n\n ", "text/plain"), 422, "empty_document"),
        (("letter.exe", b"MZ\x90\x00", "application/octet-stream"), 415, "unsupported_media_type"),
        (("big.txt", b"x" * 1_500_000, "text/plain"), 413, "request_too_large"),
        (("letter.pdf", b"A plain letter, not a PDF.", "application/pdf"), 415, "unsupported_media_type"),
        (("letter.txt", b"%PDF-1.4 a PDF named as text", "text/plain"), 415, "unsupported_media_type"),
        (("letter.docx", b"PK\x03\x04 not a zip at all", "application/octet-stream"), 415, "unsupported_media_type"),
    ],
)
def test_a_malformed_upload_gets_a_4xx_with_a_clear_error(served, upload, status, code):
    name, data, kind = upload
    if data is None:  # a page with no text layer, as a scanned PDF has
        data = make_pdf(served["root"] / "scan.pdf", [None]).read_bytes()
    reply = post(served, files={"file": (name, data, kind)})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and error["message"]
    assert_no_internals(reply)
    if name == "scan.pdf":
        assert "OCR" in error["message"]


def assert_no_internals(reply: httpx.Response) -> None:
    """A 4xx body says what was wrong with the request, never a library's exception text or a server path."""
    for leak in ("/tmp", "lmforge-upload", "Traceback", "Error(", "Pdfium", "BadZip", "errno", "site-packages"):
        assert leak not in reply.text, (leak, reply.text)


def test_bad_json_requests_and_a_missing_key_are_refused(served):
    assert post(served, json={"txt": "a letter"}).status_code == 400
    assert post(served, json={"text": "   "}).status_code == 400
    assert post(served, content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert post(served, files={"note": (None, "no file")}).status_code == 400  # a form without a file
    assert post(served, content=b"x", headers={"Content-Type": "image/png"}).status_code == 415
    refused = httpx.post(f"{served['url']}/v1/extract", json={"text": "a letter"}, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert "Traceback" not in Path(served["log"]).read_text(encoding="utf-8")  # no 500 on the way


def test_an_output_that_breaks_the_schema_is_reported_not_a_server_error():
    schema = {"type": "object", "properties": {"monthly_amount": {"type": "integer"}}, "required": ["claimant"]}
    problems = schema_problems({"monthly_amount": "four hundred"}, schema)
    assert any(p.startswith("monthly_amount:") for p in problems) and any("claimant" in p for p in problems)


def docx_bomb(expanded: int) -> bytes:
    """A DOCX-shaped zip whose document part is ``expanded`` bytes of zeros (compresses ~1000x)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as part:
            chunk = b"\0" * 1_000_000
            for _ in range(expanded // len(chunk)):
                part.write(chunk)
    return buffer.getvalue()


def rss_mb(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def test_a_zip_bomb_and_a_2000_page_pdf_are_refused_quickly_with_memory_bounded(served):
    import time

    bomb = docx_bomb(300_000_000)
    assert len(bomb) < 1_000_000  # under the upload limit: the zip's directory is what refuses it
    pages = make_pdf(served["root"] / "long.pdf", [f"p{n}" for n in range(2000)]).read_bytes()
    assert len(pages) < 1_000_000
    before = rss_mb(served["pid"])
    for name, data, code in [("bomb.docx", bomb, "document_too_large"), ("long.pdf", pages, "document_too_large")]:
        started = time.monotonic()
        reply = post(served, files={"file": (name, data, "application/octet-stream")})
        assert reply.status_code == 413 and reply.json()["error"]["code"] == code, reply.text
        assert time.monotonic() - started < 20, name
        assert_no_internals(reply)
    assert "pages" in reply.json()["error"]["message"]
    assert rss_mb(served["pid"]) - before < 150  # the server never held the expanded bomb


def test_a_full_queue_answers_429(served, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    env = {**os.environ, "LMFORGE_API_KEY": KEY}
    args = [str(served["run"]), "--threads", "1", "--max-queue", "1", "--max-batch-size", "1"]
    process, url = start_server(args, env, tmp_path / "busy.log")
    try:
        documents = [row["prompt"] for row in letters(16, offset=70)]
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda text: post({"url": url}, json={"text": text}), documents))
    finally:
        stop_server(process)
    statuses = sorted({r.status_code for r in replies})
    assert statuses == [200, 429], statuses
    busy = next(r for r in replies if r.status_code == 429).json()["error"]
    assert busy["code"] == "server_busy" and "--max-queue" in busy["message"]


@pytest.mark.slow
def test_extraction_soak_mixed_uploads_keep_memory_bounded(served):
    """120 uploads, 4 at a time: good letters, bombs, long and damaged PDFs, lying names. No 5xx; the server's
    memory (its reading children included) stays within 200 MiB of where it started."""
    from concurrent.futures import ThreadPoolExecutor

    letter = letters(1, offset=90)[0]["prompt"]
    kinds = [
        ("letter.pdf", make_pdf(served["root"] / "soak.pdf", [letter[:80], letter[80:]]).read_bytes()),
        ("bomb.docx", docx_bomb(300_000_000)),
        ("long.pdf", make_pdf(served["root"] / "soak-long.pdf", [f"p{n}" for n in range(2000)]).read_bytes()),
        ("broken.pdf", b"%PDF-1.4 broken"),
        ("lying.pdf", b"just text"),
        ("letter.txt", letter.encode()),
    ]
    uploads = [kinds[n % len(kinds)] for n in range(120)]
    before = rss_mb(served["pid"])
    peak = [before]

    def send(upload: tuple[str, bytes]) -> int:
        reply = post(served, files={"file": (upload[0], upload[1], "application/octet-stream")})
        peak.append(rss_mb(served["pid"]))
        return reply.status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(send, uploads))
    assert all(status < 500 for status in statuses), statuses
    assert statuses.count(200) == 40  # the two good kinds, 20 each
    assert max(peak) - before < 200, (before, max(peak))
