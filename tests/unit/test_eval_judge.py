"""LLM-as-judge against a real (tiny, local) HTTP server speaking the OpenAI chat-completions protocol."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmforge.config import JudgeSpec
from lmforge.errors import StageError
from lmforge.evaluate.judge import Comparison, combine, judge_comparisons, judge_rows, parse_vote


def start_judge(decide, requests, status=200):
    """A chat-completions server whose verdict is ``decide(prompt)``; records every request it gets."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            if status != 200:
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b'{"error": "nope"}')
                return
            prompt = body["messages"][-1]["content"]
            reply = {"choices": [{"message": {"role": "assistant", "content": decide(prompt)}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def fair_judge(prompt):
    """Prefers the answer that contains the reference; a tie when both or neither do."""
    reference = re.search(r"Reference answer: (.*)", prompt).group(1)
    a = reference in re.search(r"Answer A: (.*)", prompt).group(1)
    b = reference in re.search(r"Answer B: (.*)", prompt).group(1)
    verdict = "A" if a and not b else "B" if b and not a else "tie"
    return f"A is {'right' if a else 'wrong'}, B is {'right' if b else 'wrong'}.\nVerdict: {verdict}"


COMPARISONS = [
    Comparison("Retirement age?", "64 years", base="65 years", variant="It is 64 years."),  # variant right
    Comparison("Capital of France?", "Paris", base="Paris.", variant="Lyon."),  # base right
    Comparison("Appeal period?", "45 days", base="30 days", variant="60 days"),  # both wrong
]


def test_swapped_orders_give_wins_losses_and_ties():
    requests = []
    server = start_judge(fair_judge, requests)
    try:
        spec = JudgeSpec(endpoint=f"http://127.0.0.1:{server.server_port}/v1", model="judge-1", concurrency=2)
        results = judge_comparisons(spec, COMPARISONS)
    finally:
        server.shutdown()
    assert [r["verdict"] for r in results] == ["win", "loss", "tie"]
    assert results[0]["votes"] == ["B", "A"]  # the variant was B in the first order, A in the second
    assert len(requests) == 6 and {r["path"] for r in requests} == {"/v1/chat/completions"}
    assert all(r["body"]["model"] == "judge-1" and r["body"]["temperature"] == 0 for r in requests)
    prompts = [r["body"]["messages"][-1]["content"] for r in requests if "Retirement" in str(r["body"])]
    assert {p.index("65 years") < p.index("It is 64 years.") for p in prompts} == {True, False}  # both orders


def test_a_judge_that_always_picks_the_first_answer_cancels_out():
    server = start_judge(lambda prompt: "Verdict: A", [])
    try:
        spec = JudgeSpec(endpoint=f"http://127.0.0.1:{server.server_port}/v1", model="m")
        results = judge_comparisons(spec, COMPARISONS)
    finally:
        server.shutdown()
    assert [r["verdict"] for r in results] == ["tie", "tie", "tie"]


def test_judge_rows_marks_answers_and_sends_the_api_key(monkeypatch):
    requests = []
    server = start_judge(fair_judge, requests)
    monkeypatch.setenv("JUDGE_KEY", "secret-1")
    rows = [
        {"set": "test", "question": c.question, "gold": c.reference,
         "answers": {"base": {"reply": c.base}, "tuned": {"reply": c.variant}}}
        for c in COMPARISONS
    ]  # fmt: skip
    rows.append({"set": "other", "question": "q", "gold": "g", "answers": {"base": {"reply": "x"}, "tuned": {}}})
    try:
        spec = JudgeSpec(endpoint=f"http://127.0.0.1:{server.server_port}/v1/", model="m", api_key_env="JUDGE_KEY")
        judge_rows(spec, rows, ["base", "tuned"], ["test"])
    finally:
        server.shutdown()
    assert [row["answers"]["tuned"]["judge"]["verdict"] for row in rows[:3]] == ["win", "loss", "tie"]
    assert "judge" not in rows[3]["answers"]["tuned"] and "judge" not in rows[0]["answers"]["base"]
    assert {r["auth"] for r in requests} == {"Bearer secret-1"}


def test_refusals_and_unreachable_endpoints_fail_clearly():
    server = start_judge(fair_judge, [], status=401)
    try:
        spec = JudgeSpec(endpoint=f"http://127.0.0.1:{server.server_port}/v1", model="m")
        with pytest.raises(StageError, match="HTTP 401"):
            judge_comparisons(spec, COMPARISONS[:1])
    finally:
        server.shutdown()
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_port
    closed.server_close()  # nothing listens on this port any more
    with pytest.raises(StageError, match=r"cannot reach the judge .*3 attempts"):
        judge_comparisons(JudgeSpec(endpoint=f"http://127.0.0.1:{port}/v1", model="m"), COMPARISONS[:1])
    with pytest.raises(StageError, match="not set"):
        judge_comparisons(JudgeSpec(endpoint="http://127.0.0.1:9", model="m", api_key_env="NO_SUCH_VAR_X"), [])


def test_parse_vote_and_combine():
    assert parse_vote("Both are close.\nVerdict: B") == "B"
    assert parse_vote("**Verdict:** a") == "A"
    assert parse_vote("verdict: A ... on reflection, Verdict: tie") == "tie"
    assert parse_vote("B") == "B"
    assert parse_vote("I cannot decide") == "invalid"
    assert combine("B", "A") == "win" and combine("A", "B") == "loss"
    assert combine("A", "A") == "tie" and combine("B", "tie") == "tie" and combine("invalid", "A") == "tie"
