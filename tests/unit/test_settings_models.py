"""The serve, studio and bench commands' settings check themselves: every problem in one ConfigError, and the
command exits with code 2 naming each option."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.errors import ConfigError
from lmforge.perf.bench import BenchSettings
from lmforge.serve.server import ServeSettings


def test_serve_settings_list_every_problem():
    with pytest.raises(ConfigError) as caught:
        ServeSettings(rag_mode="fuzzy", dtype="fp8", max_queue=0, port=70000)
    wheres = [p.where for p in caught.value.problems]
    assert wheres == ["--rag-mode", "--dtype", "--port", "--max-queue"]
    assert "expected bm25, dense or hybrid" in str(caught.value)
    assert ServeSettings(rag_mode="dense").rag_mode == "dense"  # a valid one builds


def test_bench_settings_list_every_problem():
    with pytest.raises(ConfigError) as caught:
        BenchSettings(workload="mlm", steps=3, warmup=3, systems=["lmforge", "axolotl"])
    assert [p.where for p in caught.value.problems] == ["--systems", "--workload", "--warmup"]
    assert BenchSettings(workload="cpt", systems=["lmforge"]).workload == "cpt"


def test_studio_settings_refuse_half_a_certificate(tmp_path: Path):
    pytest.importorskip("gradio")
    from lmforge.studio.settings import StudioSettings

    with pytest.raises(ConfigError, match="go together"):
        StudioSettings(runs_dir=tmp_path, ssl_certfile="cert.pem")


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["bench", "--workload", "mlm", "--steps", "2", "--warmup", "2"], ["--workload", "--warmup"]),
        (["serve", "runs/x", "--rag-mode", "fuzzy", "--dtype", "fp8"], ["--rag-mode", "--dtype"]),
        (["ask", "runs/x", "a question", "--mode", "fuzzy"], ["--mode"]),
    ],
)
def test_commands_exit_2_with_one_error_listing_each_option(args: list[str], shown: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"{len(shown)} problem" in result.output
    assert all(option in result.output for option in shown)


def test_every_serve_setting_is_an_option_and_reaches_the_settings(monkeypatch: pytest.MonkeyPatch):
    """The options are made from the settings model (one spelling): each field is an option, a value given on the
    command line arrives in the settings the server gets, and an untouched one keeps the model's default."""
    import dataclasses

    import typer.main

    import lmforge.serve.server as server

    command = typer.main.get_command(app).commands["serve"]
    options = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
    for settings_field in dataclasses.fields(ServeSettings):
        flag = {"allowed_hosts": "--allowed-host", "allowed_origins": "--allowed-origin"}.get(
            settings_field.name, "--" + settings_field.name.replace("_", "-")
        )
        assert flag in options, flag
    got = {}
    monkeypatch.setattr(server, "serve", lambda target, settings, **kw: got.update(settings=settings, **kw))
    args = ["serve", "runs/x", "--read-timeout-s", "7", "--allowed-host", "a.test", "--allowed-host", "b.test"]
    result = CliRunner().invoke(app, [*args, "--no-rag-route", "--name", "m", "--port", "0"])
    assert result.exit_code == 0, result.output
    settings = got["settings"]
    assert (settings.read_timeout_s, settings.allowed_hosts, settings.rag_route, settings.port) == (
        7.0, ["a.test", "b.test"], False, 0,
    )  # fmt: skip
    assert settings.max_queue == ServeSettings().max_queue and settings.allowed_origins == []
    assert got["name"] == "m"


def test_bounds_written_on_the_field_hold_outside_the_command_too():
    with pytest.raises(ConfigError) as caught:
        ServeSettings(max_queue=0, read_timeout_s=0.0, threads=None)
    assert [p.where for p in caught.value.problems] == ["--read-timeout-s", "--max-queue"]
    assert "got 0; expected at least 1" in str(caught.value)
    result = CliRunner().invoke(app, ["serve", "runs/x", "--max-queue", "0"])
    assert result.exit_code == 2 and "--max-queue" in result.output
