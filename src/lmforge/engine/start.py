"""The model a training stage starts from: the recipe's base model, or the result of a stage before it.

One record, :class:`StartingPoint`, for every stage that trains on top of an earlier one: sft on cpt
(:func:`sft_start`: a full result is the new base, an adapter is merged or stacked, ``sft.chain``) and
dpo on whatever causal training stage ran last (:func:`latest_start`: an adapter is merged into
``dpo/base``). The stage records :meth:`StartingPoint.as_manifest` under ``inputs.starts_from``, which
:func:`lmforge.rundir.final_model` reads to refuse a result trained from an upstream one that changed since.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Recipe
from lmforge.engine import chain
from lmforge.errors import StageError
from lmforge.models import resolve_model
from lmforge.rundir import StageDir, final_model, require_done
from lmforge.stages import STAGE_ORDER, TRAINING_STAGES, stage


@dataclass
class StartingPoint:
    """What a stage trains on top of, and how it got there."""

    base_dir: Path
    """Folder the weights are loaded from (the original base, an earlier stage's full weights, or the
    stage's own ``base/`` once an adapter is merged into it)."""
    how: str
    """``base``; for sft ``cpt-full``, ``cpt-merge`` or ``cpt-stack``; for dpo ``<stage>-full`` or ``<stage>-merge``."""
    description: str
    """One line for the terminal and the manifest."""
    stage: str | None = None
    """The stage whose result this is (None: the recipe's base model)."""
    fingerprint: str | None = None
    """That stage's fingerprint, part of the starting stage's own."""
    adapter: Path | None = None
    """That stage's LoRA adapter (merged into ``base/``, or folded in and stacked: ``cpt-stack``)."""
    original_base: Path | None = None
    """The recipe's base model folder."""

    def as_manifest(self) -> dict[str, Any]:
        """What the manifest records (``stage``/``fingerprint``: the result started from, which
        :func:`lmforge.rundir.final_model` checks is still the run's)."""
        return {
            "how": self.how,
            "description": self.description,
            "base_dir": str(self.base_dir),
            "adapter": str(self.adapter) if self.adapter else None,
            "stage": self.stage,
            "fingerprint": self.fingerprint,
        }

    def merge_into(self, target: Path, trust_remote_code: bool) -> None:
        """Merge :attr:`adapter` into the weights (fp32) once, saved as ``target``, which becomes :attr:`base_dir`."""
        assert self.adapter is not None
        self.base_dir = chain.merge_adapter(self.base_dir, self.adapter, target, trust_remote_code)


def sft_start(recipe: Recipe) -> StartingPoint:
    """The base model, or the finished cpt stage's result when the recipe lists cpt before sft."""
    original = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
    if "cpt" not in recipe.stages:
        return StartingPoint(original, "base", f"base model {recipe.model.ref} ({original})", original_base=original)
    cpt = require_done(recipe.run_path(), "cpt", needed_by="sft")
    outputs = cpt.manifest.get("outputs", {})
    found = {"stage": "cpt", "fingerprint": cpt.fingerprint, "original_base": original}
    if outputs.get("model"):
        model_dir = Path(outputs["model"])
        text = f"inherits the cpt stage's fully trained weights ({model_dir})"
        return StartingPoint(model_dir, "cpt-full", text, **found)
    adapter = Path(outputs["adapter"])
    if recipe.sft.chain == "stack":
        _check_stackable(recipe, adapter)
        how, text = (
            "cpt-stack",
            f"inherits the cpt adapter {adapter}, stacked under a new sft adapter (one file on save)",
        )
    else:
        how, text = "cpt-merge", f"inherits the cpt adapter {adapter}, merged into the base weights (sft/base)"
    return StartingPoint(original, how, text, adapter=adapter, **found)


def latest_start(recipe: Recipe, name: str) -> StartingPoint:
    """The run's model before stage ``name``: the last finished causal training stage ahead of it in the stage
    table, else the base model (dpo's start).

    Raises:
        StageError: the recipe lists such a stage and it has not finished (``run --only dpo`` too early).
    """
    earlier = tuple(other for other in TRAINING_STAGES if STAGE_ORDER.index(other) < STAGE_ORDER.index(name))
    found = final_model(recipe.run_path(), kinds=("causal",), stages=earlier)
    listed = [other for other in recipe.stages if other in earlier and stage(other).model == "causal"]
    if listed and (found is None or found.stage != listed[-1]):
        raise StageError(
            f"{name} starts from the result of {listed[-1]}, which has not finished in {recipe.run_path()}; "
            f"run it first (lmforge run RECIPE, or --only {listed[-1]})"
        )
    if found is None:
        base = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
        return StartingPoint(base, "base", f"the base model {recipe.model.ref} ({base})", original_base=base)
    if found.adapter_dir:
        what, how = f"{found.stage}'s adapter (merged into {name}/base)", f"{found.stage}-merge"
    else:
        what, how = f"{found.stage}'s weights", f"{found.stage}-full"
    return StartingPoint(found.model_dir, how, what, found.stage, found.fingerprint, found.adapter_dir)


def _check_stackable(recipe: Recipe, adapter: Path) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    problems = []
    if config.get("use_dora") or config.get("modules_to_save"):
        problems.append("the cpt adapter uses DoRA or trained embeddings")
    sft = recipe.sft
    if sft.method != "lora" or sft.lora.use_dora or sft.lora.train_embeddings:
        problems.append("sft is not plain LoRA (method lora, no DoRA, no trained embeddings)")
    if sft.quantization != "none":
        problems.append("sft quantizes the base, which cannot hold the folded-in cpt adapter")
    if problems:
        raise StageError(
            f"sft.chain: stack concatenates two plain LoRA adapters, but {'; '.join(problems)}; "
            "use sft.chain: merge (the default)"
        )


def save_tuned(model: Any, tokenizer: Any, spec: Any, stage: StageDir, start: StartingPoint) -> dict[str, Any]:
    """Save what a stage that starts from :func:`latest_start` trained (its weights, or its adapter over
    ``start.base_dir``); the manifest's ``outputs``."""
    from lmforge.engine.fast import disable_lean_lora
    from lmforge.engine.trainer import save_folder

    disable_lean_lora(model)
    outputs: dict[str, Any] = {"base_model": str(start.base_dir), "starts_from": start.stage or "base"}
    if spec.method == "full":
        outputs["model"] = str(save_folder(stage.path("model"), model, tokenizer))
    else:
        outputs["adapter"] = str(save_folder(stage.path("adapter"), model, tokenizer))
    return outputs


@dataclass
class AfterLatest:
    """A training stage opened on the run's latest model (:func:`open_after_latest`)."""

    setup: Any
    """The :class:`lmforge.engine.stage.TrainingStage`."""
    start: StartingPoint
    resuming: bool | None
    """None: the stage is done with these inputs (``setup.earlier_result()`` is its result)."""
    template: str
    """The prompt format the start was trained with (``chat`` for a stage without one, or the base model)."""


def open_after_latest(recipe: Recipe, spec: Any, label: str, *folders: str) -> AfterLatest:
    """Open training stage ``label`` on the run's model before it (dpo, grpo): fingerprinted with what it starts
    from, started (``folders`` kept on resume), an adapter merged into ``<label>/base`` once."""
    from lmforge.engine.stage import open_training_stage
    from lmforge.log import stage_log
    from lmforge.rundir import fingerprint_data

    setup = open_training_stage(recipe, spec, label)
    start = latest_start(recipe, label)
    template = getattr(getattr(recipe, start.stage), "template", "chat") if start.stage else "chat"
    fingerprint = fingerprint_data([setup.config, setup.file_hashes(), {"starts_from": start.fingerprint}])
    if setup.stage.is_done(fingerprint):
        return AfterLatest(setup, start, None, template)
    inputs = {
        "data": StageDir.open(setup.run_path, "data").fingerprint,
        "train": [str(p) for p in setup.train_paths],
        "starts_from": start.as_manifest(),
    }
    resuming = setup.start(fingerprint, inputs, "base", *folders)
    stage_log(label).info(f"starts from {start.description}")
    if start.adapter is not None:
        start.merge_into(setup.stage.path("base"), recipe.model.trust_remote_code)
    return AfterLatest(setup, start, resuming, template)
