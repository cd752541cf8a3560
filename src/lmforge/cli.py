"""The ``lmforge`` command line. Parses arguments, calls stage ``run()`` functions, maps errors to exit codes
(in one place: :class:`_Commands`).

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


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Path to a YAML recipe.")],
    set_: SetOption = None,
    run_dir: RunDirOption = None,
    nproc: Annotated[
        int, typer.Option(min=1, help="Processes on this machine (torch's elastic launcher; see docs/DISTRIBUTED.md).")
    ] = 1,
    master_port: Annotated[
        int | None, typer.Option(help="With --nproc: rendezvous port on 127.0.0.1 (default: a free one).")
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run just this stage of the recipe (repeatable); earlier ones must have run."),
    ] = None,
) -> None:
    """Run every stage of a recipe (finished stages with unchanged inputs are skipped)."""
    if nproc == 1:
        _run(recipe, set_, run_dir, only)
        return
    from lmforge.launch import launch_local
    from lmforge.pipeline import check_before_running

    loaded = _load(recipe, set_, run_dir)  # a bad recipe fails here, once, before any process starts
    check_before_running(loaded, processes=nproc)
    argv = ["run", str(recipe), *[arg for item in set_ or [] for arg in ("--set", item)]]
    argv += ["--run-dir", run_dir] if run_dir else []
    argv += [arg for stage in only or [] for arg in ("--only", stage)]
    launch_local(nproc, argv, loaded.run_path(), master_port)


@app.command()
def demo(set_: SetOption = None, run_dir: RunDirOption = None) -> None:
    """Run the shipped demo recipe: SmolLM2 learns an invented social security code, measured before and after."""
    from lmforge.config import shipped_recipe

    path = shipped_recipe("demo")
    _run(path, set_, run_dir)


@app.command()
def validate(recipe: Annotated[Path, typer.Argument(help="Path to a YAML recipe.")], set_: SetOption = None) -> None:
    """Check a recipe (keys, types, files) without running anything."""
    loaded = _load(recipe, set_, None)
    console.print(f"[green]✔[/green] {recipe} is valid: run {loaded.name!r}, stages {', '.join(loaded.stages)}")
    if "index" in loaded.stages and loaded.index.raft.enabled:
        from rich.markup import escape

        from lmforge.perf.plan import future_split_notes

        notes = future_split_notes(loaded)  # what RAFT will build from these data (read in memory)
        for note in notes.values():
            console.print(f"  {escape(note)}", highlight=False)


@app.command("eval")
def eval_(
    recipe: Annotated[Path, typer.Argument(help="Path to a YAML recipe.")],
    set_: SetOption = None,
    run_dir: RunDirOption = None,
) -> None:
    """Run only the eval stage of a recipe (its data stage, and sft if it has one, must have run)."""
    _run(recipe, set_, run_dir, only=["eval"])


@app.command()
def report(run: Annotated[Path, typer.Argument(help="A run directory (runs/NAME) whose eval stage ran.")]) -> None:
    """Write a run's eval/report.html again from its eval results and training logs (no model needed)."""
    from lmforge.evaluate.report import write_report

    path = write_report(run)
    console.print(f"[green]✔[/green] {path}")


