from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.config import apply_override, load_recipe, shipped_recipe
from lmforge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_recipe_validates():
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert recipes, "no shipped recipes found"
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.stages, path


def test_demo_recipe_is_found_and_uses_the_packaged_demo():
    recipe = load_recipe(shipped_recipe("demo"))
    assert recipe.name == "demo"
    assert all(Path(s.path).exists() for s in recipe.data.sources)
    assert {s.split for s in recipe.data.sources} >= {"train", "test", "docs_only", "known"}


def test_bad_recipe_lists_every_problem(tmp_path):
    (tmp_path / "ok.jsonl").write_text("", encoding="utf-8")
    path = write(
        tmp_path,
        """
stages: [data, sft]
modle: {ref: x}
data:
  sources:
    - {path: missing.jsonl}
    - {path: ok.jsonl, splitt: train}
sft: {lr: fast, epochs: 0}
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    where = {p.where: p.message for p in caught.value.problems}
    assert "modle" in where and "did you mean 'model'" in where["modle"]
    assert "data.sources.0.path" in where and "missing.jsonl" in where["data.sources.0.path"]
    assert "data.sources.1.splitt" in where and "split" in where["data.sources.1.splitt"]
    assert "got 'fast'" in where["sft.lr"]
    assert "got 0" in where["sft.epochs"]
    assert len(caught.value.problems) == 5


def test_stage_order_is_checked(tmp_path):
    (tmp_path / "ok.jsonl").write_text("", encoding="utf-8")
    path = write(tmp_path, "stages: [sft, data]\ndata: {sources: [{path: ok.jsonl}]}\n")
    with pytest.raises(ConfigError, match="pipeline order"):
        load_recipe(path)


def test_overrides_set_nested_values_and_list_items(tmp_path):
    (tmp_path / "a.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("", encoding="utf-8")
    path = write(tmp_path, "stages: [data]\ndata: {sources: [{path: a.jsonl}]}\n")
    recipe = load_recipe(path, ["sft.lr=1e-4", "sft.lora.r=4", "data.sources.0.path=b.jsonl", "name=other"])
    assert recipe.sft.lr == pytest.approx(1e-4)
    assert recipe.sft.lora.r == 4
    assert recipe.data.sources[0].path.endswith("b.jsonl")
    assert recipe.name == "other"


def test_bad_overrides_are_reported():
    raw = {"data": {"sources": [{"path": "x"}]}}
    assert apply_override(raw, "no-equals-sign")[0].message.startswith("expected KEY=VALUE")
    assert "not an index" in apply_override(raw, "data.sources.5.path=y")[0].message


def test_name_defaults_to_file_stem(tmp_path):
    (tmp_path / "a.jsonl").write_text("", encoding="utf-8")
    path = write(tmp_path, "stages: [data]\ndata: {sources: [{path: a.jsonl}]}\n")
    assert load_recipe(path).name == "recipe"


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "stages: [data\nname: x\n")
    with pytest.raises(ConfigError, match="line"):
        load_recipe(path)


def test_cli_validate_exits_2_with_one_clear_error_and_no_traceback(tmp_path):
    path = write(tmp_path, "stages: [data]\nbogus: 1\ndata: {sources: [{path: nope.jsonl}]}\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    output = result.output
    assert "2 problems" in output
    assert "bogus: unknown key" in output
    assert "file not found" in output
    assert "Traceback" not in output


def test_cli_validate_accepts_the_demo_recipe():
    result = CliRunner().invoke(app, ["validate", str(REPO / "recipes" / "demo.yaml")])
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output


BOMB = """
name: bomb
stages: [data]
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
data: {sources: *h}
"""


def test_a_yaml_alias_bomb_is_refused_at_load_time(tmp_path):
    """Ten lines that expand to 10^8 values: refused in well under a second, naming the cause."""
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB, encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="alias bomb"):
        load_recipe(path)
    assert time.perf_counter() - started < 2.0


def test_an_oversized_recipe_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: big\nstages: [data]\ndescription: " + "x" * 1_100_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="a recipe is at most 1000000"):
        load_recipe(path)


def test_package_paths_stay_inside_the_package(tmp_path):
    path = tmp_path / "escape.yaml"
    path.write_text("name: e\nstages: [data]\ndata: {sources: [{path: 'lmforge://../../../etc/passwd'}]}\n")
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.path: .*leads out of the lmforge package folder"):
        load_recipe(path)


def test_an_encoding_that_does_not_decode_bytes_to_text_is_refused_at_load_time(tmp_path):
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    path = tmp_path / "enc.yaml"
    path.write_text("name: e\nstages: [data]\ndata: {sources: [{path: a.txt, encoding: base64}]}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.encoding: .*'base64' is not a text encoding"):
        load_recipe(path)


def test_a_recipe_that_is_not_utf8_is_a_config_error(tmp_path):
    """Found by tests/unit/test_config_fuzz.py: the byte 0x80 alone crashed the loader."""
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: caf\xe9\nstages: [data]\n")
    with pytest.raises(ConfigError, match="byte 10: not UTF-8 text"):
        load_recipe(path)
