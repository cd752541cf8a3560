"""The studio's read-only views: a run's comparison tables, the data inspection, and the gate in front of it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from lmforge.errors import ConfigError, StageError
from lmforge.serve.middleware import AccessPolicy
from lmforge.studio import compare, dataview
from lmforge.studio.serving import COOKIE, StudioGate, studio_token


def eval_run(root: Path, name: str, tuned_score: float) -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    entry = {"score": 0.25, "ci": [0.0, 0.5], "n": 4}
    tuned = {"score": tuned_score, "ci": [0.25, 1.0], "n": 4, "delta": tuned_score - 0.25, "delta_ci": [-0.25, 0.75]}
    tuned.update(improvements=2, regressions=1)
    summary = {"sets": {"test": {"base": entry, "tuned": tuned}}, "tasks": {"test": {"metric": "accuracy"}}}
    (run / "eval" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    rows = []
    for i, (base_right, tuned_right) in enumerate([(True, False), (False, True), (False, False), (False, True)]):
        answers = {"base": {"reply": f"base says {i}", "correct": base_right}}
        answers["tuned"] = {"reply": f"tuned says {i}", "correct": tuned_right}
        passages = [{"source": {"path": f"doc{i}.md", "heading": "Art. 1"}}] if i == 3 else []
        question = f"Question about pensions {i}?"
        rows.append(
            {"set": "test", "question": question, "gold": f"gold {i}", "answers": answers, "passages": passages}
        )
    (run / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run


def test_scores_with_intervals_and_the_change_from_base(tmp_path: Path):
    rows = compare.score_rows(eval_run(tmp_path, "a", 0.75))
    shown = [(r["variant"], r["score"], r["ci"]) for r in rows]
    assert shown == [("base", 0.25, "[0.000, 0.500]"), ("tuned", 0.75, "[0.250, 1.000]")]
    assert rows[1]["Δ vs base"] == "+0.500 [-0.250, +0.750]" and rows[1]["fixed / broke"] == "2 / 1"
    both = compare.side_by_side(tmp_path / "a", eval_run(tmp_path, "b", 0.5))
    assert both[1] == {"set": "test", "variant": "tuned", "a": "0.750 [0.250, 1.000]", "b": "0.500 [0.250, 1.000]"}
    with pytest.raises(StageError, match="no evaluation yet"):
        compare.score_rows(tmp_path / "none")


def test_the_question_table_filters_by_words_and_by_what_tuning_did(tmp_path: Path):
    run = eval_run(tmp_path, "a", 0.75)
    headers, rows = compare.question_rows(run)
    assert headers == ["set", "question", "gold", "base", "tuned", "passages"] and len(rows) == 4
    assert rows[0][3] == "✓ base says 0" and rows[0][4] == "✗ tuned says 0"
    assert rows[3][5] == "[1] doc3.md (Art. 1)"
    assert [r[1] for r in compare.question_rows(run, only="broken by tuning")[1]] == ["Question about pensions 0?"]
    assert len(compare.question_rows(run, only="fixed by tuning")[1]) == 2
    assert len(compare.question_rows(run, only="wrong for every variant")[1]) == 1
    assert [r[1] for r in compare.question_rows(run, text="PENSIONS 2")[1]] == ["Question about pensions 2?"]
    assert compare.question_rows(run, set_name="other")[1] == []


def test_data_inspection_counts_rejects_with_file_and_line(tmp_path: Path):
    folder = tmp_path / "data"
    folder.mkdir()
    lines = [
        '{"question": "What is A?", "answer": "A is one."}',
        "not json",
        '{"question": "What is B?", "answer": "B."}',
    ]
    (folder / "qa.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    view = dataview.inspect(folder, model=None)
    assert view.files[0]["format"] == "qa" and view.files[0]["read"] == 3
    assert view.sources[0]["kept"] == 2 and view.sources[0]["rejected"].startswith("1 (")
    assert view.rejects == [{"where": "data/qa.jsonl:2", "reason": "invalid JSON", "detail": view.rejects[0]["detail"]}]
    assert view.splits == [{"split": "train", "chat": 2, "text": 0}] and view.labels == [] and view.lengths == []


def test_the_loss_view_marks_exactly_the_answer_tokens(tiny_tokenizer):
    messages = [{"role": "user", "content": "What is A?"}, {"role": "assistant", "content": "A is one."}]
    pieces = dataview._pieces(tiny_tokenizer, messages, on_inputs=False)
    assert "".join(text for text, _ in pieces) == tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    trained = "".join(text for text, tag in pieces if tag == "loss")
    assert "A is one." in trained and "What is A?" not in trained


# ---------------------------------------------------------------- the gate


def call(gate: StudioGate, path: str = "/", headers: dict[str, str] | None = None, query: str = "") -> tuple[int, dict]:
    sent: list[dict] = []
    reached: list[bool] = []

    async def app(scope, receive, send):
        reached.append(True)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    gate.app = app
    scope = {
        "type": "http",
        "path": path,
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "127.0.0.1:7860", **(headers or {})}.items()],
    }
    asyncio.run(gate(scope, receive, send))
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start.get("headers", [])}


def test_the_studio_always_has_a_token_unless_told_on_loopback(monkeypatch):
    monkeypatch.delenv("LMFORGE_STUDIO_TOKEN", raising=False)
    made = studio_token("127.0.0.1")
    assert made and len(made) >= 24 and made != studio_token("127.0.0.1")  # random, made at each start
    assert studio_token("0.0.0.0")  # beyond loopback too
    assert studio_token("127.0.0.1", no_token=True) is None
    with pytest.raises(ConfigError, match="--no-token"):
        studio_token("0.0.0.0", no_token=True)
    monkeypatch.setenv("LMFORGE_STUDIO_TOKEN", "s3cret")
    assert studio_token("0.0.0.0") == "s3cret"


def test_the_token_opens_a_session_whose_cookie_is_not_the_token():
    gate = StudioGate(None, "s3cret", AccessPolicy.build("127.0.0.1", True, [], []))
    assert call(gate)[0] == 401
    assert call(gate, query="token=wrong")[0] == 401
    assert call(gate, query="token=%C3%A9")[0] == 401  # a non-ASCII token: refused, not a 500
    assert call(gate, headers={"authorization": "Bearer \u00e9t\u00e9"})[0] == 401
    status, headers = call(gate, path="/gradio_api/info", query="token=s3cret&x=1")
    assert status == 303 and headers["location"] == "/gradio_api/info?x=1"  # the token leaves the address
    cookie = headers["set-cookie"]
    session = cookie.split(";")[0].split("=", 1)[1]
    assert cookie.startswith(f"{COOKIE}=") and "s3cret" not in cookie and len(session) >= 32
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert call(gate, headers={"cookie": f"{COOKIE}={session}"})[0] == 200
    assert call(gate, headers={"cookie": f"{COOKIE}=s3cret"})[0] == 401  # the token is not a session
    assert call(gate, headers={"cookie": f"{COOKIE}=other"})[0] == 401
    assert call(gate, headers={"cookie": 'bad"cookie;;=='})[0] == 401
    assert call(gate, headers={"authorization": "Bearer s3cret"})[0] == 200
    second = call(gate, query="token=s3cret")[1]["set-cookie"]
    assert second.split(";")[0] != cookie.split(";")[0]  # a new session per opening
    secure = StudioGate(None, "s3cret", AccessPolicy.build("127.0.0.1", True, [], []), secure=True)
    assert "; Secure" in call(secure, query="token=s3cret")[1]["set-cookie"]


def test_only_the_studios_own_origin_passes_not_other_loopback_ports():
    gate = StudioGate(None, None, AccessPolicy.build("127.0.0.1", True, [], []))
    assert call(gate)[0] == 200
    assert call(gate, headers={"host": "evil.example:7860"})[0] == 403  # DNS rebinding
    assert call(gate, headers={"origin": "https://evil.example"})[0] == 403
    assert call(gate, headers={"origin": "http://127.0.0.1:7860"})[0] == 200  # its own page
    assert call(gate, headers={"origin": "http://127.0.0.1:8888"})[0] == 403  # another local app's page
    assert call(gate, headers={"origin": "http://localhost:7860"})[0] == 403  # another origin than the Host
    assert call(gate, headers={"host": "localhost:7860", "origin": "http://localhost:7860"})[0] == 200
    # bound beyond loopback, the browser's own same-origin POSTs pass (its Origin is the Host it asked)
    wide = StudioGate(None, None, AccessPolicy.build("0.0.0.0", False, [], []))
    assert call(wide, headers={"host": "box.lan:7860", "origin": "http://box.lan:7860"})[0] == 200
    assert call(wide, headers={"host": "box.lan:7860", "origin": "http://box.lan:9999"})[0] == 403
