"""Recipe models (pydantic v2), YAML loading and ``--set`` overrides.

A recipe is validated at the edge: every problem (unknown key, wrong type, missing file) is
collected and raised as one :class:`~lmforge.errors.ConfigError` that lists them all, each with
its key path, the value received and what was expected.
"""

from __future__ import annotations

import difflib
import importlib.resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from lmforge.errors import ConfigError, Problem

PACKAGE_SCHEME = "lmforge://"
"""Prefix of paths inside the installed package, e.g. ``lmforge://demo/articles``."""

StageName = Literal["data", "sft", "eval"]
STAGE_ORDER: tuple[str, ...] = ("data", "sft", "eval")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def package_dir() -> Path:
    """Directory of the installed ``lmforge`` package (holds ``demo/``)."""
    return Path(str(importlib.resources.files("lmforge")))


def shipped_recipe(name: str) -> Path:
    """Path of a recipe shipped with lmforge (``recipes/<name>.yaml``), installed or in a checkout."""
    candidates = [package_dir() / "recipes" / f"{name}.yaml", package_dir().parents[1] / "recipes" / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"recipes/{name}.yaml", [Problem("", f"shipped recipe not found; looked in {candidates}")])


def resolve_path(value: str, base_dir: Path) -> Path:
    """Resolve a recipe path: ``lmforge://`` -> the package, relative -> the recipe's folder."""
    if value.startswith(PACKAGE_SCHEME):
        return package_dir() / value[len(PACKAGE_SCHEME) :]
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path)


class ModelSpec(Strict):
    """Which model to start from."""

    ref: str = "smollm2-135m-instruct"
    """Alias, HF hub id, local directory or ``.gguf`` file."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); ignored for local references."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repository. Off unless you trust its author."""


DataFormat = Literal["auto", "canonical", "text"]


class SourceSpec(Strict):
    """One input: a file, a folder or a glob."""

    path: str
    """File, folder or glob; relative to the recipe, or ``lmforge://`` for packaged files."""
    split: str | None = None
    """Put every record of this source in this split (e.g. ``train``, ``test``, ``known``)."""
    domain: str | None = None
    """Domain tag for records that carry none."""
    format: DataFormat = "auto"
    """Record format; ``auto`` detects it per file."""
    weight: float = Field(1.0, ge=0.0)
    """Mixing weight: 2.0 repeats every record twice, 0.5 keeps a seeded half (after deduplication)."""

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str, info: ValidationInfo) -> str:
        base_dir = (info.context or {}).get("base_dir")
        if base_dir is None:
            return value
        resolved = resolve_path(value, Path(base_dir))
        has_glob = any(ch in value for ch in "*?[")
        if has_glob:
            parent = resolved
            while any(ch in parent.name for ch in "*?[") and parent != parent.parent:
                parent = parent.parent
            if not parent.exists():
                raise ValueError(f"no such folder {str(parent)!r} for glob {value!r}")
        elif not resolved.exists():
            raise ValueError(f"file not found: {str(resolved)!r}")
        return str(resolved)


class DataSpec(Strict):
    """The ``data`` stage: sources in, canonical records and splits out."""

    sources: list[SourceSpec] = Field(min_length=1)
    """Inputs; at least one."""
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the ``train`` split held out as ``val`` (seeded)."""
    system_prompts: dict[str, str] = {}
    """System prompt per domain, added to that domain's chat records that have none (in every split,
    so training and evaluation see the same prompt)."""


class LoraSpec(Strict):
    """LoRA adapter settings."""

    r: int = Field(16, ge=1)
    """Rank of the update matrices."""
    alpha: int = Field(32, ge=1)
    """Scaling numerator; the update is scaled by alpha / r."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or ``all-linear`` for every linear layer but the output head."""


