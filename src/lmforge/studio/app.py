"""``lmforge studio``: the Gradio app, its pages and how it is served.

Pages: Recipe (a form generated from the recipe schema, live validation, YAML both ways, plan, start),
Data (what ``lmforge data inspect`` sees), Runs (stages, start / stop / resume, live loss curves, log),
Compare (scores with intervals, a chart, the questions one by one, two runs side by side), Chat (base
and tuned side by side, streamed, with or without retrieval) and Export (merge, GGUF, parity checks).

Everything the pages show is read from files (recipes, run folders) or computed by the code the
command line runs; long work (runs, exports) runs in its own process, so a reloaded page or a second
tab sees the same state and nothing waits on the page. Each page is a class of its own
(:mod:`lmforge.studio.page_recipe`, :mod:`lmforge.studio.pages`); this module wires them together. How the
app is served (the token gate): :mod:`lmforge.studio.serving`.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
import gradio as gr
import pandas as pd

from lmforge.studio.page_recipe import RecipePage
from lmforge.studio.pages import ChatPage, ComparePage, DataPage, ExportPage, RunsPage, Studio
from lmforge.studio.reach import Reach
from lmforge.studio.runs import Runs
from lmforge.studio.settings import StudioSettings

# ---------------------------------------------------------------- the pages


def build_blocks(settings: StudioSettings) -> Any:
    """The Gradio Blocks of the studio (not yet served): the six pages, and what a page load refreshes."""
    from lmforge.studio.chatting import ChatPairs

    runs = Runs(settings.runs_dir)
    reach = Reach.of(settings.runs_dir, settings.recipe, settings.allow_dirs, settings.allow_remote_code)
    studio = Studio(settings, runs, reach, ChatPairs())
    with gr.Blocks(title="lmforge studio", analytics_enabled=False) as blocks:
        gr.Markdown(f"# lmforge studio\nRuns in `{runs.root}`")
        with gr.Tabs(elem_id="pages"):
            recipe = RecipePage(studio)
            DataPage(studio)
            runs_page = RunsPage(studio)
            comparing = ComparePage(studio)
            chat = ChatPage(studio)
            export = ExportPage(studio)

        def on_page_load() -> list[Any]:
            names = runs.names()
            latest = gr.update(choices=names, value=names[0] if names else None)
            other = gr.update(choices=["", *names], value="")
            return [latest, latest, other, latest, latest, pd.DataFrame(runs.overview())]

        chosen = [runs_page.select, comparing.run, comparing.other, chat.run, export.run, runs_page.all_runs]
        loaded = blocks.load(on_page_load, outputs=chosen)
        # The latest run is chosen on every page: show its state and comparison now (not on a change event).
        loaded.then(runs_page.show, inputs=runs_page.select, outputs=runs_page.outputs)
        loaded.then(comparing.on_compare, inputs=[comparing.run, comparing.other], outputs=comparing.outputs).then(
            comparing.on_questions, inputs=comparing.question_inputs, outputs=comparing.questions
        )
        if settings.recipe is not None and settings.recipe.is_file():
            blocks.load(recipe.on_load, inputs=recipe.path, outputs=recipe.filled)
    return blocks
