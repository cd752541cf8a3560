"""What every ``lmforge`` command shares: the Typer app, the consoles, the option types, loading a recipe and
running its stages, and the one place a command's lmforge error ends (:class:`_Commands`).

Exit codes: 0 success, 1 a stage failed, 2 bad input (recipe, data, model reference), 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console
from typer.core import TyperGroup

from lmforge.errors import ConfigError, LmforgeError, Problem
from lmforge.options import Marked, marked_fields


class _Commands(TyperGroup):
    """The one place where a command's lmforge error ends: ``error: ...`` on stderr, the error's exit code
    (every sub-command, the ``data`` group's too, runs inside this group's ``invoke``)."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LmforgeError as exc:
            _fail(exc)


app = typer.Typer(
    name="lmforge",
    cls=_Commands,
    help="Turn a base model and domain documents into a measured specialist, from one YAML recipe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key, e.g. --set sft.lr=1e-4 (repeatable)."),
]
BudgetOption = Annotated[
    str | None,
    typer.Option(help="End the run within this time (15m, 1h30m, 900): eval keeps its time, training fits the rest."),
]


def with_budget(overrides: list[str] | None, budget: str | None) -> list[str] | None:
    """``--budget`` as a recipe override: ``0`` or ``none`` runs without one (a recipe's own included)."""
    if budget is None:
        return overrides
    return [*(overrides or []), "budget=null" if budget.strip().lower() in ("0", "none") else f"budget={budget}"]


RunDirOption = Annotated[
    str | None, typer.Option("--run-dir", help="Parent folder of run directories (default: runs).")
]


def _fail(exc: LmforgeError) -> None:
    from lmforge.distributed import world

    rank = world().rank if world().distributed else None
    err_console.print(
        "[bold red]error:[/bold red] " if rank is None else f"[bold red]error (rank {rank}):[/bold red] ", end=""
    )
    err_console.print(str(exc), highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _settings(kind: Any, **values: Any) -> Any:
    """A command's settings model, built from its options; its own checks fail the command with exit code 2."""
    try:
        return kind(**values)
    except LmforgeError as exc:
        _fail(exc)


def settings_command(kind: type, *, name: str = "settings") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per :class:`~lmforge.options.Opt` field of the settings dataclass ``kind`` (its
    help, bounds and name, written only there), after the command's own parameters; the command receives ``kind``
    built from them as ``name`` (its checks failing the command with exit code 2)."""

    def wrap(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(command).parameters.values()]
        own = [p for p in own if p.name != name]
        fields = marked_fields(kind)
        lists = {m.field.name for m in fields if m.field.default_factory is not dataclasses.MISSING}
        # the command's own parameters that are settings too (studio's runs_dir argument)
        shared = {p.name for p in own} & {f.name for f in dataclasses.fields(kind)}
        options = [
            inspect.Parameter(
                m.field.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=m.default,
                annotation=Annotated[
                    m.kind | None if m.default is None else m.kind,
                    typer.Option(_declared(m), help=m.opt.help, min=m.opt.min, max=m.opt.max),
                ],
            )
            for m in fields
        ]

        @functools.wraps(command)
        def with_settings(**values: Any) -> Any:
            mine = {p.name: values.pop(p.name) for p in own}
            values = {key: list(value or []) if key in lists else value for key, value in values.items()}
            values |= {key: value for key, value in mine.items() if key in shared}
            return command(**mine, **{name: _settings(kind, **values)})

        parameters = own + options
        with_settings.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        with_settings.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_settings

    return wrap


def _declared(marked: Marked) -> str:
    """The option's declaration: ``--name``, or ``--name/--no-name`` for a switch not given its own flag."""
    option = marked.opt.option_name(marked.field.name)
    if marked.kind is bool and marked.opt.flag is None:
        return f"{option}/--no-{option.removeprefix('--')}"
    return option


def _load(recipe_path: Path, overrides: list[str] | None, run_dir: str | None):
    from lmforge.config import load_recipe

    extra = list(overrides or [])
    if run_dir:
        extra.append(f"run_dir={run_dir}")
    return load_recipe(recipe_path, extra)


def only_stages(recipe: Any, only: list[str] | None) -> list[str] | None:
    """``--only`` names checked against the recipe's stages, in pipeline order.

    Raises:
        ConfigError: a name the recipe does not list.
    """
    if not only:
        return None
    unknown = [name for name in only if name not in recipe.stages]
    if unknown:
        problem = Problem("--only", f"got {unknown}; expected stages of the recipe: {', '.join(recipe.stages)}")
        raise ConfigError("lmforge run", [problem])
    return [name for name in recipe.stages if name in only]


def _run(recipe_path: Path, overrides: list[str] | None, run_dir: str | None, only: list[str] | None = None) -> None:
    from lmforge.pipeline import run_recipe

    try:
        recipe = _load(recipe_path, overrides, run_dir)
        run_recipe(recipe, console, only=only_stages(recipe, only))
    except KeyboardInterrupt:
        err_console.print("interrupted; re-run the same command to resume")
        raise typer.Exit(130) from None
