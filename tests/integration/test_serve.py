"""`lmforge serve` as a real process, called with the official `openai` client.

A tiny random Llama with two LoRA adapters (random, non-zero updates) is served on a free port
with an API key. Greedy replies are checked against transformers' own `generate` on the same
weights, so the batched decode loop, the adapter routing and the chat template are all verified.
The Host and Origin checks are exercised with httpx against the same process, with the headers a
browser would send; a second server, bound to 0.0.0.0 with a key, shows that it accepts any Host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from server_process import start_server, stop_server

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")

KEY = "test-key-123"
QUESTION = [{"role": "user", "content": "What is the retirement age in Kestria?"}]
ALLOWED_HOST = "lmforge.test"
ALLOWED_ORIGIN = "https://app.example"


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) A and B, so it changes the model's outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    a1 = make_adapter(tiny_model_dir, root / "a1", seed=1)
    a2 = make_adapter(tiny_model_dir, root / "a2", seed=2)
    # The old test-only fault switch must be dead: were it read, every generation request would get 429.
    env = {**os.environ, "LMFORGE_API_KEY": KEY, "LMFORGE_SERVE_FAULTS": json.dumps({"fail_first": 10**6})}
    args = [str(tiny_model_dir), "--name", "tiny", "--adapter", f"a1={a1}", "--adapter", f"a2={a2}"]
    args += ["--max-tokens-limit", "64", "--max-request-bytes", "20000", "--threads", "1"]
    args += ["--allowed-host", ALLOWED_HOST, "--allowed-origin", ALLOWED_ORIGIN]
    process, url = start_server(args, env, root / "server.log")
    yield {"url": url, "base": tiny_model_dir, "adapters": {"a1": a1, "a2": a2}, "log": root / "server.log"}
    stop_server(process)


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def reference_reply(base_dir: Path, adapter_dir: Path | None, messages: list[dict], max_new_tokens: int) -> str:
    """Greedy reply from transformers' own generate() on the same weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


def test_models_lists_base_and_adapters(client):
    ids = sorted(model.id for model in client.models.list().data)
    assert ids == ["a1", "a2", "tiny"]


def test_greedy_chat_matches_transformers_for_base_and_each_adapter(client, served):
    replies = {}
    for model_id in ["tiny", "a1", "a2"]:
        reply = client.chat.completions.create(model=model_id, messages=QUESTION, temperature=0, max_tokens=12)
        adapter = served["adapters"].get(model_id)
        assert reply.choices[0].message.content == reference_reply(served["base"], adapter, QUESTION, 12)
        assert reply.usage.completion_tokens <= 12
        replies[model_id] = reply.choices[0].message.content
    assert len(set(replies.values())) == 3, f"adapters did not change the output: {replies}"


