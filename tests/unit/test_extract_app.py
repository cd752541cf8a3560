"""The extraction app in-process with a stand-in model: the reply's shape, invalid outputs, batching, errors."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from lmforge.serve.extract import Extraction, Extractor, build_extraction_app
from lmforge.serve.server import ServeSettings

SCHEMA = {
    "type": "object",
    "properties": {"claimant": {"type": "string"}, "monthly_amount": {"type": "integer"}},
    "required": ["claimant"],
}


class Scripted(Extractor):
    """Answers each document with the JSON written in it after 'OUTPUT:' (or the text itself), and
    records the batches it was given."""

    def __init__(self):
        super().__init__("letters", None, None, SCHEMA, None, 512)
        self.batches: list[list[str]] = []

    def extract(self, documents):
        self.batches.append(list(documents))
        return [Extraction(d.split("OUTPUT:")[-1].strip(), len(d.split()), 7, False) for d in documents]


@pytest.fixture
def client():
    extractor = Scripted()
    app = build_extraction_app(extractor, ServeSettings(batch_wait_ms=200, max_upload_bytes=5000), api_key="k")
    with TestClient(app) as test_client:
        test_client.headers["Authorization"] = "Bearer k"
        yield test_client, extractor


def test_valid_fields_come_back_with_usage(client):
    test_client, _ = client
    text = 'A letter. OUTPUT: {"claimant": "Mira", "monthly_amount": 400}'
    reply = test_client.post("/v1/extract", json={"text": text})
    body = reply.json()
    assert reply.status_code == 200 and body["valid"] and body["fields"] == {"claimant": "Mira", "monthly_amount": 400}
    assert body["usage"]["output_tokens"] == 7 and "error" not in body and body["model"] == "letters"


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("not json at all", "not one JSON object"),
        ('["a", "list"]', "not one JSON object"),
        ('{"monthly_amount": "four hundred"}', "monthly_amount: 'four hundred' is not of type 'integer'"),
        ('{"monthly_amount": 400}', "'claimant' is a required property"),
    ],
)
def test_an_invalid_output_is_a_clear_error_object_not_a_server_error(client, output, problem):
    test_client, _ = client
    reply = test_client.post("/v1/extract", json={"text": f"A letter. OUTPUT: {output}"})
    body = reply.json()
    assert reply.status_code == 200 and body["valid"] is False and body["fields"] is None
    assert body["error"]["type"] == "invalid_output" and any(problem in p for p in body["error"]["problems"])
    assert body["raw"] == output


def test_requests_that_arrive_together_share_a_batch(client):
    test_client, extractor = client
    texts = [f'Letter {i}. OUTPUT: {{"claimant": "C{i}"}}' for i in range(5)]
    with ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(lambda t: test_client.post("/v1/extract", json={"text": t}).json(), texts))
    assert sorted(r["fields"]["claimant"] for r in replies) == [f"C{i}" for i in range(5)]  # each got its own
    assert len(extractor.batches) < 5 and sum(map(len, extractor.batches)) == 5


def test_uploads_are_read_by_the_data_readers(client):
    test_client, _ = client
    html = b'<html><body><nav>menu</nav><p>A letter. OUTPUT: {"claimant": "Ilse"}</p></body></html>'
    reply = test_client.post("/v1/extract", files={"file": ("letter.html", html, "text/html")})
    assert reply.status_code == 200 and reply.json()["fields"] == {"claimant": "Ilse"}
    too_big = test_client.post("/v1/extract", files={"file": ("big.txt", b"x" * 6000, "text/plain")})
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"


def test_the_key_is_required_and_health_is_open(client):
    test_client, _ = client
    refused = test_client.post("/v1/extract", json={"text": "x"}, headers={"Authorization": ""})
    assert refused.status_code == 401
    assert test_client.get("/health", headers={"Authorization": ""}).json()["kind"] == "extraction"
    assert json.loads(test_client.get("/v1/models").text)["data"][0]["schema"] == SCHEMA