@app.command()
def harness(
    run: Annotated[Path, typer.Argument(help="A run directory (runs/NAME) whose data stage ran.")],
    variant: Annotated[str, typer.Option(help="tuned (the run's sft result) or base.")] = "tuned",
    sets: Annotated[str | None, typer.Option(help="Comma-separated eval sets (default: the recipe's).")] = None,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated extra lm-eval tasks (data must be local).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Documents per task (quick checks).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="lm-eval batch size.")] = 8,
) -> None:
    """Evaluate a run's model with lm-evaluation-harness on the run's own sets (offline) and standard tasks."""
    from lmforge.evaluate.harness import command_line, run_harness

    metrics = run_harness(
        run,
        variant=variant,
        sets=sets.split(",") if sets else None,
        extra_tasks=tasks.split(",") if tasks else None,
        limit=limit,
        batch_size=batch_size,
    )
    for task, scores in metrics.items():
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items())
        console.print(f"[green]✔[/green] {task}: {shown}", highlight=False)
    console.print(f"[dim]same with lm-eval itself: {command_line(run, variant)}[/dim]", highlight=False)


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
def serve(
    target: Annotated[str, typer.Argument(help="A run directory (runs/NAME) or a model reference.")],
    adapter: Annotated[
        list[str] | None,
        typer.Option(help="Serve another LoRA adapter on the same base: NAME=PATH (run dir or adapter folder)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model id of the base model ('base' in a LoRA run).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but 127.0.0.1 needs an API key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "LMFORGE_API_KEY",
    max_batch_size: Annotated[int, typer.Option(min=1, help="Requests decoded together.")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="Wait for more requests before a batch.")] = 5.0,
    max_tokens_limit: Annotated[int, typer.Option(min=1, help="Largest max_tokens a request may ask.")] = 2048,
    max_request_bytes: Annotated[int, typer.Option(min=1024, help="Largest request body.")] = 1_000_000,
    max_upload_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest uploaded document (extraction runs).")
    ] = 20_000_000,
    max_uncompressed_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest expanded size of an uploaded DOCX.")
    ] = 100_000_000,
    max_upload_pages: Annotated[int, typer.Option(min=1, help="Most pages of an uploaded PDF.")] = 500,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests (or documents) waiting; more get 429.")] = 256,
    dtype: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    rag: Annotated[bool, typer.Option(help="Load the run's retrieval index (requests opt in with rag).")] = False,
    rag_default: Annotated[bool, typer.Option(help="With --rag: retrieve for requests that do not say.")] = False,
    rag_top_k: Annotated[
        int | None, typer.Option(min=1, help="With --rag: passages per request (default: the run's index.top_k).")
    ] = None,
    rag_mode: Annotated[
        str | None, typer.Option(help="With --rag: bm25, dense or hybrid (default: the run's index.mode).")
    ] = None,
    rag_route: Annotated[
        bool, typer.Option(help="With --rag: no passages for questions far from every chunk (the index's threshold).")
    ] = True,
    allowed_host: AllowedHostOption = None,
    allowed_origin: AllowedOriginOption = None,
) -> None:
    """Serve a run's model (and more LoRA adapters) behind an OpenAI-compatible API; a seq2seq run behind
    /v1/extract (a document in, its fields as JSON out)."""
    from lmforge.serve.server import ServeSettings
    from lmforge.serve.server import serve as serve_models

    _check_rag_mode("--rag-mode", rag_mode)
    settings = ServeSettings(
        host=host,
        port=port,
        api_key_env=api_key_env,
        max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms,
        max_tokens_limit=max_tokens_limit,
        max_request_bytes=max_request_bytes,
        max_upload_bytes=max_upload_bytes,
        max_uncompressed_bytes=max_uncompressed_bytes,
        max_upload_pages=max_upload_pages,
        max_queue=max_queue,
        dtype=dtype,
        threads=threads,
        rag_default=rag_default,
        rag_top_k=rag_top_k,
        rag_mode=rag_mode,
        rag_route=rag_route,
        allowed_hosts=list(allowed_host or []),
        allowed_origins=list(allowed_origin or []),
    )
    retriever = None
    if rag:
        from lmforge.rag.retrieve import open_retriever

        retriever, _ = open_retriever(target, needed_by="serve --rag")
    serve_models(target, settings, adapters=adapter, name=name, retriever=retriever)


