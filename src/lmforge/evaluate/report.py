"""``eval/report.html``: one self-contained page that proves (or disproves) the specialist is better.

It holds the scores with their intervals and differences to base, a bar chart per set, the loss
curves of every training stage (``<stage>/train_log.jsonl``), and a searchable table of every
question with every variant's answer. Charts are inline SVG drawn here and the search is a few
lines of inline JavaScript: no CDN, no external file, so the page opens offline and can be mailed
as one file. Without JavaScript every row is simply shown.

The search box, the set filter and the change filter can be preset from the address:
``report.html#q=pension&set=test&only=regressions``.
"""

from __future__ import annotations

import json
import math
import time
from html import escape
from pathlib import Path
from typing import Any

from lmforge.errors import StageError
from lmforge.evaluate.scores import PERCENT_METRICS
from lmforge.evaluate.scores import format_delta as _fmt_delta
from lmforge.evaluate.scores import format_score as _fmt
from lmforge.rundir import atomic_write_text, read_json

PALETTE = ["#6b7280", "#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#be185d"]
DETAIL_KEYS = ("exact", "f1", "rouge_l", "bleu", "field_accuracy", "valid_json", "perplexity", "tokens")


def write_report(run_path: str | Path) -> Path:
    """Render ``<run>/eval/report.html`` from the eval stage's files and the training logs; returns its path."""
    run_path = Path(run_path)
    eval_dir = run_path / "eval"
    summary_path, predictions_path = eval_dir / "summary.json", eval_dir / "predictions.jsonl"
    if not summary_path.is_file() or not predictions_path.is_file():
        raise StageError(
            f"no evaluation to report in {eval_dir}: expected summary.json and predictions.jsonl there; "
            "run the eval stage first (lmforge eval RECIPE)"
        )
    summary = read_json(summary_path)
    rows = [json.loads(line) for line in predictions_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    recipe = read_json(run_path / "recipe.json") if (run_path / "recipe.json").is_file() else {}
    html = render_report(summary, rows, training_logs(run_path), recipe, run_path.name)
    target = eval_dir / "report.html"
    atomic_write_text(target, html)
    return target


def training_logs(run_path: Path) -> dict[str, list[dict[str, Any]]]:
    """The logged entries of every training stage of the run, keyed by stage name."""
    logs = {}
    for path in sorted(run_path.glob("*/train_log.jsonl")):
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        logs[path.parent.name] = entries
    return logs


def render_report(
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    logs: dict[str, list[dict[str, Any]]],
    recipe: dict[str, Any],
    run_name: str,
) -> str:
    """The whole page as one HTML string."""
    variants = summary["variants"]
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(variants)}
    model = recipe.get("model", {}).get("ref", "")
    labels = summary.get("labels", {})
    legend = "".join(
        f'<li><span class="swatch" style="background:{colors[n]}"></span><b>{escape(n)}</b> '
        f"{escape(labels.get(n, ''))}</li>"
        for n in variants
    )
    charts = "".join(_set_chart(set_name, summary, colors) for set_name in summary["sets"])
    curves = "".join(_loss_chart(stage, entries) for stage, entries in logs.items())
    curves = curves or '<p class="muted">No training log in this run (no training stage ran).</p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lmforge report: {escape(run_name)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>lmforge report: {escape(run_name)}</h1>
