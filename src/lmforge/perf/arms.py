"""``lmforge plan --arm``: variants of a recipe planned side by side, before any of them runs."""

from __future__ import annotations

from typing import Any

from lmforge.perf.plan import StagePlan, _duration, plan_recipe


def plan_arms(load: Any, arms: list[str], **target: Any) -> list[tuple[str, list[StagePlan]]]:
    """The plan of each arm: ``load(overrides)`` returns the recipe with an arm's space-separated overrides
    (``"sft.method=lora sft.lora.r=16"``; ``""`` is the recipe as it is). An arm that changes ``data.*`` is
    planned on its own data, prepared in memory. ``target``: ``hardware`` and ``model_config`` as
    :func:`plan_recipe` takes them."""
    out = []
    for arm in arms:
        overrides = arm.split()
        recipe = load(overrides)
        _, plans = plan_recipe(recipe, fresh_data=any(o.startswith("data.") for o in overrides), **target)
        out.append((arm or "(the recipe)", plans))
    return out


def render_arms(arms: list[tuple[str, list[StagePlan]]]) -> Any:
    """One row per arm: the training it computes, its time and its peak memory (stages summed / maxed)."""
    from rich.table import Table

    table = Table(title="arms", title_justify="left")
    table.add_column("arm", overflow="fold")
    table.add_column("stages")
    for column in ("examples trained", "tokens computed", "time", "peak RSS MB"):
        table.add_column(column, justify="right")
    for label, plans in arms:
        timed = [p.seconds for p in plans if p.seconds is not None]
        seconds = sum(timed) if timed and len(timed) == len(plans) else None
        table.add_row(
            label,
            ", ".join(f"{p.stage} ({p.method})" for p in plans),
            f"{sum(p.batches.trained_examples for p in plans):,}",
            f"{sum(p.batches.computed_tokens for p in plans):,}",
            _duration(seconds) if seconds is not None else "not estimated",
            f"{max((p.peak_mb for p in plans), default=0):,.0f}",
        )
    return table