@app.command()
def studio(
    runs_dir: Annotated[Path, typer.Argument(help="Folder of run directories (created if missing).")] = Path("runs"),
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 7860,
    recipe: Annotated[Path | None, typer.Option(help="A recipe to open on the recipe page.")] = None,
    allowed_host: AllowedHostOption = None,
    allowed_origin: AllowedOriginOption = None,
    no_token: Annotated[
        bool, typer.Option("--no-token", help="Serve without a token (loopback only: any local user can use it).")
    ] = False,
    allow_dir: Annotated[
        list[Path] | None, typer.Option(help="Let Load, Save and Data use this folder too (repeatable).")
    ] = None,
    allow_remote_code: Annotated[
        bool, typer.Option(help="Let recipes saved or started here set model.trust_remote_code: true.")
    ] = False,
    ssl_certfile: Annotated[str | None, typer.Option(help="Serve HTTPS with this certificate (PEM).")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="The certificate's private key (PEM).")] = None,
) -> None:
    """A local web app for the whole job: recipe form, data, runs with live loss curves, comparison, chat, export
    (needs Gradio: the studio extra of lmforge, or pip install gradio)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        hint = "pip install 'lmforge[studio]' (or: pip install gradio)"
        err_console.print(f"[bold red]error:[/bold red] the studio needs Gradio: {hint}")
        raise typer.Exit(2) from None
    from lmforge.studio.app import StudioSettings
    from lmforge.studio.serving import serve_studio

    settings = StudioSettings(
        runs_dir=runs_dir,
        host=host,
        port=port,
        recipe=recipe,
        allowed_hosts=list(allowed_host or []),
        allowed_origins=list(allowed_origin or []),
        no_token=no_token,
        allow_dirs=list(allow_dir or []),
        allow_remote_code=allow_remote_code,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    if (ssl_certfile is None) != (ssl_keyfile is None):
        err_console.print("[bold red]error:[/bold red] --ssl-certfile and --ssl-keyfile go together")
        raise typer.Exit(2)
    try:
        serve_studio(settings)
    except LmforgeError as exc:
        _fail(exc)


@app.command()
def synth(
    recipe: Annotated[Path, typer.Argument(help="Path to a YAML recipe with a synth section.")],
    set_: SetOption = None,
    run_dir: RunDirOption = None,
) -> None:
    """Run the data and synth stages of a recipe: a teacher writes training records (cached, resumable)."""
    _run(recipe, set_, run_dir, only=["data", "synth"])


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


@app.command()
def bench(
    recipe: Annotated[Path | None, typer.Option(help="Recipe whose data and sft settings to use (default: demo).")] = (
        None
    ),
    model: Annotated[str | None, typer.Option(help="Model reference instead of the recipe's.")] = None,
    seq_len: Annotated[
        list[int] | None, typer.Option("--seq-len", help="Sequence length (repeatable; default 1024).")
    ] = None,
    steps: Annotated[int, typer.Option(min=2, help="Optimizer steps per system, warm-up included.")] = 12,
    warmup: Annotated[int, typer.Option(min=0, help="First steps left out of the timing.")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per optimizer step, for every system.")] = 8,
    systems: Annotated[
        str, typer.Option(help="Comma-separated: baseline, trl, trl-fp32, lmforge, lmforge-lowmem.")
    ] = "baseline,trl,lmforge,lmforge-lowmem",
    workload: Annotated[
        str,
        typer.Option(
            help="sft: the chat examples the recipe's sft trains on (RAFT rows included); cpt: rows of --seq-len "
            "tokens packed from the recipe's documents."
        ),
    ] = "sft",
    out: Annotated[Path, typer.Option(help="Folder for bench.json, bench.md and the workers' logs.")] = Path(
        "bench-results"
    ),
    peak_tflops: Annotated[float | None, typer.Option(help="Peak TFLOP/s for MFU (default: this CPU's).")] = None,
    set_: SetOption = None,
) -> None:
    """Train the same LoRA SFT with the seed-style baseline, TRL and lmforge; compare speed, memory and loss."""
    from lmforge.perf.bench import SYSTEMS, BenchSettings, run_bench

    chosen = [s.strip() for s in systems.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown or not chosen:
        expected = ", ".join(SYSTEMS)
        err_console.print(f"[bold red]error:[/bold red] --systems: got {systems!r}; expected some of {expected}")
        raise typer.Exit(2)
    if workload not in ("sft", "cpt"):
        err_console.print(f"[bold red]error:[/bold red] --workload: got {workload!r}; expected sft or cpt")
        raise typer.Exit(2)
    if warmup >= steps:
        err_console.print(f"[bold red]error:[/bold red] --warmup {warmup} must be below --steps {steps}")
        raise typer.Exit(2)
    import importlib.util

    if any(s.startswith("trl") for s in chosen) and importlib.util.find_spec("trl") is None:
        err_console.print(
            "[bold red]error:[/bold red] the trl system needs TRL: pip install 'lmforge[bench]' (or leave trl out of "
            "--systems)"
        )
        raise typer.Exit(2)
    settings = BenchSettings(
        recipe=str(recipe) if recipe else None,
        overrides=list(set_ or []),
        model=model,
        steps=steps,
        warmup=warmup,
        batch_size=batch_size,
        peak_tflops=peak_tflops,
        workload=workload,
    )
    _load(recipe, set_, None) if recipe else None  # a bad recipe fails here, before any worker starts
    results = run_bench(settings, seq_len or [1024], chosen, out, console)
    console.print(f"[green]✔[/green] {out / 'bench.json'}, {out / 'bench.md'}")
    if any(r.error for r in results):
        raise typer.Exit(1)


@app.command()
def plan(
    recipe: Annotated[Path, typer.Argument(help="Path to a YAML recipe.")],
    set_: SetOption = None,
    run_dir: RunDirOption = None,
    arm: Annotated[
        list[str] | None,
        typer.Option(
            help="Also plan this variant: overrides separated by spaces ('sft.method=lora sft.lora.r=16'). "
            "Repeatable; the arms are compared in one table with the recipe itself."
        ),
    ] = None,
) -> None:
    """Estimate peak memory and time of a recipe's training stages on this machine, before running them."""
    from lmforge.perf.plan import plan_arms, plan_recipe, render, render_arms

    loaded = _load(recipe, set_, run_dir)
    hardware, plans = plan_recipe(loaded)
    if not plans:
        console.print(f"{recipe}: no training stage to plan (stages: {', '.join(loaded.stages)})")
        return
    console.print(render(hardware, plans))
    if arm:
        arms = plan_arms(lambda extra: _load(recipe, [*(set_ or []), *extra], run_dir), ["", *arm])
        console.print(render_arms(arms))