<p class="muted">base model {escape(model)} · {len(rows)} questions · written {time.strftime("%Y-%m-%d %H:%M")}</p>
<ul class="legend">{legend}</ul></header>
<section id="scores"><h2>Scores</h2>{_score_table(summary)}</section>
<section id="charts"><h2>Per set</h2><div class="charts">{charts}</div></section>
<section id="training"><h2>Training</h2><div class="charts">{curves}</div></section>
<section id="questions"><h2>Every question</h2>{_question_table(summary, rows)}</section>
<script>{SCRIPT}</script>
</body></html>
"""


# ---------------------------------------------------------------- formatting


def _task(summary: dict[str, Any], set_name: str) -> dict[str, Any]:
    return summary.get("tasks", {}).get(set_name, {"task": "qa", "metric": "accuracy", "higher_is_better": True})


# ---------------------------------------------------------------- tables


def _score_table(summary: dict[str, Any]) -> str:
    level = f"{summary.get('confidence', 0.95):.0%}"
    head = (
        "<tr><th>set</th><th>task · metric</th><th>n</th><th>variant</th><th>score</th>"
        f"<th>{level} interval</th><th>Δ vs base</th><th>Δ interval</th><th>fixed</th><th>broke</th>"
        "<th>judge (win / tie / loss)</th></tr>"
    )
    body = []
    for set_name, scores in summary["sets"].items():
        task = _task(summary, set_name)
        metric = task["metric"]
        direction = "higher is better" if task["higher_is_better"] else "lower is better"
        for position, name in enumerate(summary["variants"]):
            entry = scores[name]
            first = position == 0
            cells = [
                f"<td>{escape(set_name) if first else ''}</td>",
                f"<td>{escape(task['task'] + ' · ' + metric) if first else ''}"
                f"{f'<br><small>{direction}</small>' if first else ''}</td>",
                f'<td class="num">{entry["n"]}</td>',
                f"<td>{escape(name)}</td>",
                f'<td class="num"><b>{_fmt(metric, entry.get("score"))}</b></td>',
                f'<td class="num">{_interval(metric, entry.get("ci"), _fmt)}</td>',
            ]
            if "delta" in entry:
                low, high = entry["delta_ci"]
                better = (entry["delta"] > 0) == task["higher_is_better"]
                verdict = ("better" if better else "worse") if (low > 0 or high < 0) else "unsure"
                cells.append(f'<td class="num {verdict}">{_fmt_delta(metric, entry["delta"])}</td>')
                cells.append(f'<td class="num">{_interval(metric, entry["delta_ci"], _fmt_delta)}</td>')
            else:
                cells += ["<td></td>", "<td></td>"]
            cells.append(f'<td class="num better">{entry.get("improvements", "")}</td>')
            cells.append(f'<td class="num worse">{entry.get("regressions", "")}</td>')
            judge = entry.get("judge")
            cells.append(
                f'<td class="num">{judge["win"]:.0%} / {judge["tie"]:.0%} / {judge["loss"]:.0%}</td>'
                if judge
                else "<td></td>"
            )
            body.append(f'<tr class="{"first" if first else ""}">{"".join(cells)}</tr>')
    note = (
        '<p class="muted">Δ is the paired difference to base on the same questions; green: its interval lies '
        "entirely on the better side of zero, red: entirely on the worse side, grey: not distinguishable. "
        "<i>broke</i> counts questions base got right and the variant got wrong (the regressions).</p>"
    )
    return f'<table class="scores"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>{note}'


def _interval(metric: str, interval: list[float] | None, fmt: Any) -> str:
    if not interval:
        return ""
    return f"[{fmt(metric, interval[0])}, {fmt(metric, interval[1])}]"


def _question_table(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    variants = summary["variants"]
    broke = {
        (set_name, record_id): names
        for set_name, per_variant in summary.get("regressions", {}).items()
        for record_id, names in _invert(per_variant).items()
    }
    options = "".join(f'<option value="{escape(s)}">{escape(s)}</option>' for s in summary["sets"])
    controls = (
        '<div class="controls"><input id="search" type="search" placeholder="search questions, answers, passages" '
        'size="40"> <select id="set-filter"><option value="">all sets</option>'
        f'{options}</select> <select id="only"><option value="">all questions</option>'
        '<option value="regressions">regressions (base right, variant wrong)</option>'
        '<option value="improvements">improvements (base wrong, variant right)</option>'
        '<option value="wrong">some variant wrong</option></select> '
        f'<span id="count"><span id="shown">{len(rows)}</span> of {len(rows)} shown</span></div>'
    )
    head = "<tr><th>set</th><th>question</th><th>gold</th>" + "".join(f"<th>{escape(n)}</th>" for n in variants)
    body = []
    for row in rows:
        flags = []
        if broke.get((row["set"], row["id"])):
            flags.append("regressions")
        answers = row["answers"]
        if any(answers[n].get("correct") for n in variants if n != "base") and not answers["base"].get("correct"):
            flags.append("improvements")
        if any(answers[n].get("correct") is False for n in variants):
            flags.append("wrong")
        cells = [_answer_cell(answers[name], name in broke.get((row["set"], row["id"]), [])) for name in variants]
        cited_by = {name: answers[name].get("cited", []) for name in variants}
        passages = _passages(row.get("passages"), cited_by)
        body.append(
            f'<tr data-set="{escape(row["set"])}" data-flags="{" ".join(flags)}">'
            f"<td>{escape(row['set'])}</td><td>{escape(row['question'])}{passages}</td>"
            f"<td>{escape(row['gold'])}</td>{''.join(cells)}</tr>"
        )
    table = f'<table id="question-table"><thead>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return controls + table


def _invert(per_variant: dict[str, list[str]]) -> dict[str, list[str]]:
    inverted: dict[str, list[str]] = {}
    for name, ids in per_variant.items():
        for record_id in ids:
            inverted.setdefault(record_id, []).append(name)
    return inverted


def _answer_cell(answer: dict[str, Any], regressed: bool) -> str:
    reply = escape(str(answer.get("reply", ""))) or ('<i class="muted">(empty reply)</i>' if "reply" in answer else "")
    mark = ""
    if "correct" in answer:
        mark = '<span class="ok">✔</span> ' if answer["correct"] else '<span class="bad">✘</span> '
    details = " · ".join(f"{key} {_detail(answer[key])}" for key in DETAIL_KEYS if key in answer)
    if answer.get("cited"):
        details += f" · cites {', '.join(answer['cited'])}"
    judge = answer.get("judge")
    if judge:
        details += f" · judge: {judge['verdict']} ({'/'.join(judge['votes'])})"
    css = ' class="regressed"' if regressed else ""
    return f"<td{css}>{mark}{reply}<div class='scores-line'>{escape(details)}</div></td>"


def _detail(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _passages(passages: list[dict[str, Any]] | None, cited_by: dict[str, list[str]]) -> str:
    if not passages:
        return ""
    items = []
    for passage in passages:
        source = passage.get("source") or {}
        where = str(source.get("path", ""))
        if source.get("line"):
            where += f":{source['line']}"
        if source.get("heading"):
            where += f" · {source['heading']}"
        score = passage.get("score")
        score_text = f" · {score:.3f}" if isinstance(score, (int, float)) else ""
        citers = [name for name, ids in cited_by.items() if str(passage.get("id", "")) in ids]
        cited = f' <span class="cited">cited by {escape(", ".join(citers))}</span>' if citers else ""
        items.append(
            f"<li><code>{escape(str(passage.get('id', '')))}</code> {escape(where)}{score_text}{cited}"
            f"<blockquote>{escape(str(passage.get('text', ''))[:600])}</blockquote></li>"
        )
    return f"<details><summary>{len(passages)} retrieved passages</summary><ol>{''.join(items)}</ol></details>"


# ---------------------------------------------------------------- charts (inline SVG)


def _set_chart(set_name: str, summary: dict[str, Any], colors: dict[str, str]) -> str:
    """Bars of the headline score per variant, with interval whiskers."""
    task = _task(summary, set_name)
    metric = task["metric"]
    entries = summary["sets"][set_name]
    variants = summary["variants"]
    width, height, left, bottom, top = 360, 250, 48, 40, 40
    highs = [max(entries[n].get("ci") or [0, entries[n].get("score") or 0]) for n in variants]
    top_value = 1.0 if metric in PERCENT_METRICS else _nice_ceiling(max([*highs, 1e-9]))
    plot_h = height - bottom - top
    slot = (width - left - 10) / len(variants)
    bar_w = min(56.0, slot * 0.6)

    def y_of(value: float) -> float:
        return top + plot_h * (1 - min(max(value / top_value, 0.0), 1.0))

    parts = [_y_axis(left, width, top, plot_h, top_value, metric)]
    for i, name in enumerate(variants):
        entry = entries[name]
        score = float(entry.get("score") or 0.0)
        x = left + slot * i + (slot - bar_w) / 2
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y_of(score):.1f}" width="{bar_w:.1f}" '
            f'height="{top + plot_h - y_of(score):.1f}" fill="{colors[name]}"><title>{escape(name)}: '
            f"{_fmt(metric, score)} {_interval(metric, entry.get('ci'), _fmt)}</title></rect>"
        )
        if entry.get("ci"):
            low, high = entry["ci"]
            cx = x + bar_w / 2
            parts.append(
                f'<path class="whisker" d="M{cx:.1f},{y_of(low):.1f}V{y_of(high):.1f}'
                f'M{cx - 6:.1f},{y_of(low):.1f}h12M{cx - 6:.1f},{y_of(high):.1f}h12"/>'
            )
        label_y = min(y_of(score), y_of(entry["ci"][1]) if entry.get("ci") else y_of(score)) - 4
        parts.append(
            f'<text x="{x + bar_w / 2:.1f}" y="{label_y:.1f}" class="value">{_fmt(metric, score)}</text>'
            f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 16:.1f}" class="label">{escape(name)}</text>'
        )
    direction = "" if task["higher_is_better"] else " (lower is better)"
    title = f"{set_name}: {metric}{direction}"
    return (
        f'<figure><svg class="chart bar-chart" data-set="{escape(set_name)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
        f'<text x="{width / 2}" y="16" class="title">{escape(title)}</text>{"".join(parts)}</svg></figure>'
    )


def _y_axis(left: float, width: float, top: float, plot_h: float, top_value: float, metric: str) -> str:
    parts = []
    for step in range(5):
        value = top_value * step / 4
        y = top + plot_h * (1 - step / 4)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick">{_fmt(metric, value)}</text>'
        )
    return "".join(parts)


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value``."""
    exponent = math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        candidate = factor * 10**exponent
        if candidate >= value:
            return candidate
    return 10 ** (exponent + 1)


