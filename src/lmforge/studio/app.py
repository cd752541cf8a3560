"""``lmforge studio``: the Gradio app, its pages and how it is served.

Pages: Recipe (a form generated from the recipe schema, live validation, YAML both ways, plan, start),
Data (what ``lmforge data inspect`` sees), Runs (stages, start / stop / resume, live loss curves, log),
Compare (scores with intervals, a chart, the questions one by one, two runs side by side), Chat (base
and tuned side by side, streamed, with or without retrieval) and Export (merge, GGUF, parity checks).

Everything the pages show is read from files (recipes, run folders) or computed by the code the
command line runs; long work (runs, exports) runs in its own process, so a reloaded page or a second
tab sees the same state and nothing waits on the page. How the app is served (the token gate):
:mod:`lmforge.studio.serving`.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
import gradio as gr

from lmforge.errors import ConfigError, LmforgeError
from lmforge.studio import compare, form
from lmforge.studio.reach import Reach, ReachError
from lmforge.studio.runs import Runs

REFRESH_S = 2.0
"""How often the runs page re-reads the selected run (state, stages, curves, log)."""
EMPTY_REPLY = "(no reply: the model ended its turn at once)"


@dataclass
class StudioSettings:
    runs_dir: Path
    host: str = "127.0.0.1"
    port: int = 7860
    recipe: Path | None = None
    """A recipe to open on the recipe page."""
    allowed_hosts: list[str] | None = None
    allowed_origins: list[str] | None = None
    no_token: bool = False
    """Serve without a token (loopback only; any local user and any local page can then use the studio)."""
    allow_dirs: list[Path] | None = None
    """Folders besides ``runs_dir`` (and the shipped recipes) that Load, Save and Data may read or write."""
    allow_remote_code: bool = False
    """Whether a recipe saved or run from the studio may set ``model.trust_remote_code: true``."""
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


# ---------------------------------------------------------------- the pages


def build_blocks(settings: StudioSettings) -> Any:
    """The Gradio Blocks of the studio (not yet served)."""
    import pandas as pd

    runs = Runs(settings.runs_dir)
    reach = Reach.of(settings.runs_dir, settings.recipe, settings.allow_dirs, settings.allow_remote_code)
    fields = form.recipe_fields()
    from lmforge.studio.chatting import ChatPairs

    chats = ChatPairs()
    forms = form.FormValues([field.default for field in fields])
    start_recipe = settings.recipe or Path.cwd() / "studio-recipe.yaml"

    def run_choices() -> Any:
        return gr.update(choices=runs.names())

    with gr.Blocks(title="lmforge studio", analytics_enabled=False) as blocks:
        gr.Markdown(f"# lmforge studio\nRuns in `{runs.root}`")
        with gr.Tabs(elem_id="pages"):
            # ------------------------------------------------------------ recipe
            with gr.Tab("Recipe", id="recipe", elem_id="page-recipe"):
                with gr.Row():
                    recipe_path = gr.Textbox(
                        str(start_recipe), label="Recipe file", scale=4, elem_id="recipe-path",
                        info="Load reads it into the form; Save writes the form's YAML there (relative paths in "
                        "the recipe are relative to its folder).",
                    )  # fmt: skip
                    load_button = gr.Button("Load", elem_id="recipe-load", scale=1)
                    save_button = gr.Button("Save", elem_id="recipe-save", scale=1)
                    start_button = gr.Button("Save and start run", variant="primary", elem_id="recipe-start", scale=1)
                validation = gr.Textbox(label="Validation (lmforge validate)", lines=3, elem_id="recipe-validation")
                recipe_status = gr.Markdown(elem_id="recipe-status")
                with gr.Tabs():
                    with gr.Tab("Form"):
                        components = form.components(gr, fields)
                    with gr.Tab("YAML"):
                        yaml_view = gr.Code(language="yaml", label="Recipe YAML", elem_id="recipe-yaml", lines=20)
                        apply_yaml = gr.Button("Apply the YAML to the form", elem_id="recipe-apply-yaml")
                plan_button = gr.Button("Estimate memory and time (lmforge plan)", elem_id="recipe-plan")
                plan_view = gr.Textbox(label="Plan", lines=8, elem_id="recipe-plan-output")

                def on_field(index: int) -> Any:
                    def changed(path: str, value: Any, request: gr.Request) -> tuple[str, str]:
                        values = forms.values(request)
                        values[index] = value
                        try:
                            raw = form.to_raw(fields, values)
                        except form.FormProblem as exc:
                            return gr.update(), f"error: {exc}"
                        return form.to_yaml(raw), form.validation_message(raw, path)

                    return changed

                # Each field sends only its own value; the page's values live here (per browser session), so
                # changes made while another is checked are never lost. One at a time, in order.
                for index, component in enumerate(components):
                    component.input(
                        on_field(index),
                        inputs=[recipe_path, component],
                        outputs=[yaml_view, validation],
                        concurrency_id="recipe-form",
                        concurrency_limit=1,
                        show_progress="hidden",
                        trigger_mode="always_last",  # typing fast: the last value is always checked
                    )

                def on_load(path: str, request: gr.Request) -> list[Any]:
                    try:
                        raw = form.parse_yaml(reach.check(path).read_text(encoding="utf-8"))
                    except ReachError as exc:
                        return [*(gr.update() for _ in components), gr.update(), f"error: {exc}"]
                    except OSError as exc:
                        return [*(gr.update() for _ in components), gr.update(), f"error: cannot read {path}: {exc}"]
                    except ConfigError as exc:
                        return [*(gr.update() for _ in components), gr.update(), f"error: {exc}"]
                    return _fill(raw, path, request)

                def _fill(raw: dict[str, Any], path: str, request: gr.Request) -> list[Any]:
                    values, unknown = form.from_raw(fields, raw)
                    forms.put(request, values)
                    message = form.validation_message(raw, path)
                    if unknown:
                        message += f"\n(keys with no field in the form, kept out: {', '.join(unknown)})"
                    return [*values, form.to_yaml(raw), message]

                load_button.click(on_load, inputs=recipe_path, outputs=[*components, yaml_view, validation])

                def on_apply_yaml(text: str, path: str, request: gr.Request) -> list[Any]:
                    try:
                        return _fill(form.parse_yaml(text or ""), path, request)
                    except ConfigError as exc:
                        return [*(gr.update() for _ in components), gr.update(), f"error: {exc}"]

                apply_yaml.click(
                    on_apply_yaml, inputs=[yaml_view, recipe_path], outputs=[*components, yaml_view, validation]
                )

                def save(path: str, values: list[Any]) -> tuple[Path, dict[str, Any]]:
                    raw = form.to_raw(fields, values)
                    target = reach.check(path, write=True)
                    reach.check_recipe(raw, target.parent)
                    form.check(raw, str(target), target.parent)  # never save an invalid recipe
                    from lmforge.rundir import atomic_write_text

                    target.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(target, form.to_yaml(raw))
                    return target, raw

                def on_save(path: str, request: gr.Request) -> str:
                    try:
                        target, _ = save(path, forms.values(request))
                    except (LmforgeError, form.FormProblem, ReachError, OSError) as exc:
                        return f"**Not saved.** {exc}"
                    return f"Saved `{target}`."

                save_button.click(on_save, inputs=recipe_path, outputs=recipe_status, concurrency_id="recipe-form")

                def on_start(path: str, request: gr.Request) -> str:
                    try:
                        target, _ = save(path, forms.values(request))
                        name = runs.start(target)
                    except (LmforgeError, form.FormProblem, ReachError, OSError) as exc:
                        return f"**Not started.** {exc}"
                    return f"Saved `{target}` and started run **{name}**: follow it on the Runs page."

                start_button.click(on_start, inputs=recipe_path, outputs=recipe_status, concurrency_id="recipe-form")

                def on_plan(path: str, request: gr.Request) -> str:
                    try:
                        raw = form.to_raw(fields, forms.values(request))
                        target = Path(path).expanduser()
                        recipe = form.check(raw, str(target), target.resolve().parent)
                        from lmforge.perf.plan import plan_recipe, render

                        hardware, plans = plan_recipe(recipe.model_copy(update={"run_dir": str(runs.root)}))
                    except (LmforgeError, form.FormProblem) as exc:
                        return f"error: {exc}"
                    if not plans:
                        return f"no training stage to plan (stages: {', '.join(recipe.stages)})"
                    return _plain(render(hardware, plans))

                plan_button.click(on_plan, inputs=recipe_path, outputs=plan_view)

            # ------------------------------------------------------------ data
            with gr.Tab("Data", id="data", elem_id="page-data"):
                with gr.Row():
                    data_target = gr.Textbox(
                        label="A recipe, or a data file or folder", scale=4, elem_id="data-target",
                        info="As lmforge data inspect: formats, counts, token lengths, rejects, what the loss sees.",
                    )  # fmt: skip
                    data_model = gr.Textbox(label="Tokenizer (a model; a recipe uses its own)", scale=2)
                    data_button = gr.Button("Inspect", variant="primary", elem_id="data-inspect", scale=1)
                data_error = gr.Markdown()
                data_files = gr.Dataframe(label="Inputs", elem_id="data-files", interactive=False)
                data_sources = gr.Dataframe(label="Per source", interactive=False)
                data_splits = gr.Dataframe(label="Splits (tokens after the chat template)", interactive=False)
                data_hist = gr.BarPlot(
                    x="tokens", y="records", color="split", label="Token lengths", elem_id="data-histogram"
                )
                data_rejects = gr.Dataframe(label="Rejects", elem_id="data-rejects", interactive=False)
                data_labels = gr.HighlightedText(
                    label="Train examples: the tokens the loss sees",
                    color_map={"loss": "green"},
                    elem_id="data-labels",
                    combine_adjacent=True,
                )

                def on_inspect(target: str, model: str, progress: gr.Progress = gr.Progress()) -> list[Any]:  # noqa: B008 (Gradio's way)
                    from lmforge.studio.dataview import inspect

                    progress(0, desc="reading and preparing the records")
                    try:
                        view = inspect(target, model.strip() or None, reach)
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

                data_button.click(
                    on_inspect,
                    inputs=[data_target, data_model],
                    outputs=[data_error, data_files, data_sources, data_splits, data_hist, data_rejects, data_labels],
                )

            # ------------------------------------------------------------ runs
            with gr.Tab("Runs", id="runs", elem_id="page-runs"):
                with gr.Row():
                    run_select = gr.Dropdown(runs.names(), label="Run", scale=3, elem_id="run-select")
                    run_state = gr.Textbox(label="Process", scale=2, elem_id="run-state", interactive=False)
                    stop_button = gr.Button("Stop", elem_id="run-stop", scale=1)
                    resume_button = gr.Button("Resume", elem_id="run-resume", scale=1)
                run_message = gr.Markdown(elem_id="run-message")
                all_runs = gr.Dataframe(label="All runs", elem_id="run-all", interactive=False)
                stages_table = gr.Dataframe(label="Stages", elem_id="run-stages", interactive=False)
                loss_plot = gr.LinePlot(x="step", y="loss", color="series", label="Loss", elem_id="run-loss")
                points_view = gr.Markdown(elem_id="run-points")
                log_view = gr.Textbox(
                    label="Log (last lines)", lines=14, max_lines=14, elem_id="run-log", autoscroll=True
                )
                timer = gr.Timer(REFRESH_S)

                def show_run(name: str | None) -> list[Any]:
                    if not name or name not in runs.names():
                        empty = pd.DataFrame(columns=["step", "loss", "series"])
                        return ["", pd.DataFrame(), empty, "", ""]
                    process = runs.process(name)
                    state = runs.state(name) + (f" (pid {process.pid})" if process and process.alive else "")
                    curves = runs.curves(name)
                    points = pd.DataFrame(curves, columns=["step", "loss", "series"])
                    return [state, pd.DataFrame(runs.stages(name)), points, _points(curves), runs.log_tail(name)]

                run_outputs = [run_state, stages_table, loss_plot, points_view, log_view]
                run_select.change(show_run, inputs=run_select, outputs=run_outputs)
                timer.tick(show_run, inputs=run_select, outputs=run_outputs)
                timer.tick(lambda: (run_choices(), pd.DataFrame(runs.overview())), outputs=[run_select, all_runs])

                def on_stop(name: str | None) -> str:
                    if not name:
                        return "Choose a run."
                    return f"Stopped **{name}**." if runs.stop(name) else f"**{name}** has no running process."

                def on_resume(name: str | None) -> str:
                    if not name:
                        return "Choose a run."
                    try:
                        runs.resume(name)
                    except LmforgeError as exc:
                        return f"**Not resumed.** {exc}"
                    return f"Resumed **{name}**."

                stop_button.click(on_stop, inputs=run_select, outputs=run_message)
                resume_button.click(on_resume, inputs=run_select, outputs=run_message)

            # ------------------------------------------------------------ compare
            with gr.Tab("Compare", id="compare", elem_id="page-compare"):
                with gr.Row():
                    compare_run = gr.Dropdown(runs.names(), label="Run", elem_id="compare-run")
                    compare_other = gr.Dropdown(
                        ["", *runs.names()], value="", label="Second run (side by side)", elem_id="compare-other"
                    )
                    compare_refresh = gr.Button("Refresh", elem_id="compare-refresh")
                compare_error = gr.Markdown()
                scores = gr.Dataframe(
                    label="Scores (95% intervals; Δ is paired against base)",
                    elem_id="compare-scores",
                    interactive=False,
                )
                chart = gr.BarPlot(
                    x="variant", y="score", color="variant", label="Score per set", elem_id="compare-chart"
                )
                both = gr.Dataframe(label="Two runs side by side", elem_id="compare-both", interactive=False)
                with gr.Row():
                    set_filter = gr.Dropdown(label="Set", elem_id="question-set")
                    text_filter = gr.Textbox(label="Words in the question, gold or answers", elem_id="question-filter")
                    only_filter = gr.Radio(
                        list(compare.QUESTION_FILTERS), value="all", label="Show", elem_id="question-only"
                    )
                question_table = gr.Dataframe(label="Questions", elem_id="question-table", interactive=False, wrap=True)

                def on_compare(name: str | None, other: str | None) -> list[Any]:
                    if not name:
                        return ["Choose a run.", *(gr.update() for _ in range(4))]
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
                    return [
                        "",
                        pd.DataFrame(rows),
                        bars,
                        pd.DataFrame(both_rows),
                        gr.update(choices=["", *sets], value=""),
                    ]

                def on_questions(name: str | None, set_name: str, text: str, only: str) -> Any:
                    if not name:
                        return pd.DataFrame()
                    try:
                        headers, rows = compare.question_rows(runs.path(name), set_name or None, text or "", only)
                    except LmforgeError:
                        return pd.DataFrame()
                    return pd.DataFrame(rows, columns=headers)

                compare_outputs = [compare_error, scores, chart, both, set_filter]
                for trigger in (compare_run.change, compare_other.change, compare_refresh.click):
                    trigger(on_compare, inputs=[compare_run, compare_other], outputs=compare_outputs)
                question_inputs = [compare_run, set_filter, text_filter, only_filter]
                gr.on(
                    [
                        compare_run.change,
                        set_filter.change,
                        text_filter.change,
                        only_filter.change,
                        compare_refresh.click,
                    ],
                    on_questions,
                    inputs=question_inputs,
                    outputs=question_table,
                    trigger_mode="always_last",
                )

            # ------------------------------------------------------------ chat
            with gr.Tab("Chat", id="chat", elem_id="page-chat"):
                with gr.Row():
                    chat_run = gr.Dropdown(runs.names(), label="Run (its base and tuned model)", elem_id="chat-run")
                    chat_rag = gr.Checkbox(
                        False, label="Retrieval (the run's index; passages cited)", elem_id="chat-rag"
                    )
                    chat_tokens = gr.Slider(8, 512, value=128, step=8, label="Longest reply (tokens)")
                with gr.Row():
                    base_view = gr.Chatbot(label="base", elem_id="chat-base", height=360)
                    tuned_view = gr.Chatbot(label="tuned", elem_id="chat-tuned", height=360)
                passages_view = gr.Markdown(elem_id="chat-passages")
                with gr.Row():
                    chat_message = gr.Textbox(label="Message", scale=5, elem_id="chat-message")
                    chat_send = gr.Button("Send to both", variant="primary", scale=1, elem_id="chat-send")
                chat_clear = gr.Button("New conversation", elem_id="chat-clear")

                def on_send(
                    name: str | None, message: str, rag: bool, tokens: int, base: list[Any], tuned: list[Any]
                ) -> Iterator[list[Any]]:
                    base, tuned = list(base or []), list(tuned or [])
                    if not name or not message.strip():
                        yield [base, tuned, "Choose a run and write a message.", message]
                        return
                    try:
                        pair = chats.get(runs.path(name))
                        history = {"base": _messages(base), "tuned": _messages(tuned)}
                        base.append({"role": "user", "content": message})
                        tuned.append({"role": "user", "content": message})
                        base.append({"role": "assistant", "content": ""})
                        tuned.append({"role": "assistant", "content": ""})
                        for reply in pair.stream(history, message, rag, int(tokens)):
                            base[-1] = {"role": "assistant", "content": _shown_reply(reply, "base")}
                            tuned[-1] = {"role": "assistant", "content": _shown_reply(reply, "tuned")}
                            yield [base, tuned, _citations(reply.citations, reply.error), ""]
                    except LmforgeError as exc:
                        yield [base, tuned, f"**{exc}**", message]

                chat_inputs = [chat_run, chat_message, chat_rag, chat_tokens, base_view, tuned_view]
                chat_outputs = [base_view, tuned_view, passages_view, chat_message]
                chat_send.click(on_send, inputs=chat_inputs, outputs=chat_outputs)
                chat_message.submit(on_send, inputs=chat_inputs, outputs=chat_outputs)
                chat_clear.click(lambda: ([], [], ""), outputs=[base_view, tuned_view, passages_view])

            # ------------------------------------------------------------ export
            with gr.Tab("Export", id="export", elem_id="page-export"):
                with gr.Row():
                    export_run = gr.Dropdown(runs.names(), label="Run", elem_id="export-run")
                    merge_button = gr.Button("Merge (HF folder)", elem_id="export-merge")
                    gguf_button = gr.Button("GGUF (f16, q8_0)", elem_id="export-gguf")
                export_log = gr.Textbox(label="Progress", lines=10, elem_id="export-log")
                export_checks = gr.Dataframe(label="Parity checks", elem_id="export-checks", interactive=False)

                def exporter(gguf: str) -> Any:
                    def on_export(name: str | None) -> Iterator[list[Any]]:
                        if not name:
                            yield ["Choose a run.", pd.DataFrame()]
                            return
                        yield from _export(runs.path(name), gguf)

                    return on_export

                merge_button.click(exporter(""), inputs=export_run, outputs=[export_log, export_checks])
                gguf_button.click(exporter("f16,q8_0"), inputs=export_run, outputs=[export_log, export_checks])

        def on_page_load() -> list[Any]:
            names = runs.names()
            latest = names[0] if names else None
            update = gr.update(choices=names, value=latest)
            other = gr.update(choices=["", *names], value="")
            return [update, update, other, update, update, pd.DataFrame(runs.overview())]

        loaded = blocks.load(
            on_page_load, outputs=[run_select, compare_run, compare_other, chat_run, export_run, all_runs]
        )
        # The latest run is chosen on every page: show its state and comparison now (not on a change event).
        loaded.then(show_run, inputs=run_select, outputs=run_outputs)
        loaded.then(on_compare, inputs=[compare_run, compare_other], outputs=compare_outputs).then(
            on_questions, inputs=question_inputs, outputs=question_table
        )
        if settings.recipe is not None and settings.recipe.is_file():
            blocks.load(on_load, inputs=recipe_path, outputs=[*components, yaml_view, validation])
    return blocks


def _points(curves: list[dict[str, Any]]) -> str:
    """``sft train: 12 points, last 2.31 · sft validation: ...``"""
    series: dict[str, list[float]] = {}
    for point in curves:
        series.setdefault(point["series"], []).append(point["loss"])
    return " · ".join(f"{name}: {len(losses)} points, last {losses[-1]:.4g}" for name, losses in series.items())


def _plain(renderable: Any) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=110, color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


def _messages(history: list[Any]) -> list[dict[str, str]]:
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


def _shown_reply(reply: Any, side: str) -> str:
    """A side's text so far; a finished empty reply says so rather than showing an empty bubble."""
    if reply.text[side].strip() or side not in reply.done:
        return reply.text[side]
    return EMPTY_REPLY


def _citations(citations: list[dict[str, Any]], error: str | None) -> str:
    lines = [f"**{error}**"] if error else []
    for citation in citations:
        source = citation.get("source") or {}
        text = " ".join(str(citation.get("text", "")).split())
        lines.append(f"[{citation['index']}] `{source.get('path', '')}` {text[:240]}")
    return "\n\n".join(lines)


def _export(run: Path, gguf: str) -> Iterator[list[Any]]:
    """``lmforge export RUN`` in its own process; its output as it comes, then the parity checks."""
    import json

    import pandas as pd

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
