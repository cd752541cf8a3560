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
    from lmforge.studio.app import StudioSettings

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
