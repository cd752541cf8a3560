"""The ``lmforge`` command line. Parses arguments, calls stage ``run()`` functions; errors end in one place
(:class:`lmforge.cli_common._Commands`). The commands that use a run's model are in :mod:`lmforge.cli_serving`.

Exit codes: 0 success, 1 a stage failed, 2 bad input (recipe, data, model reference), 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from lmforge.cli_common import (
    BudgetOption,
    RunDirOption,
    SetOption,
    _load,
    _run,
    _settings,
    app,
    console,
    with_budget,
)
from lmforge.stages import STAGE_ORDER

__all__ = ["app", "main"]


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
    budget: BudgetOption = None,
) -> None:
    """Run every stage of a recipe (finished stages with unchanged inputs are skipped)."""
    set_ = with_budget(set_, budget)
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
def demo(set_: SetOption = None, run_dir: RunDirOption = None, budget: BudgetOption = None) -> None:
    """Run the shipped demo recipe: SmolLM2 learns an invented social security code, measured before and after
    (within the recipe's budget of 15 minutes; --budget 0 for none)."""
    from lmforge.config import shipped_recipe

    _run(shipped_recipe("demo"), with_budget(set_, budget), run_dir)


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
def synth(
    recipe: Annotated[Path, typer.Argument(help="Path to a YAML recipe with a synth section.")],
    set_: SetOption = None,
    run_dir: RunDirOption = None,
) -> None:
    """Run the data and synth stages of a recipe: a teacher writes training records (cached, resumable)."""
    _run(recipe, set_, run_dir, only=list(STAGE_ORDER[: STAGE_ORDER.index("synth") + 1]))


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
    from lmforge.perf.bench import BenchSettings, run_bench

    settings = _settings(
        BenchSettings,
        recipe=str(recipe) if recipe else None,
        overrides=list(set_ or []),
        model=model,
        steps=steps,
        warmup=warmup,
        batch_size=batch_size,
        peak_tflops=peak_tflops,
        workload=workload,
        systems=[s.strip() for s in systems.split(",") if s.strip()],
    )
    _load(recipe, set_, None) if recipe else None  # a bad recipe fails here, before any worker starts
    results = run_bench(settings, seq_len or [1024], out, console)
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
    model_config: Annotated[
        str | None,
        typer.Option(
            help="Plan with another model's shape: a config.json (or its folder), or a published one "
            "(qwen2.5-0.5b ... llama-3.1-8b: lmforge/perf/sizes.py). Tokens are counted with the recipe's tokenizer."
        ),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option(help="Plan for one GPU of this kind (H100, A100, L4, RTX 4090 ...) instead of this machine."),
    ] = None,
) -> None:
    """Estimate peak memory and time of a recipe's training stages on this machine, before running them."""
    from lmforge.perf.arms import plan_arms, render_arms
    from lmforge.perf.plan import Hardware, plan_recipe, render
    from lmforge.perf.sizes import model_config as read_model_config

    loaded = _load(recipe, set_, run_dir)
    try:
        target = {
            "hardware": Hardware.gpu(gpu) if gpu else None,
            "model_config": read_model_config(model_config) if model_config else None,
        }
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    hardware, plans = plan_recipe(loaded, **target)
    if not plans:
        console.print(f"{recipe}: no training stage to plan (stages: {', '.join(loaded.stages)})")
        return
    console.print(render(hardware, plans))
    if arm:
        arms = plan_arms(lambda extra: _load(recipe, [*(set_ or []), *extra], run_dir), ["", *arm], **target)
        console.print(render_arms(arms))


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
        from lmforge.engine.tokenize import tokenize_chat

        on_inputs = bool(recipe and recipe.sft.train_on_inputs)

        def labels_for(tok, messages):
            return tokenize_chat(tok, messages, max_length=1 << 30, train_on_inputs=on_inputs).labels

        split = "train" if "train" in prepared.splits else next(iter(prepared.splits), "")
        examples = prepared.splits.get(split, [])
        if recipe and recipe.sft.template != "chat":  # show the prompt format sft will train with
            from lmforge.engine.templates import install_template

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


def _add_serving_commands() -> None:
    """chat, serve, studio, export and ask (:mod:`lmforge.cli_serving`), listed after the pipeline's commands."""
    import lmforge.cli_serving  # noqa: F401 (its decorators register the commands on the app)


def _add_stage_commands() -> None:
    """``lmforge <stage> RECIPE`` for every stage of the stage table without a command of its own (data, synth
    and eval have theirs): the same as ``lmforge run RECIPE --only <stage>``."""
    from lmforge.stages import STAGES

    taken = {info.name or info.callback.__name__ for info in app.registered_commands if info.callback}
    taken |= {info.name for info in app.registered_groups}
    for row in STAGES:
        if row.name not in taken:
            app.command(row.name)(_stage_command(row.name))


_add_serving_commands()
_add_stage_commands()


def main() -> None:
    _quiet_libraries()
    app()


if __name__ == "__main__":
    main()
