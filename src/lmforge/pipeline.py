"""Run a recipe's stages in order, skipping the finished ones and resuming interrupted ones.

This module and ``cli.py`` are the only places that know the order of the stages.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from lmforge.config import Recipe, dump_recipe
from lmforge.rundir import atomic_write_json, atomic_write_text


def run_recipe(recipe: Recipe, console: Console | None = None) -> dict[str, Any]:
    """Run every stage of ``recipe``; returns each stage's result keyed by stage name."""
    console = console or Console()
    run_path = recipe.run_path()
    run_path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_path / "recipe.json", dump_recipe(recipe))
    console.print(
        f"[bold]lmforge[/bold] run [cyan]{recipe.name}[/cyan] -> {run_path}  stages: {', '.join(recipe.stages)}"
    )
    results: dict[str, Any] = {}
    for stage in recipe.stages:
        started = time.perf_counter()
        result = _run_stage(stage, recipe)
        results[stage] = result
        seconds = time.perf_counter() - started
        console.print(_one_line(stage, result, seconds))
        if stage == "eval":
            _show_eval(recipe, result, console)
    return results


def _run_stage(stage: str, recipe: Recipe) -> Any:
    if stage == "data":
        from lmforge.data import prepare

        return prepare.run(recipe)
    if stage == "sft":
        from lmforge.train import causal

        return causal.run(recipe)
    if stage == "eval":
        from lmforge.evaluate import compare

        return compare.run(recipe)
    raise AssertionError(f"unknown stage {stage!r}")  # the recipe's Literal makes this unreachable


def _one_line(stage: str, result: Any, seconds: float) -> str:
    """A one-line summary of a finished (or skipped) stage."""
    if getattr(result, "skipped", False):
        return f"[dim]✔ {stage:<5} unchanged since the last run: skipped[/dim]"
    if stage == "data":
        splits = ", ".join(f"{name} {count}" for name, count in result.splits.items())
        return f"[green]✔ data[/green]  {splits}  ({seconds:.0f}s; details in {result.stats_path})"
    if stage == "sft":
        m = result.metrics
        return (
            f"[green]✔ sft[/green]   {m['steps']} steps, loss {m['final_loss']}, {m['tokens_per_s']:.0f} tokens/s, "
            f"{m['precision']} ({seconds:.0f}s)"
        )
    if stage == "eval":
        parts = []
        for set_name, scores in result.summary["sets"].items():
            shown = " vs ".join(f"{name} {s['accuracy']:.0%}" for name, s in scores.items())
            parts.append(f"{set_name}: {shown}")
        return f"[green]✔ eval[/green]  {'; '.join(parts)} ({seconds:.0f}s)"
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
