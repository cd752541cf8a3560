"""Recipe models of the ``eval`` stage: sets and tasks, model variants, the optional LLM judge."""

# Mutable field defaults are safe here: pydantic copies them per instance; ruff only sees that
# when the BaseModel subclass is defined in the same file, and Strict lives in base.py.
# ruff: noqa: RUF012

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from lmforge.config.base import Strict, resolve_path


def eval_task_names() -> list[str]:
    """The eval tasks: the module files of ``lmforge/evaluate/tasks/`` (listed, not imported: the recipe is
    validated without loading the evaluation code)."""
    folder = Path(__file__).resolve().parents[1] / "evaluate" / "tasks"
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def _known_task(name: str) -> str:
    if name not in eval_task_names():
        raise ValueError(f"got {name!r}; expected one of {', '.join(eval_task_names())}")
    return name


EvalTask = Annotated[str, AfterValidator(_known_task)]
"""What an eval set measures and how: the name of a module of ``lmforge/evaluate/tasks/`` (``qa``, ``freeform``,
``extraction``, ``choice``, ``perplexity``; a new task is a new module there)."""


class VariantSpec(Strict):
    """One model to evaluate; every variant answers the same questions."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    """Column name in tables and the report, e.g. ``tuned+rag``. ``base`` is the base model."""
    model: str = "tuned"
    """``tuned`` (the result of this run's last training stage, or of ``run``'s), ``base`` (the recipe's
    model) or any model reference (alias, local folder, ``.gguf`` file, hub id)."""
    run: str | None = None
    """Another run whose result to use: a run name under the same ``run_dir`` or a run folder."""
    stage: str | None = None
    """With ``model: tuned``: the model of this training stage rather than the run's last one, e.g.
    ``sft`` in a run that continues with ``dpo`` (to measure what dpo added)."""
    adapter: str | None = None
    """A LoRA adapter folder applied on top of ``model`` (relative to the recipe)."""
    rag: bool = False
    """Answer with retrieved passages in the prompt (needs the ``index`` stage of this run)."""
    route: bool = False
    """With ``rag``: give the passages only to questions whose relevance to the index reaches the
    threshold the index stage calibrated (``lmforge.rag.route``); other questions are asked plainly."""
    compare_to: str | None = None
    """Also report the paired difference to this variant (besides the one to ``base``), e.g. ``sft`` for
    the model after ``dpo``: what the later stage added, with its interval, fixed and broken questions."""

    @field_validator("route")
    @classmethod
    def _route_needs_rag(cls, value: bool, info: ValidationInfo) -> bool:
        if value and not info.data.get("rag", False):
            raise ValueError("route: true decides when to retrieve, so it needs rag: true")
        return value

    @field_validator("run")
    @classmethod
    def _run_means_tuned(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("model", "tuned") != "tuned":
            model = info.data["model"]
            raise ValueError(f"give either 'run' (its tuned model) or 'model', not both; got model {model!r}")
        return value

    @field_validator("stage")
    @classmethod
    def _stage_trains(cls, value: str | None, info: ValidationInfo) -> str | None:
        from lmforge.stages import TRAINING_STAGES

        if value is None:
            return value
        if info.data.get("model", "tuned") != "tuned":
            model = info.data["model"]
            raise ValueError(f"'stage' picks a training stage's model, so it needs model 'tuned', not {model!r}")
        if value not in TRAINING_STAGES:
            raise ValueError(f"got {value!r}; expected a training stage: {', '.join(TRAINING_STAGES)}")
        return value

    @field_validator("adapter")
    @classmethod
    def _adapter_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("model", "tuned") == "tuned":
            raise ValueError("an adapter goes on top of a model: set 'model' to 'base' or a model reference")
        base_dir = (info.context or {}).get("base_dir")
        if base_dir is None:
            return value
        resolved = resolve_path(value, Path(base_dir))
        if not (resolved / "adapter_config.json").is_file():
            raise ValueError(f"no LoRA adapter (adapter_config.json) in {str(resolved)!r}")
        return str(resolved)


class JudgeSpec(Strict):
    """LLM-as-judge: an OpenAI-compatible endpoint compares each variant's answer with the base model's."""

    endpoint: str
    """Base URL of an OpenAI-compatible API, e.g. ``http://localhost:8080/v1``."""
    model: str
    """Model name sent to the endpoint."""
    api_key_env: str | None = None
    """Environment variable holding the API key (none: no Authorization header)."""
    sets: list[str] | None = None
    """Sets to judge (default: every ``qa`` and ``freeform`` set)."""
    concurrency: int = Field(4, ge=1)
    """Requests in flight at once."""
    timeout_s: float = Field(60.0, gt=0)
    """Seconds to wait for one judgement."""
    max_tokens: int = Field(256, ge=1)
    """Longest judgement in tokens (the verdict is read from its last line)."""


