"""How scores are shown: percentages for rates, decimals for the rest (the terminal table and the report)."""

from __future__ import annotations

PERCENT_METRICS = {"accuracy", "accuracy_norm", "exact", "field_accuracy", "valid_json", "all_fields"}
"""Metrics that are rates between 0 and 1, shown as percentages."""


def format_score(metric: str, value: float | None) -> str:
    """A score as people read it: percentages for rates, decimals for the rest."""
    if value is None:
        return "-"
    if metric in PERCENT_METRICS:
        return f"{value:.1%}"
    return f"{value:.2f}" if metric in ("perplexity", "bleu") else f"{value:.3f}"


def format_delta(metric: str, value: float) -> str:
    return f"{value:+.1%}" if metric in PERCENT_METRICS else f"{value:+.3f}"
