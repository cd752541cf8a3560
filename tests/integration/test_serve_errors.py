"""A failure inside `lmforge serve` gives the client an opaque 500 with a request id, and the log the traceback.

The server is the production CLI and app with test-only crashes installed around it
(serve_with_faults.py): a prompt holding HANDLER_NEEDLE raises in the request handler, one holding
ENGINE_NEEDLE raises in the engine thread (its whole batch fails). The exception message is a
secret that must reach the server's log and never a client.
"""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest
from server_process import start_server, stop_server

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")

KEY = "errors-key"
SECRET = "secret-detail-7f3a /home/alice/private.txt"
HANDLER_NEEDLE = "crash the handler"
ENGINE_NEEDLE = "crash the engine"
CRASHES = {"crashes": [[HANDLER_NEEDLE, "handler", SECRET], [ENGINE_NEEDLE, "engine", SECRET]]}
REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-errors") / "server.log"
    env = {**os.environ, "LMFORGE_API_KEY": KEY}
    args = [str(tiny_model_dir), "--name", "tiny", "--threads", "1", "--max-tokens-limit", "64"]
    process, url = start_server(args, env, log, faults=CRASHES)
    yield {"url": url, "log": log}
    stop_server(process)


def post(served, path: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.post(served["url"] + path, json=body, headers=headers, timeout=60)


def assert_opaque_500(response: httpx.Response) -> str:
    """The 500 body names only the request id, which is also the x-request-id header; returns the id."""
    assert response.status_code == 500, response.text
    request_id = response.headers["x-request-id"]
    assert REQUEST_ID.match(request_id)
    assert response.json() == {
        "error": {
            "message": f"internal error (request id {request_id})",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert "secret" not in response.text and "RuntimeError" not in response.text
    return request_id


def logged(served, request_id: str) -> str:
    """The server log from the first line naming ``request_id`` to the end (the traceback follows it)."""
    text = served["log"].read_text()
    assert request_id in text, text
    return text[text.rfind("\n", 0, text.index(request_id)) + 1 :]


def test_handler_exception_gives_an_opaque_500_and_a_logged_traceback(served):
    messages = [{"role": "user", "content": f"please {HANDLER_NEEDLE} now"}]
    response = post(served, "/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 4})
    request_id = assert_opaque_500(response)
    tail = logged(served, request_id)
    assert "Traceback" in tail and f"RuntimeError: {SECRET}" in tail
    assert "POST /v1/chat/completions" in tail


def test_engine_failure_gives_an_opaque_500_and_a_logged_traceback(served):
    response = post(served, "/v1/completions", {"model": "tiny", "prompt": f"now {ENGINE_NEEDLE}", "max_tokens": 4})
    request_id = assert_opaque_500(response)
    tail = logged(served, request_id)
    assert "generation failed" in tail and "Traceback" in tail and f"RuntimeError: {SECRET}" in tail


@pytest.mark.parametrize("needle", [ENGINE_NEEDLE, HANDLER_NEEDLE])
def test_failure_mid_stream_ends_the_stream_with_an_opaque_error_event(served, needle):
    body = {"model": "tiny", "messages": [{"role": "user", "content": needle}], "max_tokens": 4, "stream": True}
    response = post(served, "/v1/chat/completions", body)
    assert response.status_code == 200  # the stream had begun when the failure came
    request_id = response.headers["x-request-id"]
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    error = json.loads(events[-1])["error"]
    expected = {"message": f"internal error (request id {request_id})", "type": "server_error"}
    assert error == {**expected, "param": None, "code": None}
    assert "secret" not in response.text
    assert f"RuntimeError: {SECRET}" in logged(served, request_id)


def test_the_openai_client_sees_a_server_error_with_the_request_id(served):
    client = openai.OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.InternalServerError) as failure:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": HANDLER_NEEDLE}])
    request_id = failure.value.response.headers["x-request-id"]
    assert failure.value.message.endswith(f"internal error (request id {request_id})")
    assert failure.value.request_id == request_id  # the openai client reads x-request-id too


def test_ordinary_requests_still_work_and_carry_a_request_id(served):
    response = post(served, "/v1/completions", {"model": "tiny", "prompt": "The retirement age", "max_tokens": 3})
    assert response.status_code == 200 and REQUEST_ID.match(response.headers["x-request-id"])
    bad = post(served, "/v1/completions", {"model": "tiny", "prompt": 42})
    assert bad.status_code == 400 and REQUEST_ID.match(bad.headers["x-request-id"])
    assert bad.headers["x-request-id"] != response.headers["x-request-id"]