class EvalSpec(Strict):
    """The ``eval`` stage: the base model and its variants on held-out sets, with statistics and a report."""

    sets: list[str] = ["test", "docs_only", "known"]
    """Splits of the ``data`` stage to evaluate on."""
    tasks: dict[str, EvalTask] = {}
    """Task per set (default ``qa``): ``qa``, ``freeform``, ``extraction``, ``choice`` or ``perplexity``."""
    variants: list[VariantSpec] = []
    """Models to compare (default: ``base``, and ``tuned`` when the run has an sft stage). ``base`` is
    always added when missing."""
    max_new_tokens: int = Field(48, ge=1)
    """Longest reply generated per question."""
    batch_size: int = Field(32, ge=1)
    """Questions generated (or continuations scored) together; generation is left-padded and greedy."""
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """Weights while answering: ``fp32`` (the same answers on every CPU), ``bf16`` (generation about
    3x faster on a CPU with native bf16 matmuls; greedy answers can differ from fp32's on a few
    questions), ``auto``: bf16 on CUDA and on CPUs with AMX / avx512_bf16, else fp32."""
    max_length: int = Field(1024, ge=16)
    """Token window for perplexity; longer texts are scored in consecutive windows."""
    limit: int | None = Field(None, ge=1)
    """Evaluate at most this many questions per set (quick checks)."""
    examples: int = Field(3, ge=0)
    """Example answers printed per set."""
    bootstrap: int = Field(2000, ge=0)
    """Bootstrap resamples for confidence intervals (0: no intervals)."""
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """Level of the confidence intervals."""
    judge: JudgeSpec | None = None
    """Optional LLM-as-judge (off by default; it calls the endpoint twice per question and variant)."""
    report: bool = True
    """Write ``eval/report.html``."""

    @field_validator("tasks")
    @classmethod
    def _tasks_name_sets(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        unknown = sorted(set(value) - set(info.data.get("sets", [])))
        if unknown:
            raise ValueError(f"tasks given for {unknown}, which are not in eval.sets {info.data.get('sets')}")
        return value

    @field_validator("variants")
    @classmethod
    def _variants_unique(cls, value: list[VariantSpec]) -> list[VariantSpec]:
        names = [variant.name for variant in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"variant names must be unique; {twice} appear more than once")
        for variant in value:
            if variant.name == "base" and (variant.model != "base" or variant.adapter or variant.rag):
                raise ValueError("the name 'base' is kept for the base model itself (model: base, no adapter, no rag)")
            if variant.compare_to is not None and variant.compare_to not in {*names, "base"} - {variant.name}:
                raise ValueError(
                    f"variant {variant.name!r}: compare_to {variant.compare_to!r} is not another variant ({names})"
                )
        return value

    @field_validator("judge")
    @classmethod
    def _judge_sets(cls, value: JudgeSpec | None, info: ValidationInfo) -> JudgeSpec | None:
        if value is not None and value.sets:
            unknown = sorted(set(value.sets) - set(info.data.get("sets", [])))
            if unknown:
                raise ValueError(f"judge.sets names {unknown}, which are not in eval.sets {info.data.get('sets')}")
        return value
