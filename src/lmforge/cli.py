"""The ``lmforge`` command line. Parses arguments, calls stage ``run()`` functions, maps errors to exit codes.

Exit codes: 0 success, 1 a stage failed, 2 bad input (recipe, data, model reference), 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lmforge.errors import LmforgeError

app = typer.Typer(
    name="lmforge",
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


def _fail(exc: LmforgeError) -> None:
    err_console.print("[bold red]error:[/bold red] ", end="")
    err_console.print(str(exc), highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _load(recipe_path: Path, overrides: list[str] | None, run_dir: str | None):
    from lmforge.config import load_recipe

    extra = list(overrides or [])
    if run_dir:
        extra.append(f"run_dir={run_dir}")
    return load_recipe(recipe_path, extra)


def _run(recipe_path: Path, overrides: list[str] | None, run_dir: str | None) -> None:
    from lmforge.pipeline import run_recipe

    try:
        recipe = _load(recipe_path, overrides, run_dir)
        run_recipe(recipe, console)
    except LmforgeError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err_console.print("interrupted; re-run the same command to resume")
        raise typer.Exit(130) from None


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Path to a YAML recipe.")],
    set_: SetOption = None,
    run_dir: RunDirOption = None,
) -> None:
    """Run every stage of a recipe (finished stages with unchanged inputs are skipped)."""
    _run(recipe, set_, run_dir)


@app.command()
def demo(set_: SetOption = None, run_dir: RunDirOption = None) -> None:
    """Run the shipped demo recipe: SmolLM2 learns an invented social security code, measured before and after."""
    from lmforge.config import shipped_recipe

    try:
        path = shipped_recipe("demo")
    except LmforgeError as exc:
        _fail(exc)
    _run(path, set_, run_dir)


@app.command()
def validate(recipe: Annotated[Path, typer.Argument(help="Path to a YAML recipe.")], set_: SetOption = None) -> None:
    """Check a recipe (keys, types, files) without running anything."""
    try:
        loaded = _load(recipe, set_, None)
    except LmforgeError as exc:
        _fail(exc)
    console.print(f"[green]✔[/green] {recipe} is valid: run {loaded.name!r}, stages {', '.join(loaded.stages)}")


@app.command()
def chat(
    target: Annotated[str, typer.Argument(help="A run directory (runs/NAME) or a model reference.")],
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
) -> None:
    """Chat with a run's tuned model or any model reference in the terminal."""
    from lmforge.serve.chat import chat_loop

    def show(piece: str) -> None:
        console.out(piece, end="", highlight=False)

    def ask(prompt: str) -> str:
        console.out("")
        return console.input(f"[bold cyan]{prompt}[/bold cyan]")

    try:
        chat_loop(
            target,
            read=ask,
            write=console.print,
            on_token=show,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            system=system,
        )
    except LmforgeError as exc:
        _fail(exc)


def _quiet_libraries() -> None:
    """Keep third-party chatter (weight-loading bars, deprecation notices) out of the user's terminal."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def main() -> None:
    _quiet_libraries()
    app()


if __name__ == "__main__":
    main()
