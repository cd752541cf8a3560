"""``lmforge.redact``: credentials in URLs are hidden, everything else is left as it was."""

from __future__ import annotations

import pytest

from lmforge.redact import redact_url, redact_urls


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:secret@host/v1", "https://user:***@host/v1"),
        ("https://sk-token@api.example.com/v1", "https://***@api.example.com/v1"),
        ("http://user:p%40ss@127.0.0.1:8000/v1?x=1#f", "http://user:***@127.0.0.1:8000/v1?x=1#f"),
        ("http://user:p@ss@host:1/v1", "http://user:***@host:1/v1"),  # raw "@" in the password: the last one counts
        ("https://:secret@host", "https://:***@host"),
        ("https://host/v1/users/a@b.c", "https://host/v1/users/a@b.c"),  # an "@" after the host is no credential
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert redact_url(expected) == expected  # redacting twice changes nothing more


def test_redact_urls_in_free_text():
    text = "ConnectError: cannot reach https://bob:hunter2@teacher.lan:8443/v1 (also tried http://tok@b/x); giving up"
    assert redact_urls(text) == (
        "ConnectError: cannot reach https://bob:***@teacher.lan:8443/v1 (also tried http://***@b/x); giving up"
    )
    assert redact_urls("mail me at bob@example.com") == "mail me at bob@example.com"


def test_the_recipe_json_and_the_eval_config_hold_no_url_credentials(tmp_path):
    from lmforge.config import dump_recipe, load_recipe

    (tmp_path / "qa.jsonl").write_text('{"question": "Q?", "answer": "A."}\n', encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\nstages: [data, synth]\ndata: {sources: [{path: qa.jsonl}]}\n"
        "synth: {teacher: {base_url: 'https://user:hunter2@teacher.example/v1', model: m}}\n"
        "eval: {judge: {endpoint: 'https://tok3n@judge.example/v1', model: j}}\n",
        encoding="utf-8",
    )
    dumped = str(dump_recipe(load_recipe(recipe)))
    assert "hunter2" not in dumped and "tok3n" not in dumped
    assert "https://user:***@teacher.example/v1" in dumped and "https://***@judge.example/v1" in dumped
