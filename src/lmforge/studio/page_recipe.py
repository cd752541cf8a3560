"""The studio's Recipe page: a form generated from the recipe schema, live validation, YAML both ways, the
plan, save and start.

The page's values live per browser session (``form.FormValues``): each field sends only its own value, so
changes made while another is checked are never lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from lmforge.errors import ConfigError, LmforgeError
from lmforge.studio import form
from lmforge.studio.pages import Studio, plain_text
from lmforge.studio.reach import ReachError


class RecipePage:
    """The Recipe tab: its components, built inside an open ``gr.Blocks``, and its handlers."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.fields = form.recipe_fields()
        self.forms = form.FormValues([field.default for field in self.fields])
        start_recipe = studio.settings.recipe or Path.cwd() / "studio-recipe.yaml"
        with gr.Tab("Recipe", id="recipe", elem_id="page-recipe"):
            with gr.Row():
                self.path = gr.Textbox(
                    str(start_recipe), label="Recipe file", scale=4, elem_id="recipe-path",
                    info="Load reads it into the form; Save writes the form's YAML there (relative paths in "
                    "the recipe are relative to its folder).",
                )  # fmt: skip
                load_button = gr.Button("Load", elem_id="recipe-load", scale=1)
                save_button = gr.Button("Save", elem_id="recipe-save", scale=1)
                start_button = gr.Button("Save and start run", variant="primary", elem_id="recipe-start", scale=1)
            self.validation = gr.Textbox(label="Validation (lmforge validate)", lines=3, elem_id="recipe-validation")
            status = gr.Markdown(elem_id="recipe-status")
            with gr.Tabs():
                with gr.Tab("Form"):
                    self.components = form.components(gr, self.fields)
                with gr.Tab("YAML"):
                    self.yaml_view = gr.Code(language="yaml", label="Recipe YAML", elem_id="recipe-yaml", lines=20)
                    apply_yaml = gr.Button("Apply the YAML to the form", elem_id="recipe-apply-yaml")
            plan_button = gr.Button("Estimate memory and time (lmforge plan)", elem_id="recipe-plan")
            plan_view = gr.Textbox(label="Plan", lines=8, elem_id="recipe-plan-output")

            # One at a time, in order; typing fast: the last value is always checked.
            for index, component in enumerate(self.components):
                component.input(
                    self.on_field(index),
                    inputs=[self.path, component],
                    outputs=[self.yaml_view, self.validation],
                    concurrency_id="recipe-form",
                    concurrency_limit=1,
                    show_progress="hidden",
                    trigger_mode="always_last",
                )
            load_button.click(self.on_load, inputs=self.path, outputs=self.filled)
            apply_yaml.click(self.on_apply_yaml, inputs=[self.yaml_view, self.path], outputs=self.filled)
            save_button.click(self.on_save, inputs=self.path, outputs=status, concurrency_id="recipe-form")
            start_button.click(self.on_start, inputs=self.path, outputs=status, concurrency_id="recipe-form")
            plan_button.click(self.on_plan, inputs=self.path, outputs=plan_view)

    @property
    def filled(self) -> list[Any]:
        """What loading a recipe updates: every field, the YAML and the validation message."""
        return [*self.components, self.yaml_view, self.validation]

    def on_field(self, index: int) -> Any:
        def changed(path: str, value: Any, request: gr.Request) -> tuple[str, str]:
            values = self.forms.values(request)
            values[index] = value
            try:
                raw = form.to_raw(self.fields, values)
            except form.FormProblem as exc:
                return gr.update(), f"error: {exc}"
            return form.to_yaml(raw), form.validation_message(raw, path)

        return changed

    def _unchanged(self, message: str) -> list[Any]:
        return [*(gr.update() for _ in self.components), gr.update(), message]

    def on_load(self, path: str, request: gr.Request) -> list[Any]:
        try:
            raw = form.parse_yaml(self.studio.reach.check(path).read_text(encoding="utf-8"))
        except (ReachError, ConfigError) as exc:
            return self._unchanged(f"error: {exc}")
        except OSError as exc:
            return self._unchanged(f"error: cannot read {path}: {exc}")
        return self._fill(raw, path, request)

    def _fill(self, raw: dict[str, Any], path: str, request: gr.Request) -> list[Any]:
        values, unknown = form.from_raw(self.fields, raw)
        self.forms.put(request, values)
        message = form.validation_message(raw, path)
        if unknown:
            message += f"\n(keys with no field in the form, kept out: {', '.join(unknown)})"
        return [*values, form.to_yaml(raw), message]

    def on_apply_yaml(self, text: str, path: str, request: gr.Request) -> list[Any]:
        try:
            return self._fill(form.parse_yaml(text or ""), path, request)
        except ConfigError as exc:
            return self._unchanged(f"error: {exc}")

    def _save(self, path: str, values: list[Any]) -> Path:
        from lmforge.rundir import atomic_write_text

        raw = form.to_raw(self.fields, values)
        target = self.studio.reach.check(path, write=True)
        self.studio.reach.check_recipe(raw, target.parent)
        form.check(raw, str(target), target.parent)  # never save an invalid recipe
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, form.to_yaml(raw))
        return target

    def on_save(self, path: str, request: gr.Request) -> str:
        try:
            target = self._save(path, self.forms.values(request))
        except (LmforgeError, form.FormProblem, ReachError, OSError) as exc:
            return f"**Not saved.** {exc}"
        return f"Saved `{target}`."

    def on_start(self, path: str, request: gr.Request) -> str:
        try:
            target = self._save(path, self.forms.values(request))
            name = self.studio.runs.start(target)
        except (LmforgeError, form.FormProblem, ReachError, OSError) as exc:
            return f"**Not started.** {exc}"
        return f"Saved `{target}` and started run **{name}**: follow it on the Runs page."

    def on_plan(self, path: str, request: gr.Request) -> str:
        try:
            raw = form.to_raw(self.fields, self.forms.values(request))
            target = Path(path).expanduser()
            recipe = form.check(raw, str(target), target.resolve().parent)
            from lmforge.perf.plan import plan_recipe, render

            hardware, plans = plan_recipe(recipe.model_copy(update={"run_dir": str(self.studio.runs.root)}))
        except (LmforgeError, form.FormProblem) as exc:
            return f"error: {exc}"
        if not plans:
            return f"no training stage to plan (stages: {', '.join(recipe.stages)})"
        return plain_text(render(hardware, plans))
