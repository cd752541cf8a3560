"""The ``lmforge`` commands that load a run's model to use it: chat, serve, studio, export, ask."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmforge.cli_common import (
    _fail,
    app,
    console,
    err_console,
    settings_command,
)
from lmforge.errors import ConfigError, LmforgeError
from lmforge.serve.settings import ServeSettings
from lmforge.studio.settings import StudioSettings


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

    chat_loop(
        target,
        read=ask,
        write=console.print,
        on_token=show,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        system=system,
    )


@app.command()
@settings_command(ServeSettings)
def serve(
    target: Annotated[str, typer.Argument(help="A run directory (runs/NAME) or a model reference.")],
    adapter: Annotated[
        list[str] | None,
        typer.Option(help="Serve another LoRA adapter on the same base: NAME=PATH (run dir or adapter folder)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model id of the base model ('base' in a LoRA run).")] = None,
    rag: Annotated[bool, typer.Option(help="Load the run's retrieval index (requests opt in with rag).")] = False,
    *,
    settings: ServeSettings,
) -> None:
    """Serve a run's model (and more LoRA adapters) behind an OpenAI-compatible API; a seq2seq run behind
    /v1/extract (a document in, its fields as JSON out). Every option after --rag is a setting of
    lmforge.serve.settings.ServeSettings."""
    from lmforge.serve.server import serve as serve_models

    retriever = None
    if rag:
        from lmforge.rag.retrieve import open_retriever

        retriever, _ = open_retriever(target, needed_by="serve --rag")
    serve_models(target, settings, adapters=adapter, name=name, retriever=retriever)


@app.command()
@settings_command(StudioSettings)
def studio(
    runs_dir: Annotated[Path, typer.Argument(help="Folder of run directories (created if missing).")] = Path("runs"),
    *,
    settings: StudioSettings,
) -> None:
    """A local web app for the whole job: recipe form, data, runs with live loss curves, comparison, chat, export
    (needs Gradio: the studio extra of lmforge, or pip install gradio)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        hint = "pip install 'lmforge[studio]' (or: pip install gradio)"
        err_console.print(f"[bold red]error:[/bold red] the studio needs Gradio: {hint}")
        raise typer.Exit(2) from None
    from lmforge.studio.serving import serve_studio

    try:
        serve_studio(settings)
    except LmforgeError as exc:
        _fail(exc)


@app.command()
def export(
    target: Annotated[str, typer.Argument(help="A run directory (runs/NAME) or a model reference.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: RUN/export).")] = None,
    gguf: Annotated[str, typer.Option(help="GGUF types, comma-separated: f16, bf16, q8_0 ('' for none).")] = "f16,q8_0",
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter folder to merge (for a model reference).")] = None,
    name: Annotated[str | None, typer.Option(help="Model name in the GGUF metadata and file names.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Sample prompts for the parity checks.")] = 4,
    min_agreement: Annotated[float, typer.Option(help="Least next-token agreement of a GGUF with the merge.")] = 0.9,
    parity: Annotated[bool, typer.Option(help="Run the parity checks (a failing check fails the export).")] = True,
) -> None:
    """Merge LoRA into the base, save an HF folder, GGUF files and an Ollama Modelfile, and check parity."""
    from lmforge.export.run import ExportSettings, run_export

    settings = ExportSettings(
        out_dir=out,
        gguf_types=[t.strip() for t in gguf.split(",") if t.strip()],
        name=name,
        samples=samples,
        min_agreement=min_agreement,
        parity=parity,
    )
    result = run_export(target, settings, adapter=adapter)
    console.print(f"[green]✔[/green] exported to {result.out_dir}")


@app.command()
def push(
    run: Annotated[Path, typer.Argument(help="A run directory whose export is done (lmforge export RUN).")],
    repo: Annotated[str, typer.Option(help="The model repository, owner/name.")],
    public: Annotated[bool, typer.Option("--public", help="Create the repository public (default: private).")] = False,
) -> None:
    """Upload the export (HF folder with its model card, GGUF files, Modelfile) to a model hub; needs $HF_TOKEN."""
    from lmforge.export.push import push_export

    try:
        address = push_export(run, repo, private=not public)
    except LmforgeError as exc:
        _fail(exc)
    console.print(f"[green]✔[/green] pushed to {address}")


@app.command()
def ask(
    run: Annotated[str, typer.Argument(help="A run directory (runs/NAME) whose recipe ran the index stage.")],
    question: Annotated[str, typer.Argument(help="The question.")],
    k: Annotated[int | None, typer.Option("--k", min=1, help="Passages to retrieve (default: index.top_k).")] = None,
    mode: Annotated[str | None, typer.Option(help="bm25, dense or hybrid (default: index.mode).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest reply in tokens.")] = 128,
    base: Annotated[bool, typer.Option("--base", help="Answer with the base model, not the tuned one.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer and passages as JSON.")] = False,
    route: Annotated[
        bool,
        typer.Option(help="No passages for questions far from every chunk (the index's threshold)."),
    ] = True,
) -> None:
    """Answer a question from a run's documents: retrieve passages, answer with them, cite them."""
    import json

    from rich.markup import escape

    from lmforge.rag.ask import ask as answer_question
    from lmforge.rag.ask import format_source

    _check_rag_mode("--mode", mode)
    answer = answer_question(
        Path(run), question, k=k, mode=mode, max_new_tokens=max_new_tokens, use_base=base, route=route
    )
    if as_json:
        console.out(json.dumps(answer.as_dict(), ensure_ascii=False, indent=2), highlight=False)
        return
    console.print(f"[bold]{answer.model}>[/bold] {escape(answer.reply)}", highlight=False)
    if not answer.passages and answer.threshold is not None:
        console.print(
            f"[dim]no passages: the question is outside the documents (relevance {answer.relevance:.2f} "
            f"< {answer.threshold:.2f}; --no-route retrieves anyway)[/dim]"
        )
        return
    console.print("[dim]passages (✔ cited):[/dim]")
    for number, passage in enumerate(answer.passages, start=1):
        mark = "[green]✔[/green]" if passage in answer.cited else " "
        console.print(f" {mark} \\[{number}] {escape(format_source(passage))}", highlight=False)


def _check_rag_mode(option: str, mode: str | None) -> None:
    """Exit with code 2 unless ``mode`` is a retrieval mode (or unset)."""
    from lmforge.serve.settings import rag_mode_problems

    if problems := rag_mode_problems(option, mode):
        _fail(ConfigError("lmforge ask", problems))