def _loss_chart(stage: str, entries: list[dict[str, Any]]) -> str:
    """Training loss (and evaluation loss, when logged) against the optimizer step."""
    series = {
        "train loss": [(e["step"], e["loss"]) for e in entries if "loss" in e and "step" in e],
        "eval loss": [(e["step"], e["eval_loss"]) for e in entries if "eval_loss" in e and "step" in e],
    }
    series = {name: points for name, points in series.items() if points}
    if not series:
        return ""
    colors = {"train loss": "#2563eb", "eval loss": "#d97706"}
    width, height, left, bottom, top = 520, 260, 52, 40, 28
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x_max = max(max(xs), 1)
    y_top = _nice_ceiling(max(max(ys), 1e-9))
    plot_w, plot_h = width - left - 16, height - bottom - top

    def point(x: float, y: float) -> str:
        return f"{left + plot_w * x / x_max:.1f},{top + plot_h * (1 - min(y / y_top, 1.0)):.1f}"

    parts = [_y_axis(left, width - 6, top, plot_h, y_top, "loss")]
    tick = max(1, int(_nice_ceiling(x_max / 5)))  # steps are integers: ticks at round numbers of them
    for x in range(0, int(x_max) + 1, tick):
        parts.append(f'<text x="{left + plot_w * x / x_max:.1f}" y="{height - bottom + 16}" class="tick-x">{x}</text>')
    for i, (name, points) in enumerate(series.items()):
        path = " ".join(point(x, y) for x, y in points)
        parts.append(
            f'<polyline class="curve" points="{path}" stroke="{colors[name]}"><title>{name}</title></polyline>'
        )
        parts.append(
            f'<text x="{width - 20}" y="{top + 14 + 14 * i}" class="series" fill="{colors[name]}">'
            f"{name} (last {points[-1][1]:.3f})</text>"
        )
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" class="label">optimizer step</text>')
    return (
        f'<figure><svg class="chart loss-chart" data-stage="{escape(stage)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(stage)} loss curves">'
        f'<text x="{width / 2}" y="16" class="title">{escape(stage)}: loss</text>{"".join(parts)}</svg></figure>'
    )


