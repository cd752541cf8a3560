"""`lmforge serve RUN --rag` as a real process, called with the official `openai` client.

A tiny run (data -> index -> LoRA sft on a tiny random Llama, the packaged all-MiniLM-L6-v2 as
embedder) is served with its retrieval index. The tests check that a ``"rag": true`` request cites
the indexed documents (the one that answers the question first), that the passages really reach the
prompt (exact prompt token count, and a scripted reply keyed on a passage's text), that a stream
carries the citations in its first chunk, and that concurrent retrieval gives every request its own
passages. The 400 for ``"rag": true`` on a server without an index is in test_serve.py.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from server_process import start_server, stop_server

from lmforge.rundir import StageDir

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")

TOP_K = 2
NEEDLE = "brass telescope"
"""Words of the observatory document only: the server answers a prompt that contains them with SCRIPTED."""
SCRIPTED = "the passage reached the prompt"

DOCS = {
    # file stem: (document body, a question it answers)
    "observatory": (
        "The hill observatory opens its brass telescope to visitors on clear Friday nights.",
        "When can visitors look through the observatory telescope?",
    ),
    "library": (
        "Borrowed library books must come back within 21 days; late returns cost 50 cents a day.",
        "How long may I keep borrowed library books?",
    ),
    "ferry": (
        "The island ferry leaves the north pier every 40 minutes between 6 am and midnight.",
        "How often does the island ferry leave the north pier?",
    ),
    "bakery": (
        "The village bakery bakes rye bread with caraway seeds every Tuesday morning.",
        "Which day does the village bakery bake rye bread?",
    ),
    "museum": (
        "Entry to the fossil museum is free for children under twelve.",
        "Who gets free entry to the fossil museum?",
    ),
}


def chat(question: str, answer: str, name: str) -> dict:
    turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": turns, "meta": {"answer": answer, "article": name}}


@pytest.fixture(scope="module")
def rag_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished data -> index -> sft run with five one-fact documents."""
    from lmforge.config import load_recipe
    from lmforge.pipeline import run_recipe

    root = tmp_path_factory.mktemp("serve-rag")
    (root / "docs").mkdir()
    for name, (body, _) in DOCS.items():
        (root / "docs" / f"{name}.md").write_text(f"# {name.title()}\n\n{body}\n", encoding="utf-8")
    rows = [chat(question, body, name) for name, (body, question) in DOCS.items()]
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "recipe.yaml").write_text(
        f"""
name: tiny-rag
run_dir: {root / "runs"}
stages: [data, index, sft]
model: {{ref: {tiny_model_dir}}}
data:
  sources:
    - {{path: qa.jsonl, split: train}}
    - {{path: qa.jsonl, split: test}}
    - {{path: docs, split: documents}}
index: {{top_k: {TOP_K}}}
sft: {{epochs: 1, max_steps: 2, lr: 1.0e-3, batch_size: 4, max_length: 256, precision: fp32}}
eval: {{sets: [test]}}
""",
        encoding="utf-8",
    )
    recipe = load_recipe(root / "recipe.yaml")
    run_recipe(recipe)
    return recipe.run_path()


@pytest.fixture(scope="module")
def served(rag_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-rag-log") / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_API_KEY"}
    args = [str(rag_run), "--rag", "--threads", "1", "--max-tokens-limit", "64"]
    process, url = start_server(args, env, log, faults={"replies": [[NEEDLE, SCRIPTED]]})
    yield {"url": url, "run": rag_run, "log": log}
    stop_server(process)


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served["url"] + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, question: str, **options):
    messages = [{"role": "user", "content": question}]
    return client.chat.completions.create(model="tiny-rag", messages=messages, temperature=0, **options)


def expected_prompt_tokens(run: Path, question: str, citations: list[dict] | None) -> int:
    """Tokens of the prompt the server should build: the chat template over ``context_messages``."""
    from transformers import AutoTokenizer

    from lmforge.records import context_messages

    adapter = StageDir.open(run, "sft").manifest["outputs"]["adapter"]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    messages = [{"role": "user", "content": question}]
    if citations is not None:
        messages = context_messages(messages, citations)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def test_models_are_the_run_base_and_its_adapter(client):
    assert sorted(m.id for m in client.models.list().data) == ["base", "tiny-rag"]