def _check_rag_mode(option: str, mode: str | None) -> None:
    """Exit with code 2 unless ``mode`` is a retrieval mode (or unset)."""
    if mode not in (None, "bm25", "dense", "hybrid"):
        err_console.print(f"[bold red]error:[/bold red] {option}: got {mode!r}; expected bm25, dense or hybrid")
        raise typer.Exit(2)


class _RecipeOrSubcommand(TyperGroup):
    """``lmforge data RECIPE`` runs the data stage; ``lmforge data inspect TARGET`` inspects."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["prepare", *args]
        return super().parse_args(ctx, args)


data_app = typer.Typer(
    cls=_RecipeOrSubcommand,
    help="Prepare a recipe's data (lmforge data RECIPE), or inspect data (lmforge data inspect PATH_OR_RECIPE).",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(
    recipe: Annotated[Path, typer.Argument(help="Path to a YAML recipe.")],
    set_: SetOption = None,
    run_dir: RunDirOption = None,
) -> None:
    """Run only the data stage of a recipe (unchanged inputs and settings reuse the prepared records)."""
    _run(recipe, set_, run_dir, only=["data"])


@data_app.command("inspect")
def data_inspect(
    target: Annotated[Path, typer.Argument(help="A YAML recipe, or a data file or folder.")],
    model: Annotated[
        str | None, typer.Option(help="Tokenizer for token lengths (default: the recipe's model; none for a path).")
    ] = None,
    show_labels: Annotated[
        int, typer.Option(help="Show this many rendered train examples with the tokens that carry loss highlighted.")
    ] = 0,
    set_: SetOption = None,
) -> None:
    """Show detected formats, counts and token lengths of a recipe's data or of one path; writes nothing."""
    from lmforge.data import inspection

    is_recipe = target.suffix.lower() in (".yaml", ".yml")
    recipe = _load(target, set_, None) if is_recipe else None
    prepared, _ = inspection.inspect_data(target, recipe)
    console.print(inspection.files_table(prepared))
    tokenizer = _inspection_tokenizer(model or (recipe.model.ref if recipe else None))
    console.print(inspection.splits_table(prepared, tokenizer))
    if tokenizer is None:
        console.print("[dim]token lengths: pass --model REF (a recipe uses its own model)[/dim]")
    if show_labels and tokenizer is not None:
        from lmforge.train.tokenize import tokenize_chat

        on_inputs = bool(recipe and recipe.sft.train_on_inputs)

        def labels_for(tok, messages):
            return tokenize_chat(tok, messages, max_length=1 << 30, train_on_inputs=on_inputs).labels

        split = "train" if "train" in prepared.splits else next(iter(prepared.splits), "")
        examples = prepared.splits.get(split, [])
        if recipe and recipe.sft.template != "chat":  # show the prompt format sft will train with
            from lmforge.train.templates import install_template

            chats = [r for r in examples if r.get("kind") == "chat"]
            install_template(tokenizer, recipe.sft.template, chats, recipe.model.ref)
        for panel in inspection.labelled_examples(examples, tokenizer, labels_for, show_labels):
            console.print(panel)


def _inspection_tokenizer(ref: str | None):
    if ref is None:
        return None
    from lmforge.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(ref))


def _quiet_libraries() -> None:
    """Keep third-party chatter (weight-loading bars, deprecation notices) out of the user's terminal."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def _stage_command(name: str) -> Any:
    def command(
        recipe: Annotated[Path, typer.Argument(help="Path to a YAML recipe.")],
        set_: SetOption = None,
        run_dir: RunDirOption = None,
    ) -> None:
        _run(recipe, set_, run_dir, only=[name])

    command.__doc__ = f"Run only the {name} stage of a recipe (the stages before it must have run)."
    return command


def _add_stage_commands() -> None:
    """``lmforge <stage> RECIPE`` for every stage of the stage table without a command of its own (data, synth
    and eval have theirs): the same as ``lmforge run RECIPE --only <stage>``."""
    from lmforge.stages import STAGES

    taken = {info.name or info.callback.__name__ for info in app.registered_commands if info.callback}
    taken |= {info.name for info in app.registered_groups}
    for row in STAGES:
        if row.name not in taken:
            app.command(row.name)(_stage_command(row.name))


_add_stage_commands()


def main() -> None:
    _quiet_libraries()
    app()


if __name__ == "__main__":
    main()
