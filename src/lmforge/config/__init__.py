"""Recipe models (pydantic v2), YAML loading and ``--set`` overrides.

A recipe is validated at the edge: every problem (unknown key, wrong type, missing file) is
collected and raised as one :class:`~lmforge.errors.ConfigError` that lists them all, each with
its key path, the value received and what was expected.

The models live in one module per part of the recipe: ``base`` (strict base model, paths, error
rewriting), ``data``, ``train``, ``rag``, ``evaluate``, ``synth`` and ``recipe`` (the whole recipe and
its loading). Import them from here: ``from lmforge.config import Recipe, SFTSpec``.
"""

from lmforge.config.base import PACKAGE_SCHEME, Strict, package_dir, resolve_path, shipped_recipe
from lmforge.config.data import (
    HUB_SCHEME,
    CleanSpec,
    ColumnMap,
    DataFormat,
    DataSpec,
    DedupSpec,
    FilterSpec,
    QuestionsSpec,
    SourceSpec,
)
from lmforge.config.distributed import DeepSpeedSpec, DistributedSpec, FSDPSpec
from lmforge.config.evaluate import EvalSpec, EvalTask, JudgeSpec, VariantSpec
from lmforge.config.rag import ChunkSpec, EmbeddingSpec, EmbedTuneSpec, IndexSpec, RaftSpec, RerankSpec
from lmforge.config.recipe import (
    STAGE_ORDER,
    ModelSpec,
    Recipe,
    StageName,
    apply_override,
    dump_recipe,
    load_recipe,
    validate_recipe,
)
from lmforge.config.synth import SynthFilterSpec, SynthSpec, TeacherSpec
from lmforge.config.train import (
    CPTSpec,
    DistillSpec,
    DocumentsMixSpec,
    DPOSpec,
    GRPOSpec,
    LoraSpec,
    MLMSpec,
    PairJudgeSpec,
    PairsSpec,
    ReplaySpec,
    RewardSpec,
    RewordSpec,
    Seq2SeqSpec,
    SFTSpec,
    TrainOptimizer,
    TrainSpec,
)

__all__ = [
    "HUB_SCHEME",
    "PACKAGE_SCHEME",
    "STAGE_ORDER",
    "CPTSpec",
    "ChunkSpec",
    "CleanSpec",
    "ColumnMap",
    "DPOSpec",
    "DataFormat",
    "DataSpec",
    "DedupSpec",
    "DeepSpeedSpec",
    "DistillSpec",
    "DistributedSpec",
    "DocumentsMixSpec",
    "EmbedTuneSpec",
    "EmbeddingSpec",
    "EvalSpec",
    "EvalTask",
    "FSDPSpec",
    "FilterSpec",
    "GRPOSpec",
    "IndexSpec",
    "JudgeSpec",
    "LoraSpec",
    "MLMSpec",
    "ModelSpec",
    "PairJudgeSpec",
    "PairsSpec",
    "QuestionsSpec",
    "RaftSpec",
    "Recipe",
    "ReplaySpec",
    "RerankSpec",
    "RewardSpec",
    "RewordSpec",
    "SFTSpec",
    "Seq2SeqSpec",
    "SourceSpec",
    "StageName",
    "Strict",
    "SynthFilterSpec",
    "SynthSpec",
    "TeacherSpec",
    "TrainOptimizer",
    "TrainSpec",
    "VariantSpec",
    "apply_override",
    "dump_recipe",
    "load_recipe",
    "package_dir",
    "resolve_path",
    "shipped_recipe",
    "validate_recipe",
]
