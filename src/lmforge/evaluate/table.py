"""What eval prints: the one-line summary, the table of scores per set and variant (intervals, differences to
base, fixed / broke), the paired differences, example answers and regressions; ``eval/table.txt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.evaluate.scores import format_delta, format_score
from lmforge.rundir import atomic_write_text


def summary_line(summary: dict[str, Any]) -> str:
    """One line per run: each set's headline score per variant."""
    parts = []
    for set_name, scores in summary["sets"].items():
        metric = summary.get("tasks", {}).get(set_name, {}).get("metric", "accuracy")
        shown = " vs ".join(
            f"{name} {format_score(metric, s.get('score', s.get(metric)))}" for name, s in scores.items()
        )
        parts.append(f"{set_name}: {shown}")
    return "; ".join(parts)


def render_table(summary: dict[str, Any], rows: list[dict[str, Any]] | None = None, examples: int = 3) -> Any:
    """Rich tables: each set's headline score per variant with its interval and its difference to
    base; example answers; and the first regressions (base right, variant wrong)."""
    from rich.console import Group
    from rich.table import Table

    variants = summary["variants"]
    level = f"{summary.get('confidence', 0.95):.0%}"
    table = Table(title=f"lmforge eval ({level} bootstrap intervals; Δ = variant - base on the same questions)")
    for column in ("set", "metric", "n", "variant", "score", "interval", "Δ vs base", "Δ interval"):
        table.add_column(column, justify="left" if column in ("set", "metric", "variant") else "right")
    table.add_column("fixed / broke", justify="right")
    for set_name, scores in summary["sets"].items():
        task = summary.get("tasks", {}).get(set_name, {"metric": "accuracy", "higher_is_better": True})
        metric = task["metric"]
        for position, name in enumerate(variants):
            entry = scores[name]
            value = entry.get("score", entry.get(metric))
            interval = entry.get("ci")
            cells = [set_name if position == 0 else "", metric if position == 0 else "", str(entry["n"]), name]
            cells += [format_score(metric, value), _interval(metric, interval)]
            if "delta" in entry:
                better = (entry["delta"] > 0) == task["higher_is_better"]
                low, high = entry["delta_ci"]
                sure = low > 0 or high < 0
                color = ("green" if better else "red") if sure else "white"
                cells += [f"[{color}]{format_delta(metric, entry['delta'])}[/{color}]"]
                cells += [f"[{format_delta(metric, low)}, {format_delta(metric, high)}]"]
            else:
                cells += ["", ""]
            if "regressions" in entry:
                cells.append(f"[green]{entry['improvements']}[/green] / [red]{entry['regressions']}[/red]")
            else:
                cells.append("")
            table.add_row(*cells, end_section=position == len(variants) - 1)
    parts: list[Any] = [table, *_versus_table(summary), *_citation_lines(summary)]
    if rows and examples:
        parts += _example_tables(summary, rows, examples)
    return Group(*parts)


def _versus_table(summary: dict[str, Any]) -> list[Any]:
    """The paired differences between variants other than base (``compare_to``), one row per set; none if unset."""
    from rich.table import Table

    rows = []
    for set_name, scores in summary["sets"].items():
        metric = summary.get("tasks", {}).get(set_name, {}).get("metric", "accuracy")
        for name, entry in scores.items():
            for other, versus in entry.get("vs", {}).items():
                low, high = versus["delta_ci"]
                changed = f"{versus['improvements']} / {versus['regressions']}" if "regressions" in versus else ""
                shown = [
                    format_delta(metric, versus["delta"]),
                    f"[{format_delta(metric, low)}, {format_delta(metric, high)}]",
                ]
                rows.append([set_name, f"{name} - {other}", *shown, changed])
    if not rows:
        return []
    table = Table(title="paired differences between variants (same questions)")
    for column in ("set", "variants", "Δ", "Δ interval", "fixed / broke"):
        table.add_column(column, justify="left" if column in ("set", "variants") else "right")
    for row in rows:
        table.add_row(*row)
    return [table]


def _citation_lines(summary: dict[str, Any]) -> list[str]:
    """Per set: replies citing a passage their prompt did not hold, and how often routed variants retrieved."""
    lines = []
    for set_name, scores in summary["sets"].items():
        invented = [f"{name} {e['invented_citations']}" for name, e in scores.items() if "invented_citations" in e]
        routes = [f"{name} {e['retrieved']}/{e['n']}" for name, e in scores.items() if "retrieved" in e]
        if any(e.get("invented_citations") for e in scores.values()):
            lines.append(f"{set_name}: invented citations ([n] not in the prompt): {', '.join(invented)}")
        if routes:
            lines.append(f"{set_name}: routed retrieval used passages for {', '.join(routes)} questions")
    return lines


def _interval(metric: str, interval: list[float] | None) -> str:
    if not interval:
        return ""
    return f"[{format_score(metric, interval[0])}, {format_score(metric, interval[1])}]"


def _example_tables(summary: dict[str, Any], rows: list[dict[str, Any]], examples: int) -> list[Any]:
    from rich.markup import escape
    from rich.table import Table

    variants = summary["variants"]
    sample = Table(title="example answers", show_lines=True)
    for column in ("set", "question", "gold", *variants):
        sample.add_column(column)
    for set_name in summary["sets"]:
        set_rows = [r for r in rows if r["set"] == set_name and "reply" in r["answers"][variants[0]]]
        for row in set_rows[:examples]:
            cells = [escape(set_name), escape(row["question"]), escape(row["gold"])]
            sample.add_row(*cells, *(_answer_cell(row, name) for name in variants))
    tables = [sample] if sample.row_count else []
    by_id = {(r["set"], r["id"]): r for r in rows}
    broke = Table(title="regressions: base right, variant wrong (all of them: eval/summary.json, report.html)")
    for column in ("set", "variant", "question", "gold", "base", "variant's answer"):
        broke.add_column(column)
    for set_name, per_variant in summary.get("regressions", {}).items():
        for name, ids in per_variant.items():
            for record_id in ids[:examples]:
                row = by_id.get((set_name, record_id))
                if row is not None:
                    cells = [escape(set_name), escape(name), escape(row["question"]), escape(row["gold"])]
                    broke.add_row(*cells, _answer_cell(row, "base"), _answer_cell(row, name))
    if broke.row_count:
        tables.append(broke)
    return tables


def _answer_cell(row: dict[str, Any], name: str) -> str:
    from rich.markup import escape

    answer = row["answers"][name]
    reply = escape(str(answer.get("reply", ""))[:120])
    if "correct" not in answer:
        return reply
    mark = "[green]✔[/green]" if answer["correct"] else "[red]✘[/red]"
    return f"{mark} {reply}"


def write_table(path: Path, summary: dict[str, Any], rows: list[dict[str, Any]], examples: int) -> Path:
    """The side-by-side table as plain text (for CI logs and READMEs)."""
    import io

    from rich.console import Console

    plain = Console(record=True, width=140, file=io.StringIO())
    plain.print(render_table(summary, rows, examples))
    atomic_write_text(path, plain.export_text())
    return path
