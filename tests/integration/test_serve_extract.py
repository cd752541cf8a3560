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
    args = [str(run), "--threads", "1", "--max-upload-bytes", "200000"]
    process, url = start_server(args, env, root / "server.log")
    schema = json.loads((run / "seq2seq" / "schema.json").read_text(encoding="utf-8"))
    yield {"url": url, "schema": schema, "root": root, "log": root / "server.log"}
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
        (("big.txt", b"x" * 300_000, "text/plain"), 413, "request_too_large"),
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
    if name == "scan.pdf":
        assert "OCR" in error["message"]


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