class SFTSpec(Strict):
    """The ``sft`` stage: supervised fine-tuning on ``chat`` records."""

    method: Literal["lora", "full"] = "lora"
    """``lora`` trains an adapter; ``full`` trains every weight."""
    lora: LoraSpec = LoraSpec()
    """Adapter settings (``method: lora``)."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the training split."""
    max_steps: int = Field(-1, ge=-1)
    """Stop after this many optimizer steps (-1: run all epochs)."""
    lr: float = Field(2e-4, gt=0)
    """Peak learning rate."""
    batch_size: int = Field(8, ge=1)
    """Examples per micro-batch (packed into one padding-free row)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""
    max_length: int = Field(1024, ge=16)
    """Longest example in tokens after templating; longer ones are truncated (and reported)."""
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    """Share of steps with a linear warm-up."""
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warm-up."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping threshold."""
    train_on_inputs: bool = False
    """Also compute the loss on prompt tokens (default: assistant tokens only)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 autocast on CUDA and on CPUs with AMX/avx512_bf16, fp32 otherwise."""
    packing: bool = False
    """Pack each micro-batch into one row (best for long, uneven examples); off: length-grouped
    right-padded batches (best for short chat examples)."""
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """Attention kernel; ``auto``: sdpa on CUDA, on CPU eager up to 512 tokens (faster there) else sdpa."""
    logging_steps: int = Field(5, ge=1)
    """Log the loss every N optimizer steps."""
    save_steps: int = Field(0, ge=0)
    """Checkpoint every N steps (0: once per epoch)."""


class EvalSpec(Strict):
    """The ``eval`` stage: base vs tuned on held-out question sets."""

    sets: list[str] = ["test", "docs_only", "known"]
    """Splits of the ``data`` stage to evaluate on."""
    max_new_tokens: int = Field(48, ge=1)
    """Longest reply generated per question."""
    batch_size: int = Field(32, ge=1)
    """Questions generated together (left-padded, greedy)."""
    limit: int | None = Field(None, ge=1)
    """Evaluate at most this many questions per set (quick checks)."""
    examples: int = Field(3, ge=0)
    """Example answers printed per set."""


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
    sft: SFTSpec = SFTSpec()
    eval: EvalSpec = EvalSpec()

    @field_validator("stages")
    @classmethod
    def _stages_in_order(cls, stages: list[str]) -> list[str]:
        if len(set(stages)) != len(stages):
            raise ValueError(f"a stage is listed twice in {stages}")
        ordered = sorted(stages, key=STAGE_ORDER.index)
        if ordered != stages:
            raise ValueError(f"stages must follow the pipeline order; got {stages}, expected {ordered}")
        return stages

    def run_path(self) -> Path:
        """Folder of this run: ``<run_dir>/<name>``."""
        return Path(self.run_dir) / self.name


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
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
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


def validate_recipe(
    raw: dict[str, Any], source: str, base_dir: Path, extra_problems: list[Problem] | None = None
) -> Recipe:
    """Validate a recipe mapping; paths are resolved against ``base_dir``."""
    problems = list(extra_problems or [])
    try:
        recipe = Recipe.model_validate(raw, context={"base_dir": str(base_dir)})
    except ValidationError as exc:
        problems += [_describe(err) for err in exc.errors()]
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


def _describe(err: dict[str, Any]) -> Problem:
    """Turn one pydantic error into a Problem that names the key, the value and the expectation."""
    loc = [str(part) for part in err["loc"]]
    where = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return Problem(where, f"unknown key{hint}; expected one of: {', '.join(allowed)}")
    if kind == "missing":
        return Problem(where, "required key is missing")
    message = err["msg"]
    message = message.removeprefix("Value error, ")
    message = message.replace("Input should be", "expected").replace("Input should have", "expected")
    received = err.get("input")
    if isinstance(received, (dict, list)) or kind.startswith("value_error"):
        return Problem(where, message)
    shown = repr(received)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return Problem(where, f"got {shown}; {message}")


def _allowed_keys(loc: list[str]) -> list[str]:
    """Field names of the model found at ``loc`` inside a Recipe (list indices skipped)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        inner = _model_in(field.annotation)
        if inner is None:
            return []
        model = inner
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def dump_recipe(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (for manifests)."""
    return recipe.model_dump(mode="json")
