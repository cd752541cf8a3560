"""The data stage end to end: accounting, rejects, strict mode, splits before mixing, grouping, cache, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.config import DataSpec, load_recipe
from lmforge.data import stage as prepare
from lmforge.data.stage import carve_splits, prepare_records
from lmforge.errors import ConfigError, DataError
from lmforge.records import read_records
from lmforge.rundir import StageDir, split_path


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def facts(n: int, per_fact: int = 3) -> list[dict]:
    """QA rows with several wordings per fact (meta.fact), like the demo's."""
    return [
        {"question": f"Wording {w} of the question about fact {f}?", "answer": f"Fact {f} is {f * 7} kestrels.",
         "meta": {"fact": f"fact-{f}"}}
        for f in range(n)
        for w in range(per_fact)
    ]  # fmt: skip


def recipe_file(tmp_path: Path, data: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: t\nrun_dir: {tmp_path / 'runs'}\nstages: [data]\ndata:\n{data}", encoding="utf-8")
    return path


MESSY = [
    '{"instruction": "Name the fund.", "output": "The Reserve Fund — ours."}\n'.encode(),
    '{"instruction": "Name the fund.", "output": "The Reserve Fund — ours."}\n'.encode(),  # exact duplicate
    b'{"instruction": "Empty answer", "output": "  "}\n',  # filtered
    b'{"instruction": "broken"\n',  # rejected: invalid JSON
    b'{"instruction": "No output"}\n',  # rejected: missing field
    b'{"instruction": "Bad \xff byte", "output": "x"}\n',  # rejected: invalid UTF-8
    b'{"instruction": "Sum?", "output": "1 2 3 4 5 6 7 8 9 10 11 12"}\n',  # filtered: mostly non-text
]


def test_stage_outputs_accounting_and_rejects_with_file_and_line(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "messy.jsonl").write_bytes(b"".join(MESSY))
    (tmp_path / "in" / "doc.md").write_text("# Title\n\nSome body text.\n", encoding="utf-8")
    recipe = load_recipe(recipe_file(tmp_path, "  sources:\n    - {path: in, domain: pensions}\n"))
    result = prepare.run(recipe)
    assert not result.skipped
    stats = json.loads(result.stats_path.read_text())
    (counts,) = stats["sources"].values()
    assert counts["read"] == 8
    assert counts["kept"] == 2 and counts["deduplicated"] == 1
    assert counts["filtered"] == {"empty answer": 1, "mostly non-text": 1}
    assert counts["rejected"] == {"invalid JSON": 1, "missing field": 1, "invalid UTF-8": 1}
    assert stats["totals"]["read"] == 8 and stats["domains"]["train"] == {"pensions": 2}
    rejects = [json.loads(line) for line in (result.stats_path.parent / "rejects.jsonl").read_text().splitlines()]
    assert [(r["source"]["path"], r["source"]["line"], r["reason"]) for r in rejects] == [
        ("in/messy.jsonl", 4, "invalid JSON"),
        ("in/messy.jsonl", 5, "missing field"),
        ("in/messy.jsonl", 6, "invalid UTF-8"),
    ]
    train = list(read_records(split_path(recipe.run_path(), "train", needed_by="test")))
    assert {r["kind"] for r in train} == {"chat", "text"}
    manifest = StageDir.open(recipe.run_path(), "data").manifest
    assert manifest["outputs"] == {"splits": {"train": str(result.stats_path.parent / "splits" / "train.jsonl")}}


def test_strict_mode_fails_on_the_first_reject_with_file_and_line(tmp_path):
    write_rows(tmp_path / "qa.jsonl", facts(2))
    with (tmp_path / "qa.jsonl").open("a") as handle:
        handle.write('{"question": "no answer"}\n')
    spec = DataSpec.model_validate({"sources": [{"path": str(tmp_path / "qa.jsonl")}], "strict": True})
    with pytest.raises(DataError) as caught:
        prepare_records(spec, seed=0)
    assert "qa.jsonl:7: missing field" in str(caught.value) and "strict" in str(caught.value)


def test_val_is_carved_before_weights_repeat_records(tmp_path):
    write_rows(tmp_path / "qa.jsonl", facts(20, per_fact=1))
    spec = DataSpec.model_validate(
        {"sources": [{"path": str(tmp_path / "qa.jsonl"), "weight": 3.0}], "val_fraction": 0.25}
    )
    splits = prepare_records(spec, seed=0).splits
    val_ids = {r["id"] for r in splits["val"]}
    assert len(splits["val"]) == 5 and len(val_ids) == 5
    assert len(splits["train"]) == 15 * 3
    assert not val_ids & {r["id"] for r in splits["train"]}


def test_grouped_split_keeps_each_fact_on_one_side_and_is_seeded(tmp_path):
    write_rows(tmp_path / "qa.jsonl", facts(30, per_fact=3))
    spec = DataSpec.model_validate(
        {"sources": [{"path": str(tmp_path / "qa.jsonl")}], "val_fraction": 0.2, "test_fraction": 0.2,
         "group_by": "meta.fact"}
    )  # fmt: skip
    splits = prepare_records(spec, seed=0).splits
    sides = {name: {r["meta"]["fact"] for r in records} for name, records in splits.items()}
    assert sides["train"].isdisjoint(sides["val"]) and sides["train"].isdisjoint(sides["test"])
    assert sides["val"].isdisjoint(sides["test"])
    assert (len(splits["val"]), len(splits["test"]), len(splits["train"])) == (18, 18, 54)
    again = prepare_records(spec, seed=0).splits
    assert [r["id"] for r in again["val"]] == [r["id"] for r in splits["val"]]
    other = prepare_records(spec, seed=1).splits
    assert {r["id"] for r in other["val"]} != {r["id"] for r in splits["val"]}


def test_carve_splits_leaves_train_a_group_and_treats_missing_keys_as_own_groups():
    items = [(0, {"id": str(i), "meta": {}}) for i in range(4)]
    train, val, test = carve_splits(items, 0.5, 0.4, "meta.fact", seed=0)
    assert (len(train), len(val), len(test)) == (1, 2, 1)
    single = [(0, {"id": str(i), "meta": {"fact": "same"}}) for i in range(5)]
    assert carve_splits(single, 0.5, 0.0, "meta.fact", seed=0)[1] == []


def test_source_and_domain_weights_mix_the_train_split_only(tmp_path):
    rows = [
        {"question": f"Q{i} about pensions?", "answer": f"Answer number {i}.", "domain": "pensions"} for i in range(10)
    ]
    rows += [
        {"question": f"Q{i} in general?", "answer": f"General answer {i}.", "domain": "general"} for i in range(10)
    ]
    write_rows(tmp_path / "qa.jsonl", rows)
    write_rows(tmp_path / "test.jsonl", rows[:2])
    spec = DataSpec.model_validate(
        {"sources": [{"path": str(tmp_path / "qa.jsonl"), "weight": 2.0}, {"path": str(tmp_path / "test.jsonl"),
         "split": "test", "format": "qa"}], "domain_weights": {"general": 0.25}, "dedup": {"exact": False}}
    )  # fmt: skip
    prepared = prepare_records(spec, seed=0)
    domains = [r["domain"] for r in prepared.splits["train"]]
    assert domains.count("pensions") == 20 and domains.count("general") == 5  # 2.0 and 2.0 * 0.25
    assert len(prepared.splits["test"]) == 2
    assert [s.emitted for s in prepared.stats.values()] == [25, 2]


def test_weight_on_a_non_train_split_is_a_config_error(tmp_path):
    write_rows(tmp_path / "qa.jsonl", facts(1))
    path = recipe_file(tmp_path, "  sources:\n    - {path: qa.jsonl, split: test, weight: 2}\n")
    with pytest.raises(ConfigError, match="weights mix the train split only"):
        load_recipe(path)


def test_system_prompt_per_domain(tmp_path):
    write_rows(tmp_path / "qa.jsonl", facts(1, per_fact=1))
    spec = DataSpec.model_validate(
        {"sources": [{"path": str(tmp_path / "qa.jsonl"), "domain": "law"}], "system_prompts": {"law": "Be exact."}}
    )
    (record,) = prepare_records(spec, seed=0).splits["train"]
    assert record["messages"][0] == {"role": "system", "content": "Be exact."}


def test_second_run_reuses_the_output_and_changes_rerun(tmp_path):
    write_rows(tmp_path / "qa.jsonl", facts(4))
    path = recipe_file(tmp_path, "  sources:\n    - {path: qa.jsonl}\n  val_fraction: 0.25\n")
    first = prepare.run(load_recipe(path))
    assert not first.skipped and set(first.splits) == {"train", "val"}
    second = prepare.run(load_recipe(path))
    assert second.skipped and second.splits == first.splits and second.totals == first.totals
    assert not prepare.run(load_recipe(path, ["data.filters.min_chars=2"])).skipped
    write_rows(tmp_path / "qa.jsonl", facts(5))
    changed = prepare.run(load_recipe(path, ["data.filters.min_chars=2", "data.val_fraction=0"]))
    assert not changed.skipped and changed.splits == {"train": 15}
    assert not (tmp_path / "runs" / "t" / "data" / "splits" / "val.jsonl").exists()  # stale split removed


def test_cli_data_runs_the_stage_then_says_it_reused_it(tmp_path):
    write_rows(tmp_path / "qa.jsonl", facts(2))
    path = recipe_file(tmp_path, "  sources:\n    - {path: qa.jsonl}\n")
    runner = CliRunner()
    first = runner.invoke(app, ["data", str(path)])
    assert first.exit_code == 0, first.output
    assert "read 6: kept 6" in first.output and "train 6" in first.output
    second = runner.invoke(app, ["data", str(path)])
    assert second.exit_code == 0 and "unchanged since the last run" in second.output


def test_cli_data_strict_failure_exits_2_with_the_location(tmp_path):
    (tmp_path / "qa.jsonl").write_text('{"question": "q?", "answer": "a."}\nnot json\n', encoding="utf-8")
    path = recipe_file(tmp_path, "  sources:\n    - {path: qa.jsonl}\n  strict: true\n")
    result = CliRunner().invoke(app, ["data", str(path)])
    assert result.exit_code == 2
    assert "qa.jsonl:2: invalid JSON" in result.output and "Traceback" not in result.output


def test_cli_data_inspect_shows_formats_counts_and_labels(tmp_path, tiny_model_dir):
    write_rows(tmp_path / "qa.jsonl", facts(2))
    result = CliRunner().invoke(app, ["data", "inspect", str(tmp_path / "qa.jsonl")])
    assert result.exit_code == 0, result.output
    assert "qa.jsonl" in result.output and " qa " in result.output and "--model" in result.output
    shown = CliRunner().invoke(
        app, ["data", "inspect", str(tmp_path / "qa.jsonl"), "--model", str(tiny_model_dir), "--show-labels", "1"]
    )
    assert shown.exit_code == 0, shown.output
    assert "p50" in shown.output and "tokens carry loss" in shown.output


def test_demo_recipe_data_stage(tmp_path):
    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml", [f"run_dir={tmp_path}"])
    result = prepare.run(recipe)
    assert result.totals["rejected"] == 0 and result.totals["read"] == result.totals["kept"]
    assert {"train", "test", "docs_only", "known", "documents"} <= set(result.splits)
    documents = list(read_records(split_path(recipe.run_path(), "documents", needed_by="test")))
    assert all(r["source"]["heading"].startswith("Article") and r["source"]["line"] == 1 for r in documents)


def test_benchmark_script_runs_on_a_small_size(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "data_prepare.py"
    monkeypatch.setattr(sys, "argv", ["data_prepare.py", "--mb", "0.3", "--keep", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    report = json.loads(capsys.readouterr().out)
    totals = report["totals"]
    assert totals["read"] == report["lines"] > 400
    assert totals["read"] == totals["kept"] + totals["deduplicated"] + totals["filtered"] + totals["rejected"]
    assert totals["deduplicated"] > 0 and totals["rejected"] > 0 and "val" in report["splits"]


def test_worker_processes_give_byte_identical_outputs(tmp_path):
    """data.workers reads files in parallel; dedup, splits and accounting stay in file order."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "messy.jsonl").write_bytes(b"".join(MESSY))
    for i in range(4):  # duplicates across files: which copy is kept depends on file order alone
        write_rows(folder / f"qa{i}.jsonl", facts(3 + i)[: 5 + i])
        (folder / f"doc{i}.md").write_text(f"# Part {i}\n\nShared text.\n\n## Own\n\nOnly in {i}.\n", encoding="utf-8")
    (folder / "table.csv").write_text("question,answer\nWhat is 1?,One.\nWhat is 1?,One.\n,\n", encoding="utf-8")
    outputs = {}
    for workers in (1, 2):
        path = tmp_path / f"w{workers}.yaml"
        path.write_text(
            f"name: t\nrun_dir: {tmp_path / f'runs{workers}'}\nstages: [data]\ndata:\n  workers: {workers}\n"
            "  test_fraction: 0.3\n  sources:\n    - {path: in}\n",
            encoding="utf-8",
        )
        recipe = load_recipe(path)
        prepare.run(recipe)
        stage = recipe.run_path() / "data"
        outputs[workers] = {p.name: p.read_bytes() for p in sorted(stage.rglob("*.jsonl"))}
        outputs[workers]["stats.json"] = (stage / "stats.json").read_bytes()
    assert outputs[1] == outputs[2]
    stats = json.loads(outputs[2]["stats.json"])["totals"]
    assert stats["deduplicated"] > 0 and stats["rejected"] > 0
    assert stats["read"] == stats["kept"] + stats["deduplicated"] + stats["filtered"] + stats["rejected"]
