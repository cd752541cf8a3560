"""Run a recipe's stages in order, skipping the finished ones and resuming interrupted ones.

The stages, their order and their entry modules come from the stage table, :mod:`lmforge.stages`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from lmforge import clock, distributed, stages
from lmforge.config import Recipe, dump_recipe
from lmforge.hardware import release_free_memory
from lmforge.models import check_reference
from lmforge.rundir import StageDir, atomic_write_json

TRAINING_STAGES = stages.TRAINING_STAGES
SPLIT_STAGES = tuple(s.name for s in stages.STAGES if s.every_process is True)
"""Stages every process runs together: training (DDP / FSDP / DeepSpeed through the Trainer), index
(embedding batches shared out) and eval (questions shared out, answers gathered in order); a stage whose
row says ``spec`` too when its recipe section asks (synth with a local teacher). The others run on the
leader alone while the rest wait."""


def run_recipe(recipe: Recipe, console: Console | None = None, only: list[str] | None = None) -> dict[str, Any]:
    """Run every stage of ``recipe`` (or just the ``only`` ones); returns each stage's result keyed by stage name.

    Under a launcher (torchrun, accelerate launch, ``lmforge run --nproc``) every process calls this:
    it joins the process group, runs :data:`SPLIT_STAGES` on all processes and the other stages on
    rank 0 only, with a barrier after each stage. Only rank 0 prints and writes the run directory.
    """
    check_before_running(recipe, only, distributed.world().size)
    current = distributed.init_process_group(recipe.distributed.timeout_minutes)
    with _quiet_unless_leader():
        console = console or Console()
        run_path = recipe.run_path()
        if distributed.is_leader():
            run_path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_path / "recipe.json", dump_recipe(recipe))
        processes = f"  processes: {current.size}" if current.distributed else ""
        console.print(
            f"[bold]lmforge[/bold] run [cyan]{recipe.name}[/cyan] -> {run_path}  "
            f"stages: {', '.join(only or recipe.stages)}{processes}"
        )
        results: dict[str, Any] = {}
        names = only or recipe.stages
        clock.start(recipe.budget, [name for name in names if name in TRAINING_STAGES])
        if recipe.budget:
            console.print(f"budget: {clock.shown(recipe.budget)} for this run", highlight=False)
        shared = not recipe.budget
        for stage in names:
            distributed.wait_for_all()  # every process sees the previous stage's files
            if not shared and stage != "data":  # once the data stage has written the eval sets
                recipe, shared = _share_budget(recipe, console), True
            split = stages.stage(stage).on_every_process(recipe)
            if not split and not distributed.is_leader():
                continue
            started = time.perf_counter()
            before = StageDir.open(run_path, stage).manifest
            try:
                with distributed.together() if split else contextlib.nullcontext():
                    result = _run_stage(stage, recipe)
            except Exception as exc:
                _record_failure(StageDir.open(run_path, stage), before, exc)
                raise
            finally:
                release_free_memory()  # the next stage should not start with this one's freed heap
            results[stage] = result
            clock.finished(stage)
            if distributed.is_leader():
                console.print(_one_line(stage, result, time.perf_counter() - started))
                show = getattr(_entry(stage), "show", None)
                if show is not None:
                    show(recipe, result, console)
        distributed.wait_for_all()
        if recipe.budget:
            console.print(f"budget: the run took {clock.shown(clock.elapsed() or 0)} of {clock.shown(recipe.budget)}")
        clock.stop()
    return results


def _share_budget(recipe: Recipe, console: Console) -> Recipe:
    """Keep eval's time and cut its sets if they would take too much (the leader measures, every process
    follows); see :mod:`lmforge.perf.budget`."""
    from lmforge.perf.budget import plan_budget

    limit = reserve = None
    if distributed.is_leader():
        planned = plan_budget(recipe, console)
        limit, reserve = planned.eval.limit, clock.reserved("eval")
    limit, reserve = distributed.leader_decides((limit, reserve))
    clock.reserve("eval", reserve or 0.0)
    if limit != recipe.eval.limit:
        recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"limit": limit})})
    return recipe


def check_before_running(recipe: Recipe, only: list[str] | None = None, processes: int = 1) -> None:
    """What can be refused before any stage runs: an unknown model reference (when a stage needs the
    model) and, with several processes, a strategy this machine cannot run.

    Raises:
        ModelError: the model reference cannot resolve.
        ConfigError: fsdp / deepspeed without CUDA, deepspeed not installed.
    """
    stages = set(only or recipe.stages)
    if stages - {"data"}:
        check_reference(recipe.model.ref)  # an unknown alias fails now, not after the data stage
    if processes > 1 and stages & set(TRAINING_STAGES):
        from lmforge.engine.layout import check_strategy

        check_strategy(recipe.distributed)


@contextlib.contextmanager
def _quiet_unless_leader() -> Iterator[None]:
    """Followers print nothing (their progress is the leader's); errors still reach stderr."""
    if distributed.is_leader():
        yield
        return
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        yield


def _entry(stage: str) -> Any:
    """The module that runs ``stage`` (the stage table's ``entry``), imported on first use."""
    return importlib.import_module(stages.stage(stage).entry)


def _run_stage(stage: str, recipe: Recipe) -> Any:
    return _entry(stage).run(recipe)


def _record_failure(stage_dir: StageDir, before: dict[str, Any], exc: Exception) -> None:
    """Mark a stage that this attempt started, and that then raised, ``failed`` with the error.

    A stage that raised before starting (a missing input, a bad setting) keeps the manifest it had.
    An interrupted one (Ctrl-C, a kill) is not an ``Exception`` and stays ``running``, to resume.
    """
    if stage_dir.status == "running" and stage_dir.manifest != before:
        stage_dir.fail(exc)


def _one_line(stage: str, result: Any, seconds: float) -> str:
    """A one-line summary of a finished (or skipped) stage: the stage module's ``summary`` when it has one."""
    if getattr(result, "skipped", False):
        return f"[dim]✔ {stage:<5} unchanged since the last run: skipped[/dim]"
    summary = getattr(_entry(stage), "summary", None)
    return summary(result, seconds) if summary is not None else f"✔ {stage} ({seconds:.0f}s)"
