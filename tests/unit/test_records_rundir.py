import json

import pytest

from lmforge.errors import DataError, StageError
from lmforge.records import chat_record, read_records, record_problem, text_record, validate_record
from lmforge.rundir import (
    StageDir,
    atomic_write_jsonl,
    atomic_write_text,
    fingerprint_data,
    require_done,
    split_path,
)

MESSAGES = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_record_ids_are_content_hashes():
    one = chat_record(MESSAGES, {"path": "a.jsonl", "line": 1})
    two = chat_record(MESSAGES, {"path": "b.jsonl", "line": 9})
    assert one["id"] == two["id"]
    assert text_record("x", {"path": "a"})["id"] != one["id"]


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ("text", "expected a JSON object"),
        ({"id": "x", "source": {"path": "a"}, "kind": "chat", "messages": []}, "non-empty list"),
        ({"id": "x", "source": {"path": "a"}, "kind": "chat", "messages": [{"role": "bot", "content": "a"}]}, "role"),
        (
            {"id": "x", "source": {"path": "a"}, "kind": "chat", "messages": [{"role": "user", "content": "q"}]},
            "assistant",
        ),
        ({"id": "x", "source": {"path": "a"}, "kind": "text", "text": "  "}, "non-empty"),
        ({"id": "x", "source": {"path": "a"}, "kind": "image"}, "'kind'"),
        ({"id": "x", "source": "a", "kind": "text", "text": "t"}, "'source'"),
        ({"id": "x", "source": {"path": "a"}, "kind": "text", "text": "t", "extra": 1}, "unknown keys"),
    ],
)
def test_record_problems_are_named(record, fragment):
    assert fragment in record_problem(record)


