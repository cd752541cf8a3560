"""`lmforge push` refuses clearly without an export, a repository name or a token, and reports an unreachable
hub as one message that never shows the token."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.errors import ConfigError, StageError
from lmforge.export.push import push_export


def test_push_lists_what_is_missing(tmp_path, monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as caught:
        push_export(tmp_path, "no-slash")
    assert [p.where for p in caught.value.problems] == ["RUN", "--repo", "token"]
    result = CliRunner().invoke(app, ["push", str(tmp_path), "--repo", "me/model"])
    assert result.exit_code == 2 and "HF_TOKEN" in result.output


def test_an_unreachable_hub_is_one_message_without_the_token(tmp_path, monkeypatch):
    (tmp_path / "export" / "hf").mkdir(parents=True)
    (tmp_path / "export" / "hf" / "README.md").write_text("---\nlicense: other\n---\n# m\n")
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    started = time.perf_counter()
    with pytest.raises(StageError, match="could not upload to me/model") as caught:
        push_export(tmp_path, "me/model", endpoint="http://127.0.0.1:9")
    assert "hf_secret" not in str(caught.value)
    assert time.perf_counter() - started < 60
