"""The studio's pages besides the recipe form: Data, Runs, Compare, Chat and Export.

Each page is a class whose constructor lays out its tab (inside an open ``gr.Blocks``) and binds its events;
its handlers are methods. What every page shares is a :class:`Studio`. Everything a page shows is read
from files or computed by the code the command line runs; long work runs in its own process.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from lmforge.errors import LmforgeError
from lmforge.studio import compare
from lmforge.studio.reach import Reach, ReachError
from lmforge.studio.runs import Runs

REFRESH_S = 2.0
"""How often the runs page re-reads the selected run (state, stages, curves, log)."""
EMPTY_REPLY = "(no reply: the model ended its turn at once)"
CURVE_COLUMNS = ["step", "loss", "series"]


@dataclass
class Studio:
    """What the pages share: the settings, the runs folder, the reach of file access, the chat models."""

    settings: Any
    runs: Runs
    reach: Reach
    chats: Any = field(default=None)
    """The base and tuned models the chat page loads (``chatting.ChatPairs``)."""


class DataPage:
    """What ``lmforge data inspect`` sees: inputs, sources, splits, token lengths, rejects, labels."""

    def __init__(self, studio: Studio):
        self.studio = studio
        with gr.Tab("Data", id="data", elem_id="page-data"):
            with gr.Row():
                target = gr.Textbox(
                    label="A recipe, or a data file or folder", scale=4, elem_id="data-target",
                    info="As lmforge data inspect: formats, counts, token lengths, rejects, what the loss sees.",
                )  # fmt: skip
                model = gr.Textbox(label="Tokenizer (a model; a recipe uses its own)", scale=2)
                button = gr.Button("Inspect", variant="primary", elem_id="data-inspect", scale=1)
            outputs = [
                gr.Markdown(),
                gr.Dataframe(label="Inputs", elem_id="data-files", interactive=False),
                gr.Dataframe(label="Per source", interactive=False),
                gr.Dataframe(label="Splits (tokens after the chat template)", interactive=False),
                gr.BarPlot(x="tokens", y="records", color="split", label="Token lengths", elem_id="data-histogram"),
                gr.Dataframe(label="Rejects", elem_id="data-rejects", interactive=False),
                gr.HighlightedText(
                    label="Train examples: the tokens the loss sees",
                    color_map={"loss": "green"},
                    elem_id="data-labels",
                    combine_adjacent=True,
                ),
            ]
            button.click(self.on_inspect, inputs=[target, model], outputs=outputs)

    def on_inspect(self, target: str, model: str, progress: gr.Progress = gr.Progress()) -> list[Any]:  # noqa: B008 (Gradio's way)
        from lmforge.studio.dataview import inspect

        progress(0, desc="reading and preparing the records")
        try:
            view = inspect(target, model.strip() or None, self.studio.reach)
        except (LmforgeError, ReachError, OSError) as exc:
            return [f"**{exc}**", *(gr.update() for _ in range(6))]
        flat = [piece for example in view.labels for piece in [*example, ("\n\n", None)]]
        return [
            "",
            pd.DataFrame(view.files),
            pd.DataFrame(view.sources),
            pd.DataFrame(view.splits),
            pd.DataFrame(view.lengths or [], columns=["split", "tokens", "records"]),
            pd.DataFrame(view.rejects or [], columns=["where", "reason", "detail"]),
            flat,
        ]


class RunsPage:
    """Stages, start / stop / resume, live loss curves and the log of the selected run."""

    def __init__(self, studio: Studio):
        self.studio = studio
        runs = studio.runs
        with gr.Tab("Runs", id="runs", elem_id="page-runs"):
            with gr.Row():
                self.select = gr.Dropdown(runs.names(), label="Run", scale=3, elem_id="run-select")
                state = gr.Textbox(label="Process", scale=2, elem_id="run-state", interactive=False)
                stop_button = gr.Button("Stop", elem_id="run-stop", scale=1)
                resume_button = gr.Button("Resume", elem_id="run-resume", scale=1)
            message = gr.Markdown(elem_id="run-message")
            self.all_runs = gr.Dataframe(label="All runs", elem_id="run-all", interactive=False)
            stages = gr.Dataframe(label="Stages", elem_id="run-stages", interactive=False)
            loss = gr.LinePlot(x="step", y="loss", color="series", label="Loss", elem_id="run-loss")
            points = gr.Markdown(elem_id="run-points")
            log = gr.Textbox(label="Log (last lines)", lines=14, max_lines=14, elem_id="run-log", autoscroll=True)
            timer = gr.Timer(REFRESH_S)
            self.outputs = [state, stages, loss, points, log]
            self.select.change(self.show, inputs=self.select, outputs=self.outputs)
            timer.tick(self.show, inputs=self.select, outputs=self.outputs)
            timer.tick(self.refresh_list, outputs=[self.select, self.all_runs])
            stop_button.click(self.on_stop, inputs=self.select, outputs=message)
            resume_button.click(self.on_resume, inputs=self.select, outputs=message)

    def refresh_list(self) -> tuple[Any, Any]:
        runs = self.studio.runs
        return gr.update(choices=runs.names()), pd.DataFrame(runs.overview())

    def show(self, name: str | None) -> list[Any]:
        runs = self.studio.runs
        if not name or name not in runs.names():
            return ["", pd.DataFrame(), pd.DataFrame(columns=CURVE_COLUMNS), "", ""]
        process = runs.process(name)
        state = runs.state(name) + (f" (pid {process.pid})" if process and process.alive else "")
        curves = runs.curves(name)
        points = pd.DataFrame(curves, columns=CURVE_COLUMNS)
        return [state, pd.DataFrame(runs.stages(name)), points, curve_points(curves), runs.log_tail(name)]

    def on_stop(self, name: str | None) -> str:
        if not name:
            return "Choose a run."
        return f"Stopped **{name}**." if self.studio.runs.stop(name) else f"**{name}** has no running process."

    def on_resume(self, name: str | None) -> str:
        if not name:
            return "Choose a run."
        try:
            self.studio.runs.resume(name)
        except LmforgeError as exc:
            return f"**Not resumed.** {exc}"
        return f"Resumed **{name}**."


class ComparePage:
    """Scores with intervals, a chart, two runs side by side and the questions one by one."""

    def __init__(self, studio: Studio):
        self.studio = studio
        runs = studio.runs
        with gr.Tab("Compare", id="compare", elem_id="page-compare"):
            with gr.Row():
                self.run = gr.Dropdown(runs.names(), label="Run", elem_id="compare-run")
                self.other = gr.Dropdown(
                    ["", *runs.names()], value="", label="Second run (side by side)", elem_id="compare-other"
                )
                refresh = gr.Button("Refresh", elem_id="compare-refresh")
            error = gr.Markdown()
            scores = gr.Dataframe(
                label="Scores (95% intervals; Δ is paired against base)", elem_id="compare-scores", interactive=False
            )
            chart = gr.BarPlot(x="variant", y="score", color="variant", label="Score per set", elem_id="compare-chart")
            both = gr.Dataframe(label="Two runs side by side", elem_id="compare-both", interactive=False)
            with gr.Row():
                set_filter = gr.Dropdown(label="Set", elem_id="question-set")
                text_filter = gr.Textbox(label="Words in the question, gold or answers", elem_id="question-filter")
                only_filter = gr.Radio(
                    list(compare.QUESTION_FILTERS), value="all", label="Show", elem_id="question-only"
                )
            self.questions = gr.Dataframe(label="Questions", elem_id="question-table", interactive=False, wrap=True)
            self.outputs = [error, scores, chart, both, set_filter]
            for trigger in (self.run.change, self.other.change, refresh.click):
                trigger(self.on_compare, inputs=[self.run, self.other], outputs=self.outputs)
            self.question_inputs = [self.run, set_filter, text_filter, only_filter]
            triggers = [self.run.change, set_filter.change, text_filter.change, only_filter.change, refresh.click]
            gr.on(
                triggers,
                self.on_questions,
                inputs=self.question_inputs,
                outputs=self.questions,
                trigger_mode="always_last",
            )

    def on_compare(self, name: str | None, other: str | None) -> list[Any]:
        if not name:
            return ["Choose a run.", *(gr.update() for _ in range(4))]
        runs = self.studio.runs
        other = other or None
        try:
            rows = compare.score_rows(runs.path(name))
            both_rows = compare.side_by_side(runs.path(name), runs.path(other)) if other else []
        except LmforgeError as exc:
            return [f"**{exc}**", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), gr.update(choices=[])]
        bars = pd.DataFrame(
            [{"variant": f"{r['set']}: {r['variant']}", "score": r["score"]} for r in rows],
            columns=["variant", "score"],
        )
        sets = sorted({r["set"] for r in rows})
        return ["", pd.DataFrame(rows), bars, pd.DataFrame(both_rows), gr.update(choices=["", *sets], value="")]

    def on_questions(self, name: str | None, set_name: str, text: str, only: str) -> Any:
        if not name:
            return pd.DataFrame()
        try:
            headers, rows = compare.question_rows(self.studio.runs.path(name), set_name or None, text or "", only)
        except LmforgeError:
            return pd.DataFrame()
        return pd.DataFrame(rows, columns=headers)


class ChatPage:
    """Base and tuned side by side, streamed, with or without retrieval."""

    def __init__(self, studio: Studio):
        self.studio = studio
        with gr.Tab("Chat", id="chat", elem_id="page-chat"):
            with gr.Row():
                self.run = gr.Dropdown(studio.runs.names(), label="Run (its base and tuned model)", elem_id="chat-run")
                rag = gr.Checkbox(False, label="Retrieval (the run's index; passages cited)", elem_id="chat-rag")
                tokens = gr.Slider(8, 512, value=128, step=8, label="Longest reply (tokens)")
            with gr.Row():
                base_view = gr.Chatbot(label="base", elem_id="chat-base", height=360)
                tuned_view = gr.Chatbot(label="tuned", elem_id="chat-tuned", height=360)
            passages = gr.Markdown(elem_id="chat-passages")
            with gr.Row():
                message = gr.Textbox(label="Message", scale=5, elem_id="chat-message")
                send = gr.Button("Send to both", variant="primary", scale=1, elem_id="chat-send")
            clear = gr.Button("New conversation", elem_id="chat-clear")
            inputs = [self.run, message, rag, tokens, base_view, tuned_view]
            outputs = [base_view, tuned_view, passages, message]
            send.click(self.on_send, inputs=inputs, outputs=outputs)
            message.submit(self.on_send, inputs=inputs, outputs=outputs)
            clear.click(lambda: ([], [], ""), outputs=[base_view, tuned_view, passages])

    def on_send(
        self, name: str | None, message: str, rag: bool, tokens: int, base: list[Any], tuned: list[Any]
    ) -> Iterator[list[Any]]:
        base, tuned = list(base or []), list(tuned or [])
        if not name or not message.strip():
            yield [base, tuned, "Choose a run and write a message.", message]
            return
        try:
            pair = self.studio.chats.get(self.studio.runs.path(name))
            history = {"base": chat_messages(base), "tuned": chat_messages(tuned)}
            for side in (base, tuned):
                side.append({"role": "user", "content": message})
                side.append({"role": "assistant", "content": ""})
            for reply in pair.stream(history, message, rag, int(tokens)):
                base[-1] = {"role": "assistant", "content": shown_reply(reply, "base")}
                tuned[-1] = {"role": "assistant", "content": shown_reply(reply, "tuned")}
                yield [base, tuned, citation_lines(reply.citations, reply.error), ""]
        except LmforgeError as exc:
            yield [base, tuned, f"**{exc}**", message]


class ExportPage:
    """Merge, GGUF and the parity checks, run as ``lmforge export`` in its own process."""

    def __init__(self, studio: Studio):
        self.studio = studio
        with gr.Tab("Export", id="export", elem_id="page-export"):
            with gr.Row():
                self.run = gr.Dropdown(studio.runs.names(), label="Run", elem_id="export-run")
                merge_button = gr.Button("Merge (HF folder)", elem_id="export-merge")
                gguf_button = gr.Button("GGUF (f16, q8_0)", elem_id="export-gguf")
            log = gr.Textbox(label="Progress", lines=10, elem_id="export-log")
            checks = gr.Dataframe(label="Parity checks", elem_id="export-checks", interactive=False)
            merge_button.click(self.exporter(""), inputs=self.run, outputs=[log, checks])
            gguf_button.click(self.exporter("f16,q8_0"), inputs=self.run, outputs=[log, checks])

    def exporter(self, gguf: str) -> Any:
        def on_export(name: str | None) -> Iterator[list[Any]]:
            if not name:
                yield ["Choose a run.", pd.DataFrame()]
                return
            yield from run_export(self.studio.runs.path(name), gguf)

        return on_export


# ---------------------------------------------------------------- helpers


def curve_points(curves: list[dict[str, Any]]) -> str:
    """``sft train: 12 points, last 2.31 · sft validation: ...``"""
    series: dict[str, list[float]] = {}
    for point in curves:
        series.setdefault(point["series"], []).append(point["loss"])
    return " · ".join(f"{name}: {len(losses)} points, last {losses[-1]:.4g}" for name, losses in series.items())


def plain_text(renderable: Any) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=110, color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


def chat_messages(history: list[Any]) -> list[dict[str, str]]:
    """A chatbot's history as chat messages (Gradio may hand content back as a list of text parts)."""
    shown = []
    for item in history:
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            continue
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if isinstance(content, str):
            shown.append({"role": item["role"], "content": "" if content == EMPTY_REPLY else content})
    return shown


