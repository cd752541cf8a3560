"""The stage table: every stage of a recipe, in pipeline order, with what runs it and what it produces.

Recipe validation (the names and their order), the pipeline (what runs, on which processes, and the
line printed after it), ``lmforge run --only`` and :func:`lmforge.rundir.final_model` (which finished
stage holds the result) all read this table. A new stage is a row here, its spec in ``config``, and its
entry module: a ``run(recipe)`` returning an object with ``skipped`` and, optionally, ``summary(result,
seconds) -> str`` for its one-line report and ``show(recipe, result, console)`` for anything longer.

This module imports nothing of lmforge, so that ``config`` can read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ModelKind = Literal["causal", "encoder", "seq2seq"]
Workload = Literal["text", "chat"]


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str
    """Module holding ``run(recipe)`` (and optionally ``summary``, ``show``)."""
    every_process: bool | Literal["spec"] = False
    """Runs on every process of a multi-process run (training, embedding, evaluation); else on rank 0.
    ``spec``: the stage's recipe section decides (its ``on_every_process`` property: synth with a local teacher)."""
    model: ModelKind | None = None
    """The kind of model the stage trains, when it trains one (its manifest then has ``outputs.model`` or
    ``outputs.adapter`` + ``outputs.base_model``, and it writes ``train_log.jsonl``)."""
    workload: Workload | None = None
    """What ``lmforge plan`` and ``lmforge bench`` measure it as: ``text`` (a causal LM over packed text rows),
    ``chat`` (chat records, padded or packed); None: a training stage they do not estimate."""

    def on_every_process(self, recipe: Any) -> bool:
        """Whether every process of a multi-process run takes part in this stage of ``recipe``."""
        if self.every_process == "spec":
            return bool(getattr(recipe, self.name).on_every_process)
        return self.every_process


STAGES: tuple[Stage, ...] = (
    Stage("data", "lmforge.data.stage"),
    Stage("synth", "lmforge.synth.stage", every_process="spec"),
    Stage("index", "lmforge.rag.stage", every_process=True),
    Stage("cpt", "lmforge.train.cpt", every_process=True, model="causal", workload="text"),
    Stage("mlm", "lmforge.train.mlm", every_process=True, model="encoder"),
    Stage("sft", "lmforge.train.sft", every_process=True, model="causal", workload="chat"),
    Stage("seq2seq", "lmforge.train.seq2seq", every_process=True, model="seq2seq"),
    Stage("dpo", "lmforge.train.dpo", every_process=True, model="causal"),
    Stage("grpo", "lmforge.train.grpo", every_process=True, model="causal"),
    Stage("eval", "lmforge.evaluate.stage", every_process=True),
)

STAGE_ORDER: tuple[str, ...] = tuple(s.name for s in STAGES)
TRAINING_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.model is not None)
"""Stages whose output is a model, in pipeline order: the last finished one is a run's result."""
WORKLOADS: dict[str, Workload] = {s.name: s.workload for s in STAGES if s.workload is not None}
"""Training stages ``lmforge plan`` estimates and ``lmforge bench --workload`` times, with what they train on."""


def stage(name: str) -> Stage:
    """The table row of ``name``.

    Raises:
        KeyError: not a stage (a recipe's validation makes this unreachable for its own stages).
    """
    for row in STAGES:
        if row.name == name:
            return row
    raise KeyError(f"unknown stage {name!r}; expected one of {', '.join(STAGE_ORDER)}")
