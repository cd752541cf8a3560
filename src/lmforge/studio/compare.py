"""A run's evaluation as tables: scores with intervals per set and variant, and the questions one by one.

Read from ``eval/summary.json`` and ``eval/predictions.jsonl`` (what the eval stage and its report
write); nothing is recomputed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.errors import StageError

QUESTION_FILTERS = ("all", "broken by tuning", "fixed by tuning", "wrong for every variant")


def summary(run: Path) -> dict[str, Any]:
    """The eval summary of ``run``.

    Raises:
        StageError: the run has no finished eval stage.
    """
    path = run / "eval" / "summary.json"
    if not path.is_file():
        raise StageError(f"{run.name} has no evaluation yet (eval/summary.json): run its eval stage")
    return json.loads(path.read_text(encoding="utf-8"))


def score_rows(run: Path) -> list[dict[str, Any]]:
    """Per set and variant: the set's metric with its confidence interval, and the change from base."""
    found = summary(run)
    rows = []
    for set_name, variants in found.get("sets", {}).items():
        metric = found.get("tasks", {}).get(set_name, {}).get("metric", "score")
        for variant, entry in variants.items():
            low, high = (entry.get("ci") or [None, None])[:2]
            delta, delta_ci = entry.get("delta"), entry.get("delta_ci") or [None, None]
            rows.append(
                {
                    "set": set_name,
                    "variant": variant,
                    "metric": metric,
                    "score": entry.get("score"),
                    "ci": _interval(low, high),
                    "Δ vs base": _signed(delta)
                    + (f" {_interval(*delta_ci[:2], signed=True)}" if delta is not None else ""),
                    "fixed / broke": (
                        f"{entry.get('improvements', 0)} / {entry.get('regressions', 0)}" if delta is not None else ""
                    ),
                    "n": entry.get("n"),
                }
            )
    return rows


def side_by_side(first: Path, second: Path) -> list[dict[str, Any]]:
    """The scores of two runs per set and variant (blank where one run lacks the set or the variant)."""
    left = {(r["set"], r["variant"]): r for r in score_rows(first)}
    right = {(r["set"], r["variant"]): r for r in score_rows(second)}
    rows = []
    for key in list(left) + [k for k in right if k not in left]:
        a, b = left.get(key), right.get(key)
        rows.append(
            {
                "set": key[0],
                "variant": key[1],
                first.name: f"{a['score']:.3f} {a['ci']}" if a and a["score"] is not None else "",
                second.name + (" (2)" if second.name == first.name else ""): (
                    f"{b['score']:.3f} {b['ci']}" if b and b["score"] is not None else ""
                ),
            }
        )
    return rows


def questions(run: Path) -> list[dict[str, Any]]:
    """Every evaluated question, as the eval stage wrote it."""
    path = run / "eval" / "predictions.jsonl"
    if not path.is_file():
        raise StageError(f"{run.name} has no predictions yet (eval/predictions.jsonl): run its eval stage")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def question_rows(
    run: Path, set_name: str | None = None, text: str = "", only: str = "all", tuned: str = "tuned"
) -> tuple[list[str], list[list[str]]]:
    """The per-question table: question, gold answer, each variant's answer marked right or wrong, the
    passages a variant was given; filtered by set, by words in the question / gold / answers, and by
    ``only`` (:data:`QUESTION_FILTERS`: ``broken by tuning`` is right for base and wrong for ``tuned``)."""
    found = questions(run)
    variants = list(dict.fromkeys(v for row in found for v in row.get("answers", {})))
    headers = ["set", "question", "gold", *variants, "passages"]
    words = text.casefold().split()
    rows = []
    for row in found:
        answers = row.get("answers", {})
        if set_name and row.get("set") != set_name:
            continue
        if not _kept(answers, only, tuned):
            continue
        cells = [str(row.get("set", "")), str(row.get("question", "")), str(row.get("gold", ""))]
        for variant in variants:
            answer = answers.get(variant)
            if answer is None:
                cells.append("")
                continue
            mark = {True: "✓ ", False: "✗ "}.get(answer.get("correct"), "")
            cells.append(mark + str(answer.get("reply", "")))
        cells.append(_passages(row.get("passages") or []))
        if words and not all(word in " ".join(cells[1:]).casefold() for word in words):
            continue
        rows.append(cells)
    return headers, rows


def _kept(answers: dict[str, Any], only: str, tuned: str) -> bool:
    if only == "all":
        return True
    base_right = (answers.get("base") or {}).get("correct")
    tuned_right = (answers.get(tuned) or {}).get("correct")
    if only == "broken by tuning":
        return base_right is True and tuned_right is False
    if only == "fixed by tuning":
        return base_right is False and tuned_right is True
    if only == "wrong for every variant":
        return bool(answers) and all(a.get("correct") is False for a in answers.values())
    raise ValueError(f"unknown filter {only!r}; expected one of {QUESTION_FILTERS}")


def _passages(passages: list[dict[str, Any]]) -> str:
    shown = []
    for number, passage in enumerate(passages, start=1):
        source = passage.get("source") or {}
        where = source.get("path", "") + (f" ({source['heading']})" if source.get("heading") else "")
        shown.append(f"[{number}] {where}")
    return "; ".join(shown)


def _interval(low: float | None, high: float | None, signed: bool = False) -> str:
    if low is None or high is None:
        return ""
    return f"[{low:+.3f}, {high:+.3f}]" if signed else f"[{low:.3f}, {high:.3f}]"


def _signed(value: float | None) -> str:
    return f"{value:+.3f}" if value is not None else ""
