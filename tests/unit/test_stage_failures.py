"""A stage that raises ends ``failed`` with its error in the manifest; interrupted ones stay ``running``.

The hub dataset source is the case that used to leave ``running`` behind: it fails while reading,
after the data stage has started. Offline is simulated (environment flag, or an unreachable hub);
no test here touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.config import load_recipe
from lmforge.data import stage as prepare
from lmforge.errors import DataError
from lmforge.pipeline import run_recipe
from lmforge.records import Source, record_problem, source_problem
from lmforge.rundir import StageDir

HUB_SOURCE = "hf://example-org/example-set"


def write_recipe(tmp_path: Path, source_path: str) -> Path:
    qa = tmp_path / "qa.jsonl"
    rows = [{"question": f"Question {i}?", "answer": f"Answer {i}."} for i in range(3)]
    qa.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: t\nrun_dir: {tmp_path / 'runs'}\nstages: [data]\ndata:\n  sources:\n    - {{path: '{source_path}'}}\n",
        encoding="utf-8",
    )
    return recipe


@pytest.fixture
def no_hub_network(monkeypatch):
    """Any attempt to reach the hub fails the test instead of going out."""

    def refuse(*args, **kwargs):
        raise AssertionError("the test reached for the network")

    monkeypatch.setattr("lmforge.models.hub_reachable", refuse)
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)


def test_offline_hub_source_ends_failed_with_the_error(tmp_path, monkeypatch, no_hub_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(write_recipe(tmp_path, HUB_SOURCE))

    with pytest.raises(DataError, match="cannot be reached"):
        run_recipe(recipe, only=["data"])

    manifest = StageDir.open(recipe.run_path(), "data").manifest
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "DataError"
    assert "example-org/example-set" in manifest["error"]["message"]
    assert "save_to_disk" in manifest["error"]["message"]  # the hint travels with the error
    assert "metrics" not in manifest and manifest["finished_at"]


def test_unreachable_hub_without_offline_flag_also_ends_failed(tmp_path, monkeypatch, no_hub_network):
    monkeypatch.setattr("lmforge.models.hub_reachable", lambda *args, **kwargs: False)
    recipe = load_recipe(write_recipe(tmp_path, HUB_SOURCE))

    with pytest.raises(DataError):
        run_recipe(recipe, only=["data"])

    assert StageDir.open(recipe.run_path(), "data").status == "failed"


def test_failed_stage_resumes_then_finishes_without_the_old_error(tmp_path, monkeypatch, no_hub_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(write_recipe(tmp_path, HUB_SOURCE))
    for _ in range(2):
        with pytest.raises(DataError):
            run_recipe(recipe, only=["data"])
    failed = StageDir.open(recipe.run_path(), "data").manifest
    assert failed["status"] == "failed" and failed["attempts"] == 2  # same inputs: the second try resumed

    fixed = load_recipe(write_recipe(tmp_path, "qa.jsonl"))
    result = run_recipe(fixed, only=["data"])["data"]
    manifest = StageDir.open(fixed.run_path(), "data").manifest
    assert manifest["status"] == "done" and "error" not in manifest
    assert result.splits == {"train": 3}


def test_error_before_the_stage_starts_keeps_the_previous_manifest(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, "qa.jsonl"))
    run_recipe(recipe, only=["data"])
    done = StageDir.open(recipe.run_path(), "data").manifest

    (tmp_path / "empty").mkdir()
    no_match = load_recipe(write_recipe(tmp_path, "empty/*.jsonl"))
    with pytest.raises(DataError, match="matches no file"):
        run_recipe(no_match, only=["data"])

    assert StageDir.open(recipe.run_path(), "data").manifest == done


def test_interrupted_stage_stays_running_to_resume(tmp_path, monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path, "qa.jsonl"))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "prepare_records", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, only=["data"])

    stage = StageDir.open(recipe.run_path(), "data")
    assert stage.status == "running" and "error" not in stage.manifest
    assert stage.can_resume(stage.fingerprint)


# ---------------------------------------------------------------- the Source type and its validation


def test_source_type_lists_every_key_the_readers_write():
    assert set(Source.__annotations__) == {"path", "line", "page", "row", "heading"}


@pytest.mark.parametrize(
    "source",
    [
        {"path": "a.md", "line": 3, "heading": "Chapter 2 > Article 12"},
        {"path": "book.pdf", "page": 4, "heading": "Penalties"},
        {"path": "rows.parquet", "row": 17},
        {"path": HUB_SOURCE, "row": 1},
    ],
)
def test_sources_the_readers_write_are_valid(source):
    assert source_problem(source) is None
    record = {"id": "x", "source": source, "kind": "text", "text": "t"}
    assert record_problem(record) is None


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ({"path": "a", "row": 0}, "'source.row' must be a whole number from 1, got 0"),
        ({"path": "a", "line": "3"}, "'source.line' must be a whole number from 1, got '3'"),
        ({"path": "a", "page": True}, "'source.page' must be a whole number from 1, got True"),
        ({"path": "a", "heading": 5}, "'source.heading' must be a string, got int"),
        ({"path": "a", "url": "http://x"}, "unknown keys ['url'] in 'source'"),
        ({"line": 1}, "'source' must be an object with a 'path' string"),
    ],
)
def test_bad_sources_are_named(source, fragment):
    assert fragment in record_problem({"id": "x", "source": source, "kind": "text", "text": "t"})


def test_canonical_input_with_an_unknown_source_key_is_rejected_with_the_key(tmp_path):
    good = {"id": "a", "kind": "text", "source": {"path": "book.pdf", "page": 2, "heading": "Fees"}, "text": "T1"}
    bad = {"id": "b", "kind": "text", "source": {"path": "site.html", "url": "http://x"}, "text": "T2"}
    rows = tmp_path / "canonical.jsonl"
    rows.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    recipe = load_recipe(write_recipe(tmp_path, "canonical.jsonl"))

    run_recipe(recipe, only=["data"])

    data = recipe.run_path() / "data"
    kept = [json.loads(line) for line in (data / "splits" / "train.jsonl").read_text().splitlines()]
    assert [r["source"] for r in kept] == [good["source"]]
    rejects = [json.loads(line) for line in (data / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["reason"] == "invalid record"
    assert "unknown keys ['url'] in 'source'" in rejects[0]["detail"]
    assert rejects[0]["source"] == {"path": "canonical.jsonl", "line": 2}