# ---------------------------------------------------------------- inline style and script

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;
padding:16px 24px;color:#111827;background:#fff}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #e5e7eb}
.muted,small{color:#6b7280}
.legend{list-style:none;padding:0;display:flex;gap:18px;flex-wrap:wrap}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:-1px}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #e5e7eb;padding:5px 8px;
vertical-align:top;text-align:left}th{background:#f9fafb;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.first td{border-top:2px solid #d1d5db}
.better{color:#15803d;font-weight:600}.worse{color:#b91c1c;font-weight:600}.unsure{color:#6b7280}
.charts{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}
svg.chart{background:#fafafa;border:1px solid #e5e7eb;border-radius:6px}
svg .title{font-weight:600;font-size:13px;text-anchor:middle}
svg .tick{font-size:10px;text-anchor:end;fill:#6b7280}svg .tick-x{font-size:10px;text-anchor:middle;fill:#6b7280}
svg .label{font-size:11px;text-anchor:middle}svg .value{font-size:11px;text-anchor:middle;font-weight:600}
svg .series{font-size:11px;text-anchor:end}svg .grid{stroke:#e5e7eb}
svg .whisker{stroke:#111827;stroke-width:1.5;fill:none}svg .curve{fill:none;stroke-width:2}
.controls{margin:8px 0 12px;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
#search{padding:5px 8px;font-size:14px}
.ok{color:#15803d}.bad{color:#b91c1c}td.regressed{background:#fef2f2}
.scores-line{color:#6b7280;font-size:11px}.cited{color:#15803d;font-weight:600}
details{margin-top:4px;font-size:12px}blockquote{margin:2px 0 6px 8px;color:#374151;white-space:pre-wrap}
"""

SCRIPT = """
(function () {
  var rows = Array.prototype.slice.call(document.querySelectorAll('#question-table tbody tr'));
  var search = document.getElementById('search');
  var setFilter = document.getElementById('set-filter');
  var only = document.getElementById('only');
  var shown = document.getElementById('shown');
  var texts = rows.map(function (row) { return row.textContent.toLowerCase(); });
  function apply() {
    var words = search.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var count = 0;
    rows.forEach(function (row, i) {
      var visible = words.every(function (w) { return texts[i].indexOf(w) >= 0; }) &&
        (!setFilter.value || row.dataset.set === setFilter.value) &&
        (!only.value || (' ' + row.dataset.flags + ' ').indexOf(' ' + only.value + ' ') >= 0);
      row.hidden = !visible;
      if (visible) { count += 1; }
    });
    shown.textContent = String(count);
  }
  var params = new URLSearchParams(location.hash.replace(/^#/, ''));
  if (params.get('q')) { search.value = params.get('q'); }
  if (params.get('set')) { setFilter.value = params.get('set'); }
  if (params.get('only')) { only.value = params.get('only'); }
  [search, setFilter, only].forEach(function (el) { el.addEventListener('input', apply); });
  apply();
  document.body.setAttribute('data-ready', '1');
})();
"""