def test_streaming_equals_non_streaming(client):
    whole = client.chat.completions.create(model="a1", messages=QUESTION, temperature=0, max_tokens=16)
    stream = client.chat.completions.create(
        model="a1", messages=QUESTION, temperature=0, max_tokens=16, stream=True, stream_options={"include_usage": True}
    )
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content
    assert reasons[-1] == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_stop_and_seed_are_honoured(client):
    long = client.completions.create(model="tiny", prompt="The retirement age", temperature=0, max_tokens=20)
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 20
    text = long.choices[0].text
    stop = text[4:7]
    assert stop and stop.strip(), f"need a visible stop string in {text!r}"
    cut = client.completions.create(
        model="tiny", prompt="The retirement age", temperature=0, max_tokens=20, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    sampled = [
        client.chat.completions.create(model="a2", messages=QUESTION, temperature=1.0, top_p=0.9, seed=7, max_tokens=10)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_bad_requests_get_openai_style_errors(client, served):
    url = served["url"] + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = httpx.post(url, content=b"{not json", headers=headers)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = httpx.post(url, content=json.dumps({"model": "tiny", "messages": "x" * 30000}), headers=headers)
    assert response.status_code == 413 and "limit" in response.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert "a1" in unknown.value.message and unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as huge:
        client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=100_000)
    assert huge.value.code == "max_tokens_too_large" and huge.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as extra:
        client.chat.completions.create(model="tiny", messages=QUESTION, extra_body={"bogus": 1})
    assert "bogus" in extra.value.message
    with pytest.raises(openai.BadRequestError) as rag:
        client.chat.completions.create(model="tiny", messages=QUESTION, extra_body={"rag": True})
    assert rag.value.param == "rag"
    keyless = openai.OpenAI(base_url=served["url"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        keyless.chat.completions.create(model="tiny", messages=QUESTION)
    assert httpx.post(url, json={"model": "tiny", "messages": QUESTION}).status_code == 401


def test_32_concurrent_clients_are_batched_without_errors(client, served):
    def one(i: int) -> str:
        model_id = ["tiny", "a1", "a2"][i % 3]
        messages = [{"role": "user", "content": f"Tell me fact {i}."}]
        if i % 4 == 0:
            stream = client.chat.completions.create(model=model_id, messages=messages, max_tokens=8, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        reply = client.chat.completions.create(model=model_id, messages=messages, max_tokens=8, temperature=0)
        return reply.choices[0].message.content

    before = httpx.get(served["url"] + "/health").json()["engine"]
    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(one, range(32)))
    assert len(replies) == 32 and all(isinstance(r, str) for r in replies)
    after = httpx.get(served["url"] + "/health").json()["engine"]
    assert after["requests"] - before["requests"] == 32
    assert after["max_batch"] > 1, "concurrent requests were not batched together"
    # batching must not change greedy results
    alone = client.chat.completions.create(
        model="a1", messages=[{"role": "user", "content": "Tell me fact 1."}], max_tokens=8, temperature=0
    )
    assert replies[1] == alone.choices[0].message.content


def test_binding_beyond_loopback_needs_an_api_key(tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_API_KEY"}
    command = [sys.executable, "-m", "lmforge.cli", "serve", str(tiny_model_dir), "--host", "0.0.0.0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "LMFORGE_API_KEY" in result.stderr


# ---------------------------------------------------------------- Host and Origin


def get_models(url: str, headers: dict[str, str], key: str | None = KEY) -> httpx.Response:
    """GET /v1/models with extra headers (httpx sends the Host header given here instead of its own)."""
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{url}/v1/models", headers={**auth, **headers}, timeout=30)


def assert_refused(response: httpx.Response, code: str) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code


def test_foreign_host_header_is_refused(served):
    """DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 sends Host: evil.example."""
    port = served["url"].rsplit(":", 1)[1]
    for host in ["evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}", "127.0.0.1.nip.io"]:
        response = get_models(served["url"], {"Host": host})
        assert_refused(response, "host_not_allowed")
        assert "--allowed-host" in response.json()["error"]["message"]
    chat = httpx.post(
        f"{served['url']}/v1/chat/completions",
        json={"model": "tiny", "messages": QUESTION, "max_tokens": 2},
        headers={"Host": "evil.example", "Authorization": f"Bearer {KEY}"},
    )
    assert_refused(chat, "host_not_allowed")
    assert_refused(httpx.get(f"{served['url']}/health", headers={"Host": "evil.example"}), "host_not_allowed")


def test_loopback_host_headers_are_accepted_with_or_without_the_port(served):
    port = served["url"].rsplit(":", 1)[1]
    for name in ["localhost", "127.0.0.1", "[::1]", "LocalHost"]:
        for host in [name, f"{name}:{port}"]:
            assert get_models(served["url"], {"Host": host}).status_code == 200, host


def test_allowed_host_option_extends_the_list(served):
    port = served["url"].rsplit(":", 1)[1]
    assert get_models(served["url"], {"Host": ALLOWED_HOST}).status_code == 200
    assert get_models(served["url"], {"Host": f"{ALLOWED_HOST}:{port}"}).status_code == 200
    assert_refused(get_models(served["url"], {"Host": f"other.{ALLOWED_HOST}"}), "host_not_allowed")


def test_cross_site_origin_is_refused_even_with_the_key(served):
    """A page on another site can POST (a 'simple' text/plain request needs no preflight): its Origin gives it away."""
    for origin in ["https://evil.example", "http://localhost.evil.example", "null", "http://127.0.0.1.nip.io"]:
        assert_refused(get_models(served["url"], {"Origin": origin}), "origin_not_allowed")
    simple_post = httpx.post(
        f"{served['url']}/v1/completions",
        content=json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 2}),
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"},
    )
    assert_refused(simple_post, "origin_not_allowed")
    preflight = httpx.options(
        f"{served['url']}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers


def test_own_and_allowed_origins_are_accepted_other_local_ports_refused(served):
    response = get_models(served["url"], {"Origin": ALLOWED_ORIGIN})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    own = served["url"].rstrip("/")
    assert get_models(served["url"], {"Origin": own}).status_code == 200  # a page the server itself serves
    for origin in ["http://localhost:3000", "http://127.0.0.1:8080", "http://[::1]:5173"]:
        assert_refused(get_models(served["url"], {"Origin": origin}), "origin_not_allowed")
    preflight = httpx.options(
        f"{served['url']}/v1/chat/completions",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    # no Origin at all (curl, the openai client, any non-browser client) is the ordinary case
    assert get_models(served["url"], {}).status_code == 200


def test_old_fault_switch_is_not_read_by_the_production_server(client, served):
    reply = client.completions.create(model="tiny", prompt="The retirement age", max_tokens=2)
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert "fault" not in served["log"].read_text().lower()


def test_beyond_loopback_with_a_key_any_host_is_accepted(tiny_model_dir, tmp_path):
    """Bound to 0.0.0.0 (clients use names the server cannot know) the key is the protection, not the Host."""
    env = {**os.environ, "LMFORGE_API_KEY": KEY}
    args = [str(tiny_model_dir), "--host", "0.0.0.0", "--threads", "1"]
    process, url = start_server(args, env, tmp_path / "server.log")
    try:
        for host in ["box.lan:8000", "evil.example", "10.1.2.3"]:
            assert get_models(url, {"Host": host}).status_code == 200, host
            assert get_models(url, {"Host": host}, key=None).status_code == 401
        assert_refused(get_models(url, {"Origin": "https://evil.example"}), "origin_not_allowed")
    finally:
        stop_server(process)
    assert "Host header: any" in (tmp_path / "server.log").read_text()
