"""The whole recipe: :class:`Recipe`, YAML loading, validation and ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from lmforge.clock import parse_duration
from lmforge.config.base import Strict, describe_errors
from lmforge.config.data import DataSpec
from lmforge.config.distributed import DistributedSpec
from lmforge.config.evaluate import EvalSpec
from lmforge.config.rag import IndexSpec
from lmforge.config.synth import SynthSpec
from lmforge.config.train import CPTSpec, DPOSpec, GRPOSpec, MLMSpec, Seq2SeqSpec, SFTSpec
from lmforge.errors import ConfigError, Problem
from lmforge.redact import redact_values
from lmforge.stages import STAGE_ORDER

StageName = Literal[STAGE_ORDER]  # type: ignore[valid-type]  # the names of the stage table, lmforge.stages


class ModelSpec(Strict):
    """Which model to start from."""

    ref: str = "smollm2-135m-instruct"
    """Alias, HF hub id, local directory or ``.gguf`` file."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); ignored for local references."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repository. Off unless you trust its author."""


class Recipe(Strict):
    """A whole job: the model, the data and the stages to run."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Run name; outputs go to ``<run_dir>/<name>/<stage>/``."""
    description: str = ""
    """Free text shown in the manifest."""
    seed: int = 0
    """Seed for splits, initialisation and data order."""
    run_dir: str = "runs"
    """Parent folder of run directories (relative to the working directory)."""
    stages: list[StageName] = Field(min_length=1)
    """Stages to run, in pipeline order."""
    model: ModelSpec = ModelSpec()
    data: DataSpec
    synth: SynthSpec = SynthSpec()
    index: IndexSpec = IndexSpec()
    cpt: CPTSpec = CPTSpec()
    mlm: MLMSpec = MLMSpec()
    sft: SFTSpec = SFTSpec()
    seq2seq: Seq2SeqSpec = Seq2SeqSpec()
    dpo: DPOSpec = DPOSpec()
    grpo: GRPOSpec = GRPOSpec()
    eval: EvalSpec = EvalSpec()
    distributed: DistributedSpec = DistributedSpec()
    """How the training stages use several processes (torchrun, accelerate launch, ``run --nproc``)."""
    budget: float | None = None
    """Time the whole run may take, in seconds or as ``15m``, ``1h30m`` (``lmforge run --budget``): eval's time is
    estimated and kept, and each training stage's schedule is fitted to what is left (docs/TRAINING.md, "A time
    budget"). Unset: no limit."""

    @field_validator("budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("stages")
    @classmethod
    def _stages_in_order(cls, stages: list[str]) -> list[str]:
        if len(set(stages)) != len(stages):
            raise ValueError(f"a stage is listed twice in {stages}")
        ordered = sorted(stages, key=STAGE_ORDER.index)
        if ordered != stages:
            raise ValueError(f"stages must follow the pipeline order; got {stages}, expected {ordered}")
        return stages

    @model_validator(mode="after")
    def _documents_mix_has_documents(self) -> Recipe:
        """``sft.documents.enabled`` reads a split the data stage must write."""
        mix = self.sft.documents
        written = {source.split or "train" for source in self.data.sources}
        if mix.enabled and "sft" in self.stages and self.data.sources and mix.split not in written:
            raise ValueError(
                f"sft.documents.enabled mixes in the split {mix.split!r}, which no data source writes "
                f"(they write {sorted(written)}); send the documents there (split: {mix.split}) or set "
                "sft.documents.split"
            )
        return self

    @model_validator(mode="after")
    def _sft_trains_on_what_is_written(self) -> Recipe:
        """``sft.splits`` unset: every split the recipe writes for sft (see :func:`default_sft_splits`);
        set: it must not leave out the RAFT split the index stage is asked to write."""
        if "splits" not in self.sft.model_fields_set:
            self.sft.splits = default_sft_splits(self)
            return self
        raft = self.index.raft
        if raft.enabled and "index" in self.stages and "sft" in self.stages and raft.split not in self.sft.splits:
            raise ValueError(
                f"index.raft.enabled writes the split {raft.split!r}, but sft.splits {self.sft.splits} does not "
                f"train on it; add {raft.split!r} to sft.splits, or leave sft.splits unset (it then trains on "
                f"{default_sft_splits(self)})"
            )
        return self

    def run_path(self) -> Path:
        """Folder of this run: ``<run_dir>/<name>``."""
        return Path(self.run_dir) / self.name


def default_sft_splits(recipe: Recipe) -> list[str]:
    """What sft trains on when ``sft.splits`` is unset: ``train`` (when a source goes there), the
    questions written about the documents (``data.questions``), the RAFT examples (``index.raft``) and
    the teacher's records (``synth``), each when the recipe writes it."""
    data = recipe.data
    splits = []
    if any((source.split or "train") == "train" for source in data.sources):
        splits.append("train")
    if data.writes_questions():
        splits.append(data.questions.split)
    if "index" in recipe.stages and recipe.index.raft.enabled:
        splits.append(recipe.index.raft.split)
    if "synth" in recipe.stages:
        splits.append(recipe.synth.output_split)
    return splits or ["train"]


# ---------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``key.path=value`` overrides and validate it.

    Raises:
        ConfigError: listing every problem found (unknown keys, wrong types, missing files).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(source, [Problem("", "recipe file not found; pass the path to a .yaml recipe")])
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise ConfigError(source, [Problem("", f"{path.stat().st_size} bytes; a recipe is at most {MAX_RECIPE_BYTES}")])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte {exc.start + 1}"
        raise ConfigError(
            source, [Problem(where, f"not UTF-8 text ({exc.reason}); save the recipe as UTF-8")]
        ) from None
    try:
        raw = yaml.safe_load(text)
        check_expanded_size(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, [Problem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            source, [Problem("", f"expected a mapping of keys at the top level, got {type(raw).__name__}")]
        )
    raw.setdefault("name", path.stem)
    problems = [p for item in overrides or [] for p in apply_override(raw, item)]
    return validate_recipe(raw, source=source, base_dir=path.resolve().parent, extra_problems=problems)


MAX_RECIPE_BYTES = 1_000_000
"""Largest recipe file read (a recipe is a page of YAML; data goes in data sources)."""
MAX_RECIPE_VALUES = 100_000
"""Most values (mappings, lists, scalars) a recipe may hold once its YAML aliases are expanded."""


class _TooLarge(yaml.YAMLError):
    problem = (
        f"the recipe expands to more than {MAX_RECIPE_VALUES:,} values (YAML aliases referring to aliases, "
        "an 'alias bomb'?); write the values out or shorten the recipe"
    )


def check_expanded_size(value: Any, limit: int = MAX_RECIPE_VALUES) -> None:
    """Count the values of a loaded YAML document as validation would walk them, aliases expanded;
    stop (raising) past ``limit``, so a few lines of nested aliases cannot make validation run for ever."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            raise _TooLarge()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def validate_recipe(
    raw: dict[str, Any], source: str, base_dir: Path, extra_problems: list[Problem] | None = None
) -> Recipe:
    """Validate a recipe mapping; paths are resolved against ``base_dir``."""
    problems = list(extra_problems or [])
    try:
        recipe = Recipe.model_validate(raw, context={"base_dir": str(base_dir)})
    except ValidationError as exc:
        problems += describe_errors(exc.errors(), Recipe)
        recipe = None
    if problems:
        raise ConfigError(source, problems)
    return recipe


def apply_override(raw: dict[str, Any], item: str) -> list[Problem]:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        return [Problem(f"--set {item}", "expected KEY=VALUE, e.g. --set sft.lr=1e-4")]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node: Any = raw
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return [Problem(f"--set {key}", f"{'.'.join(parts[: i + 1])} is not an index of a list of {len(node)}")]
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                return [Problem(f"--set {key}", f"{'.'.join(parts[: i + 1])} holds a value, not a mapping")]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            return [Problem(f"--set {key}", f"{last!r} is not an index of a list of {len(node)}")]
        node[int(last)] = value
    else:
        node[last] = value
    return []


def dump_recipe(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (for manifests), credentials in URLs redacted."""
    return redact_values(recipe.model_dump(mode="json"))  # type: ignore[return-value]
