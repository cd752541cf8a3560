"""Run a recipe's stages in order, skipping the finished ones and resuming interrupted ones.

This module and ``cli.py`` are the only places that know the order of the stages.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from lmforge import distributed
from lmforge.config import Recipe, dump_recipe
from lmforge.hardware import release_free_memory
from lmforge.models import check_reference
from lmforge.rundir import StageDir, atomic_write_json, atomic_write_text

TRAINING_STAGES = ("cpt", "mlm", "sft", "seq2seq")
SPLIT_STAGES = ("index", *TRAINING_STAGES, "eval")
"""Stages every process runs together: training (DDP / FSDP / DeepSpeed through the Trainer), index
(embedding batches shared out) and eval (questions shared out, answers gathered in order); synth
too when its teacher is a local model. The others run on the leader alone while the rest wait."""


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
        for stage in only or recipe.stages:
            distributed.wait_for_all()  # every process sees the previous stage's files
            split = stage in SPLIT_STAGES or (stage == "synth" and recipe.synth.teacher.kind == "local")
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
            if distributed.is_leader():
                console.print(_one_line(stage, result, time.perf_counter() - started))
                if stage == "eval":
                    _show_eval(recipe, result, console)
        distributed.wait_for_all()
    return results


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
        from lmforge.train.layout import check_strategy

        check_strategy(recipe.distributed)


@contextlib.contextmanager
def _quiet_unless_leader() -> Iterator[None]:
    """Followers print nothing (their progress is the leader's); errors still reach stderr."""
    if distributed.is_leader():
        yield
        return
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        yield


def _run_stage(stage: str, recipe: Recipe) -> Any:
    if stage == "data":
        from lmforge.data import prepare

        return prepare.run(recipe)
    if stage == "synth":
        from lmforge.synth import generate

        return generate.run(recipe)
    if stage == "index":
        from lmforge.rag import index

        return index.run(recipe)
    if stage == "cpt":
        from lmforge.train import cpt

        return cpt.run(recipe)
    if stage == "mlm":
        from lmforge.train import mlm

        return mlm.run(recipe)
    if stage == "sft":
        from lmforge.train import causal

        return causal.run(recipe)
    if stage == "seq2seq":
        from lmforge.train import seq2seq

        return seq2seq.run(recipe)
    if stage == "eval":
        from lmforge.evaluate import compare

        return compare.run(recipe)
    raise AssertionError(f"unknown stage {stage!r}")  # the recipe's Literal makes this unreachable


def _record_failure(stage_dir: StageDir, before: dict[str, Any], exc: Exception) -> None:
    """Mark a stage that this attempt started, and that then raised, ``failed`` with the error.

    A stage that raised before starting (a missing input, a bad setting) keeps the manifest it had.
    An interrupted one (Ctrl-C, a kill) is not an ``Exception`` and stays ``running``, to resume.
    """
    if stage_dir.status == "running" and stage_dir.manifest != before:
        stage_dir.fail(exc)


def _one_line(stage: str, result: Any, seconds: float) -> str:
    """A one-line summary of a finished (or skipped) stage."""
    if getattr(result, "skipped", False):
        return f"[dim]✔ {stage:<5} unchanged since the last run: skipped[/dim]"
    if stage == "data":
        splits = ", ".join(f"{name} {count}" for name, count in result.splits.items())
        t = getattr(result, "totals", None) or {}
        counts = (
            f"read {t['read']}: kept {t['kept']}, duplicates {t['deduplicated']}, filtered {t['filtered']}, "
            f"rejected {t['rejected']}; "
            if t
            else ""
        )
        return f"[green]✔ data[/green]  {counts}splits: {splits}  ({seconds:.0f}s; details in {result.stats_path})"
    if stage == "synth":
        m, r = result.metrics, result.metrics["requests"]
        return (
            f"[green]✔ synth[/green] {m['records']} records from {m['inputs']} inputs; "
            f"requests {r['sent']} sent, {r['cached']} cached, {r['retries']} retries; "
            f"{m['rejected']} rejected ({seconds:.0f}s; details in {result.stats_path})"
        )
    if stage == "index":
        m = result.metrics
        hybrid = {name: scores["hybrid"] for name, scores in m["retrieval"].items() if "hybrid" in scores}
        recall = [f"{name} {s['recall@5']:.0%}" for name, s in hybrid.items() if "recall@5" in s]
        shown = f"; hybrid recall@5: {', '.join(recall)}" if recall else ""
        raft = f"; raft {m['raft']['examples']} examples" if "raft" in m else ""
        return (
            f"[green]✔ index[/green] {m['chunks']} chunks of {m['documents']} documents, "
            f"{m['embedded_chunks']} embedded ({seconds:.0f}s){shown}{raft}"
        )
    if stage in ("cpt", "mlm", "sft", "seq2seq"):
        m = result.metrics
        speed = f", {m['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in m else ""
        best = f", best validation loss {m['best_eval_loss']}" if "best_eval_loss" in m else ""
        scores = f"; {m['scores']}" if "scores" in m else ""
        return (
            f"[green]✔ {stage}[/green]{' ' * max(1, 6 - len(stage))}{m['steps']} steps, loss {m['final_loss']}{best}"
            f"{speed}, {m['precision']} ({seconds:.0f}s){scores}"
        )
    if stage == "eval":
        from lmforge.evaluate.compare import summary_line

        report = f"; report {result.report_path}" if result.report_path else ""
        return f"[green]✔ eval[/green]  {summary_line(result.summary)} ({seconds:.0f}s{report})"
    return f"✔ {stage} ({seconds:.0f}s)"


def _show_eval(recipe: Recipe, result: Any, console: Console) -> None:
    import io
    import json

    from lmforge.evaluate.compare import render_table

    predictions = recipe.run_path() / "eval" / "predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines() if line.strip()]
    console.print(render_table(result.summary, rows, recipe.eval.examples))
    # Keep a plain-text copy of the table next to the summary for CI logs and READMEs.
    plain = Console(record=True, width=140, file=io.StringIO())
    plain.print(render_table(result.summary, rows, recipe.eval.examples))
    atomic_write_text(recipe.run_path() / "eval" / "table.txt", plain.export_text())