def test_validate_record_names_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    good = chat_record(MESSAGES, {"path": "x"})
    path.write_text(json.dumps(good) + "\n" + json.dumps({"id": "y"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        list(read_records(path))
    assert f"{path}:2" in str(caught.value)
    assert validate_record(good) is good


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    atomic_write_text(target, "old\n")

    def rows():
        yield {"a": 1}
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        atomic_write_jsonl(target, rows())
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_fingerprint_ignores_key_order():
    assert fingerprint_data({"a": 1, "b": [1, 2]}) == fingerprint_data({"b": [1, 2], "a": 1})
    assert fingerprint_data({"a": 1}) != fingerprint_data({"a": 2})


def test_stage_lifecycle_skip_and_resume(tmp_path):
    stage = StageDir.open(tmp_path, "sft")
    assert stage.status is None
    stage.start("f1", {"lr": 1}, {})
    assert StageDir.open(tmp_path, "sft").can_resume("f1")
    assert not StageDir.open(tmp_path, "sft").can_resume("f2")
    stage.start("f1", {"lr": 1}, {})
    assert stage.manifest["attempts"] == 2
    stage.finish({"loss": 0.5})
    reopened = StageDir.open(tmp_path, "sft")
    assert reopened.is_done("f1") and not reopened.is_done("f2")
    assert reopened.manifest["metrics"] == {"loss": 0.5}
    assert "torch" in reopened.manifest["versions"]


def test_missing_predecessor_and_split_are_explained(tmp_path):
    with pytest.raises(StageError, match="add 'data' to the recipe"):
        require_done(tmp_path, "data", needed_by="sft")
    data = StageDir.open(tmp_path, "data")
    data.start("f", {}, {})
    data.finish({}, outputs={"splits": {"train": str(tmp_path / "train.jsonl")}})
    assert split_path(tmp_path, "train", "sft").name == "train.jsonl"
    with pytest.raises(StageError, match="only \\['train'\\]"):
        split_path(tmp_path, "test", "eval")


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os
    import stat

    target = tmp_path / "manifest.json"
    atomic_write_text(target, "{}")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_manifest_paths_inside_the_run_are_stored_relative_to_it(tmp_path, monkeypatch):
    import shutil

    from lmforge.rundir import StageDir

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "r"
    stage = StageDir.open("runs/r", "sft")  # opened relative to the working directory, as the CLI does
    stage.start("fp", {"lr": 1}, {"train": ["runs/r/data/splits/train.jsonl"], "note": "a/b but not a path here"})
    outputs = {
        "adapter": "runs/r/sft/adapter",
        "base_model": "/models/base",
        "splits": {"raft": str(run / "index" / "raft.jsonl")},
        "domain": "pensions",
    }
    stage.finish({"loss": 1.0}, outputs)
    written = json.loads((run / "sft" / "manifest.json").read_text())
    assert written["outputs"]["adapter"] == "$RUN/sft/adapter"
    assert written["outputs"]["splits"]["raft"] == "$RUN/index/raft.jsonl"
    assert written["outputs"]["base_model"] == "/models/base" and written["outputs"]["domain"] == "pensions"
    assert written["inputs"]["train"] == ["$RUN/data/splits/train.jsonl"]
    assert written["inputs"]["note"] == "a/b but not a path here"
    assert stage.manifest["outputs"]["adapter"] == "runs/r/sft/adapter"  # in memory: as given

    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    reopened = StageDir.open("copy", "sft")
    assert reopened.manifest["outputs"]["adapter"] == "copy/sft/adapter"
    assert reopened.manifest["inputs"]["train"] == ["copy/data/splits/train.jsonl"]
    assert StageDir.open(moved, "sft").manifest["outputs"]["splits"]["raft"] == str(moved / "index" / "raft.jsonl")


def finished(run, stage, fingerprint, outputs, inputs=None):
    from lmforge.rundir import StageDir

    found = StageDir.open(run, stage)
    found.start(fingerprint, {}, inputs or {})
    found.finish({}, outputs)


def test_the_runs_model_comes_from_a_stage_of_its_current_recipe_and_not_a_stale_one(tmp_path):
    from lmforge.errors import ModelError
    from lmforge.rundir import atomic_write_json, final_model

    run = tmp_path / "run"
    finished(run, "sft", "sft-1", {"base_model": "/m/base", "adapter": str(run / "sft" / "adapter")})
    starts = {"starts_from": {"stage": "sft", "fingerprint": "sft-1"}}
    finished(run, "dpo", "dpo-1", {"base_model": "/m/base", "adapter": str(run / "dpo" / "adapter")}, starts)
    atomic_write_json(run / "recipe.json", {"stages": ["data", "sft", "dpo"]})
    assert final_model(run).stage == "dpo"
    atomic_write_json(run / "recipe.json", {"stages": ["data", "sft", "eval"]})  # the recipe dropped dpo
    assert final_model(run).stage == "sft" and final_model(run).adapter_dir == run / "sft" / "adapter"
    atomic_write_json(run / "recipe.json", {"stages": ["data", "sft", "dpo"]})
    finished(run, "sft", "sft-2", {"base_model": "/m/base", "adapter": str(run / "sft" / "adapter")})  # --only sft
    with pytest.raises(ModelError, match=r"dpo .* was trained from an earlier sft result"):
        final_model(run)
    assert final_model(run, stages=("sft",)).stage == "sft"  # what dpo itself starts from: still fine


def test_short_answer_is_evals_gold():
    from lmforge.records import short_answer

    def qa(reply: str, meta: dict | None = None) -> dict:
        record = {
            "kind": "chat",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": reply}],
        }
        return {**record, "meta": meta} if meta is not None else record

    assert (
        short_answer(qa("A long reply that says a lot more than any short answer ever would.", {"answer": 42})) == "42"
    )
    assert short_answer(qa("  dpkg-trigger ")) == "dpkg-trigger"  # a question/answer file's answer column
    assert short_answer(qa("one two three four five six seven eight nine ten eleven")) is None
    assert short_answer(qa("fine", {"answer": ""})) == "fine" and short_answer(qa("x", {"answer": True})) == "x"
