"""Fuzzing the recipe loader: whatever the file holds and whatever ``--set`` says, loading gives a
Recipe or a ConfigError (exit code 2) — never another exception, never a hang.

Generated recipes mix the schema's own keys with unknown keys, wrong types, odd scalars, YAML aliases
and raw text or bytes; and valid recipes are mutated a few settings at a time, so that about half load
(every check ran) and half are refused deep inside validation (a test holds the share). The default
tier runs a fast sample; the slow tier (``pytest -m slow``) thousands of cases.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.config import load_recipe
from lmforge.errors import ConfigError

KEYS = [
    "name", "stages", "model", "ref", "data", "sources", "path", "split", "format", "columns", "encoding",
    "sft", "lr", "epochs", "batch_size", "lora", "r", "eval", "sets", "index", "raft", "synth", "teacher",
    "distributed", "strategy", "fsdp", "cpt", "seed", "run_dir", "weight", "domain", "unit", "max_length",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["data", "sft", "eval", "lora", "full", "auto", "lmforge://demo", "../x", "", "1e-3", "[]"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
RECIPES = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8)
OVERRIDES = st.lists(
    st.builds(
        lambda key, value: f"{key}={value}",
        st.lists(
            st.sampled_from(KEYS) | st.text(string.ascii_letters + string.digits, max_size=4), min_size=1, max_size=4
        ).map(".".join),
        st.text(max_size=20),
    ),
    max_size=3,
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def load_or_refuse(path: Path, overrides: list[str]) -> None:
    try:
        load_recipe(path, overrides)
    except ConfigError as exc:
        assert str(exc)  # a message that names what is wrong


def check_mapping(tmp_path: Path, raw: dict, overrides: list[str]) -> None:
    (tmp_path / "qa.jsonl").write_text('{"question": "Q?", "answer": "A."}\n', encoding="utf-8")
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    load_or_refuse(path, overrides)


def check_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    load_or_refuse(path, [])


@FAST
@given(raw=RECIPES, overrides=OVERRIDES)
def test_any_recipe_mapping_loads_or_is_refused(tmp_path, raw, overrides):
    check_mapping(tmp_path, raw, overrides)


@FAST
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_file_content_loads_or_is_refused(tmp_path, data):
    check_bytes(tmp_path, data)


@pytest.mark.slow
@SLOW
@given(raw=RECIPES, overrides=OVERRIDES)
def test_many_recipe_mappings(tmp_path, raw, overrides):
    check_mapping(tmp_path, raw, overrides)


@pytest.mark.slow
@SLOW
@given(data=st.binary(max_size=2000) | st.text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_many_file_contents(tmp_path, data):
    check_bytes(tmp_path, data)


# ---------------------------------------------------------------- valid recipes, mutated

BASE = {
    "name": "fuzz",
    "stages": ["data", "sft", "eval"],
    "model": {"ref": "smollm2-135m-instruct"},
    "data": {"sources": [{"path": "qa.jsonl", "split": "train"}, {"path": "qa.jsonl", "split": "test"}]},
    "eval": {"sets": ["test"]},
}
"""A recipe that loads; the mutations below change a few of its settings to values that are right or wrong."""
SETTINGS: dict[tuple[str, ...], list[object]] = {
    ("sft", "lr"): [1e-4, "auto", 0.0, -1, "fast"],
    ("sft", "epochs"): [1, 2.5, "auto", 0],
    ("sft", "method"): ["lora", "full", "dora"],
    ("sft", "batch_size"): [1, 8, 0],
    ("sft", "lora", "r"): [4, 16, 0],
    ("sft", "documents", "enabled"): [True, False],
    ("sft", "documents", "copies"): [1, 3, 0],
    ("sft", "replay", "weight"): [0.5, 2, 0],
    ("sft", "splits"): [["train"], ["train", "raft"], []],
    ("data", "questions", "wordings"): [1, 5, 0],
    ("data", "questions", "held_out"): [0, 0.2, 1.5],
    ("stages",): [["data", "sft"], ["data", "sft", "eval"], ["data", "index", "sft", "eval"], ["sft", "data"]],
    ("index", "raft", "enabled"): [True, False],
    ("eval", "max_new_tokens"): [8, 0],
    ("dpo", "loss"): ["dpo", "simpo", "kto", "nope"],
    ("seed",): [0, 7, -1],
}
MUTATIONS = st.dictionaries(
    st.sampled_from(sorted(SETTINGS)), st.integers(min_value=0, max_value=4), min_size=1, max_size=4
)


def mutated(choices: dict[tuple[str, ...], int]) -> dict:
    import copy

    raw = copy.deepcopy(BASE)
    for path, pick in choices.items():
        values = SETTINGS[path]
        node = raw
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = values[pick % len(values)]
    return raw


def loads(tmp_path: Path, raw: dict) -> bool:
    (tmp_path / "qa.jsonl").write_text('{"question": "Q?", "answer": "A."}\n', encoding="utf-8")
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    try:
        load_recipe(path, [])
    except ConfigError as exc:
        assert str(exc)
        return False
    return True


@FAST
@given(choices=MUTATIONS)
def test_mutated_valid_recipes_load_or_are_refused(tmp_path, choices):
    loads(tmp_path, mutated(choices))


def test_the_mutations_reach_recipes_that_load_and_recipes_that_do_not(tmp_path):
    """The fuzz above is worth something only if it reaches deep validation both ways: a good share of the
    mutated recipes load (so every later check ran) and a good share are refused."""
    import random

    rng = random.Random(5)
    paths = sorted(SETTINGS)
    outcomes = [
        loads(tmp_path, mutated({path: rng.randrange(5) for path in rng.sample(paths, rng.randint(1, 4))}))
        for _ in range(120)
    ]
    assert loads(tmp_path, BASE)
    assert 0.25 < sum(outcomes) / len(outcomes) < 0.9, sum(outcomes)