def shown_reply(reply: Any, side: str) -> str:
    """A side's text so far; a finished empty reply says so rather than showing an empty bubble."""
    if reply.text[side].strip() or side not in reply.done:
        return reply.text[side]
    return EMPTY_REPLY


def citation_lines(citations: list[dict[str, Any]], error: str | None) -> str:
    lines = [f"**{error}**"] if error else []
    for citation in citations:
        source = citation.get("source") or {}
        text = " ".join(str(citation.get("text", "")).split())
        lines.append(f"[{citation['index']}] `{source.get('path', '')}` {text[:240]}")
    return "\n\n".join(lines)


def run_export(run: Path, gguf: str) -> Iterator[list[Any]]:
    """``lmforge export RUN`` in its own process; its output as it comes, then the parity checks."""
    command = [sys.executable, "-m", "lmforge", "export", str(run), "--gguf", gguf]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb", "COLUMNS": "120"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip())
        yield ["\n".join(lines[-40:]), pd.DataFrame()]
    code = process.wait()
    lines.append("✔ export finished" if code == 0 else f"✘ export failed (exit {code})")
    checks = []
    parity = run / "export" / "parity.json"
    if parity.is_file() and parity.stat().st_mtime > time.time() - 3600:
        for check in json.loads(parity.read_text(encoding="utf-8")).get("checks", []):
            details = {k: v for k, v in check.items() if k not in ("name", "passed")}
            checks.append({"check": check.get("name"), "passed": check.get("passed"), "details": json.dumps(details)})
    yield ["\n".join(lines[-40:]), pd.DataFrame(checks, columns=["check", "passed", "details"])]
