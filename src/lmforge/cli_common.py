"""What every ``lmforge`` command shares: the Typer app, the consoles, the option types, loading a recipe and
running its stages, and the one place a command's lmforge error ends (:class:`_Commands`).

Exit codes: 0 success, 1 a stage failed, 2 bad input (recipe, data, model reference), 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from lmforge.errors import ConfigError, LmforgeError, Problem


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
RunDirOption = Annotated[
    str | None, typer.Option("--run-dir", help="Parent folder of run directories (default: runs).")
]
AllowedHostOption = Annotated[
    list[str] | None,
    typer.Option(help="Also accept this Host header: NAME or NAME:PORT ('*': any). Repeatable."),
]
AllowedOriginOption = Annotated[
    list[str] | None,
    typer.Option(help="Let this web origin call the server: scheme://host[:port] ('*': any). Repeatable."),
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