@pytest.mark.parametrize("name", ["library", "ferry", "museum"])
def test_rag_request_cites_the_document_that_answers_first(client, name):
    _, question = DOCS[name]
    reply = ask(client, question, max_tokens=4, extra_body={"rag": True})
    citations = reply.model_extra["citations"]
    assert [c["index"] for c in citations] == list(range(1, TOP_K + 1)), "the index's top_k passages, numbered"
    indexed = {f"docs/{stem}.md" for stem in DOCS}
    for citation in citations:
        assert set(citation) == {"index", "id", "source", "text", "score"}
        assert citation["source"]["path"] in indexed
    assert citations[0]["source"]["path"] == f"docs/{name}.md"
    assert citations[0]["text"].strip() == DOCS[name][0]
    assert len({c["source"]["path"] for c in citations}) == TOP_K
    assert [c["score"] for c in citations] == sorted((c["score"] for c in citations), reverse=True)


def test_passages_reach_the_prompt(client, served):
    _, question = DOCS["library"]
    plain = ask(client, question, max_tokens=4)
    cited = ask(client, question, max_tokens=4, extra_body={"rag": True})
    assert "citations" not in (plain.model_extra or {})
    citations = cited.model_extra["citations"]
    assert plain.usage.prompt_tokens == expected_prompt_tokens(served["run"], question, None)
    assert cited.usage.prompt_tokens == expected_prompt_tokens(served["run"], question, citations)
    assert cited.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    # `rag: false` is the same as leaving it out on a server started without --rag-default
    off = ask(client, question, max_tokens=4, extra_body={"rag": False})
    assert "citations" not in (off.model_extra or {}) and off.usage.prompt_tokens == plain.usage.prompt_tokens

    # The test-only faults (serve_with_faults.py) answer SCRIPTED when the prompt holds NEEDLE, which only the
    # observatory document does: so the retrieved passage's own text is in the prompt.
    _, about_telescope = DOCS["observatory"]
    assert NEEDLE not in about_telescope
    without = ask(client, about_telescope, max_tokens=4)
    assert without.choices[0].message.content != SCRIPTED
    with_rag = ask(client, about_telescope, max_tokens=4, extra_body={"rag": True})
    assert with_rag.model_extra["citations"][0]["source"]["path"] == "docs/observatory.md"
    assert with_rag.choices[0].message.content == SCRIPTED


def test_stream_carries_the_citations_in_its_first_chunk(client):
    _, question = DOCS["ferry"]
    whole = ask(client, question, max_tokens=8, extra_body={"rag": True})
    stream = ask(
        client, question, max_tokens=8, stream=True, stream_options={"include_usage": True}, extra_body={"rag": True}
    )
    chunks = list(stream)
    assert chunks[0].model_extra["citations"] == whole.model_extra["citations"]
    assert all("citations" not in (chunk.model_extra or {}) for chunk in chunks[1:])
    text = "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)
    assert text == whole.choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == whole.usage.prompt_tokens
    plain = list(ask(client, question, max_tokens=2, stream=True))
    assert "citations" not in (plain[0].model_extra or {})


def test_concurrent_rag_requests_each_get_their_own_passages(client, served):
    names = list(DOCS) * 2

    def one(name: str) -> str:
        reply = ask(client, DOCS[name][1], max_tokens=2, extra_body={"rag": True})
        return reply.model_extra["citations"][0]["source"]["path"]

    before = httpx.get(served["url"] + "/health").json()["engine"]
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        firsts = list(pool.map(one, names))
    assert firsts == [f"docs/{name}.md" for name in names]
    after = httpx.get(served["url"] + "/health").json()["engine"]
    # the observatory questions are scripted (no generation); the others all reached the engine
    assert after["requests"] - before["requests"] == len(names) - names.count("observatory")
